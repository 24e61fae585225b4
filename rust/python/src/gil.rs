//! Releasing the GIL for a kernel, and taking it back without sleeping when threads train
//! side by side.
//!
//! A thread that ends a kernel while another thread runs Python blocks in CPython's GIL wait
//! and sleeps until that thread releases the GIL at its next kernel. On a VM the wake-up (an
//! interrupt to an idle virtual CPU) took tens of microseconds, paid at every kernel of every
//! step: two threads training two small models ran slower together than one alone (0.75x on
//! seed page 003's loop). So a thread leaving a kernel first spins, without the GIL, while
//! another thread that calls kernels is running Python, and takes the GIL once that thread
//! has entered its next kernel (the GIL is then free: taking it does not sleep) or after
//! `SPIN`, whichever is first. A thread alone, or beside threads that have not called a
//! kernel for `ACTIVE` (waiting on I/O, joining), never spins.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// The longest a thread spins for the GIL before waiting for it as CPython does: a little
/// longer than the Python between two kernels of a small model's step (~60 us measured).
const SPIN: Duration = Duration::from_micros(250);

/// A thread that left a kernel less than this long ago and has not entered another one is
/// taken to be running Python between kernels (worth spinning for).
const ACTIVE_US: u64 = 1000;

/// One slot per thread that calls kernels (at most `SLOTS`; more threads than that run
/// without spinning): 0 when free, else the time it last left a kernel, in microseconds since
/// `epoch()`, plus one, shifted left by one, with bit 0 set while it is inside a kernel.
const SLOTS: usize = 64;
static STATE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Slots in use lie below this index.
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

fn word(left_kernel_us: u64, inside: bool) -> u64 {
    ((left_kernel_us + 1) << 1) | inside as u64
}

/// This thread's slot, released when the thread ends.
struct Slot(Option<usize>);

impl Slot {
    fn claim() -> Slot {
        let w = word(now_us(), false);
        for (i, s) in STATE.iter().enumerate() {
            if s.compare_exchange(0, w, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                HIGH.fetch_max(i + 1, Ordering::AcqRel);
                return Slot(Some(i));
            }
        }
        Slot(None)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            STATE[i].store(0, Ordering::Release);
        }
    }
}

thread_local! {
    static SLOT: Slot = Slot::claim();
}

/// Whether a thread other than slot `me` is running Python between kernels.
fn other_in_python(me: usize, now: u64) -> bool {
    (0..HIGH.load(Ordering::Acquire)).any(|j| {
        let w = STATE[j].load(Ordering::Acquire);
        j != me && w != 0 && w & 1 == 0 && now.saturating_sub((w >> 1) - 1) < ACTIVE_US
    })
}

/// `f()` with the GIL released (see the module's documentation for how it is taken back).
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let me = SLOT.try_with(|s| s.0).ok().flatten();
    py.detach(move || {
        let Some(me) = me else {
            return f();
        };
        STATE[me].fetch_or(1, Ordering::AcqRel);
        let out = f();
        let start = Instant::now();
        let mut spins = 0u32;
        while other_in_python(me, now_us()) && start.elapsed() < SPIN {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now(); // a core shared with a runnable thread is not held
            }
        }
        STATE[me].store(word(now_us(), false), Ordering::Release);
        out
    })
}
