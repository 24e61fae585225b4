//! The graph lives only as long as the tensors that reach it: repeated differentiation
//! does not leak, and after a context closes nothing records. Live heap bytes are counted
//! by a wrapping allocator; this file holds a single test so no other test allocates
//! concurrently in this process.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use common::*;
use fluxrs_core::{backprop, grad, pop_watch, push_watch, Tensor};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

fn step(x: &Tensor, w: &Tensor, second_order: bool) -> f64 {
    if second_order {
        push_watch(std::slice::from_ref(x));
    }
    push_watch(&[x.clone(), w.clone()]);
    let h = x.matmul(w).unwrap().tanh().unwrap();
    let y = h.logsoftmax(1).unwrap().mul(&h).unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&y, &[x.clone(), w.clone()], None).unwrap();
    let mut s = g[1].as_ref().unwrap().sum_all().unwrap().item().unwrap();
    if second_order {
        let gx = g[0].clone().unwrap().sum_all().unwrap();
        pop_watch();
        let gg = grad(&gx, std::slice::from_ref(x), None).unwrap();
        s += gg[0].as_ref().unwrap().sum_all().unwrap().item().unwrap();
    }
    s
}

#[test]
fn graph_is_freed_and_nothing_records_afterwards() {
    let mut rng = Rng::new(7);
    let x = rand(&mut rng, &[8, 16]);
    let w = rand(&mut rng, &[16, 4]);

    // Warm up lazily allocated state (thread-locals, rayon, gemm caches).
    let first = step(&x, &w, true);
    for _ in 0..10 {
        step(&x, &w, false);
        step(&x, &w, true);
    }
    let before = LIVE.load(Ordering::SeqCst);
    let mut acc = 0.0;
    for _ in 0..1000 {
        acc += step(&x, &w, false);
        acc += step(&x, &w, true);
    }
    let after = LIVE.load(Ordering::SeqCst);
    assert!(acc.is_finite());
    // Each iteration allocates tens of kilobytes of graph; a leak of even one node per
    // iteration would show as hundreds of kilobytes here.
    assert!(after - before < 16 * 1024, "live heap grew by {} bytes over 1000 iterations", after - before);
    assert_eq!(step(&x, &w, true), first, "deterministic");

    // Outside any context: no watch left open, no op records, leaves stay plain.
    assert_eq!(backprop::watch_depth(), 0);
    assert!(backprop::is_recording());
    assert!(!x.has_node() && !w.has_node());
    let y = x.matmul(&w).unwrap().tanh().unwrap();
    assert!(!y.has_node());
    assert!(!x.exp().unwrap().has_node());

    // A tensor derived inside a context keeps its node (and so its graph) only while it
    // lives; the graph it holds is freed once it is dropped.
    let base = LIVE.load(Ordering::SeqCst);
    push_watch(std::slice::from_ref(&x));
    let big = x.exp().unwrap().matmul(&w).unwrap().sum_all().unwrap();
    pop_watch();
    assert!(big.has_node());
    drop(big);
    assert!(LIVE.load(Ordering::SeqCst) - base < 1024);
}
