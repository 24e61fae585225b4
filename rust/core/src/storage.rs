//! Buffer ownership. A buffer is shared between a tensor and its views through
//! `Arc<RwLock<Storage>>`: optimisers write parameters in place while other threads may
//! read them, so access goes through the lock (as candle does), never through aliasing.
//!
//! Most buffers are the tensor's own `Vec`. A `Foreign` buffer is memory another library
//! lends (a DLPack import of a numpy array): kernels read and write it in place like a
//! `Vec`, but nothing here grows, moves or frees it; dropping it hands it back.

use std::ptr::NonNull;

use crate::dtype::{DType, Float};
use crate::error::{Error, Result};

#[derive(Debug)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// float32 or float64 memory owned elsewhere (see `Foreign`).
    Foreign(Foreign),
    /// float32 on the GPU. CPU kernels never see it: `Tensor`'s data accessors refuse it.
    #[cfg(feature = "gpu")]
    Gpu(crate::gpu::GpuBuf),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::Foreign(f) => f.dtype,
            #[cfg(feature = "gpu")]
            Storage::Gpu(_) => DType::F32,
        }
    }
    /// Whether the memory is lent by another owner, who can see every write to it.
    pub fn is_foreign(&self) -> bool {
        matches!(self, Storage::Foreign(_))
    }
    pub fn is_gpu(&self) -> bool {
        #[cfg(feature = "gpu")]
        if let Storage::Gpu(_) = self {
            return true;
        }
        false
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::Foreign(f) => f.len,
            #[cfg(feature = "gpu")]
            Storage::Gpu(b) => b.len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn zeros(dtype: DType, n: usize) -> Storage {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F64 => Storage::F64(vec![0.0; n]),
        }
    }
}

impl Clone for Storage {
    /// A copy that does not alias: a foreign buffer's copy is this crate's own `Vec`.
    fn clone(&self) -> Storage {
        match self {
            Storage::F32(v) => Storage::F32(v.clone()),
            Storage::F64(v) => Storage::F64(v.clone()),
            Storage::Foreign(f) => match f.dtype {
                DType::F32 => Storage::F32(f.slice::<f32>().to_vec()),
                DType::F64 => Storage::F64(f.slice::<f64>().to_vec()),
            },
            #[cfg(feature = "gpu")]
            Storage::Gpu(b) => Storage::Gpu(b.clone()),
        }
    }
}

/// `len` elements of `dtype` at `ptr`, in memory that another library owns and lends for as
/// long as `owner` lives: dropping `owner` (last, after the tensors on this buffer are gone)
/// gives the memory back. The owner is opaque here; the Python bindings' owner holds a DLPack
/// capsule's tensor and calls its deleter.
pub struct Foreign {
    ptr: NonNull<u8>,
    len: usize,
    dtype: DType,
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: the buffer is plain numbers that `new`'s caller lent for the owner's lifetime, and
// the `RwLock` around every `Storage` orders this crate's reads and writes of it, as for a
// `Vec`. The owner is `Send + Sync` itself.
unsafe impl Send for Foreign {}
unsafe impl Sync for Foreign {}

impl Foreign {
    /// Lend `len` elements of `dtype` at `ptr` to a tensor, until `owner` is dropped.
    ///
    /// Refuses a null pointer (unless `len` is 0) and one not aligned to the element size:
    /// slices of misaligned floats are undefined behaviour, so such memory must be copied.
    ///
    /// # Safety
    /// Until `owner` is dropped, `ptr` must be valid for reads and writes of `len` elements
    /// of `dtype`, and no one may free or move that memory. Others may read and write it
    /// meanwhile, as numpy's views of a buffer do; they see this crate's writes.
    pub unsafe fn new(ptr: *mut u8, len: usize, dtype: DType, owner: Box<dyn Send + Sync>) -> Result<Foreign> {
        let bytes = len.checked_mul(dtype.size()).filter(|&b| b <= isize::MAX as usize);
        if bytes.is_none() {
            return Err(Error::Value { op: "foreign memory", msg: format!("{len} elements of {dtype} cannot be addressed") });
        }
        let ptr = match NonNull::new(ptr) {
            Some(p) => p,
            // No element to read: any aligned pointer will do for an empty slice.
            None if len == 0 => match dtype {
                DType::F32 => NonNull::<f32>::dangling().cast(),
                DType::F64 => NonNull::<f64>::dangling().cast(),
            },
            None => return Err(Error::Value { op: "foreign memory", msg: format!("a null pointer for {len} elements") }),
        };
        if !(ptr.as_ptr() as usize).is_multiple_of(dtype.size()) {
            return Err(Error::Value {
                op: "foreign memory",
                msg: format!("{dtype} data at address {:#x} is not aligned to {} bytes", ptr.as_ptr() as usize, dtype.size()),
            });
        }
        Ok(Foreign { ptr, len, dtype, _owner: owner })
    }

    fn slice<T: Elem>(&self) -> &[T] {
        debug_assert_eq!(T::DTYPE, self.dtype);
        // SAFETY: `new`'s caller lent `len` elements of this dtype, aligned (checked there),
        // valid while `self` (holding the owner) lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<T>(), self.len) }
    }

    fn slice_mut<T: Elem>(&mut self) -> &mut [T] {
        debug_assert_eq!(T::DTYPE, self.dtype);
        // SAFETY: as in `slice`; `&mut self` comes from the storage's write lock, so no other
        // reference into the buffer is live in this crate.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<T>(), self.len) }
    }
}

impl std::fmt::Debug for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Foreign({} x {} at {:p})", self.len, self.dtype, self.ptr)
    }
}

/// A vector of `n` elements that `fill` writes before anything reads them, not zeroed
/// first: a kernel that overwrites its whole output (a GEMM) would otherwise pay a memset
/// of it for nothing.
///
/// SAFETY: `fill` must write all `n` elements behind the pointer it is given.
pub(crate) unsafe fn filled_by<T: Copy>(n: usize, fill: impl FnOnce(*mut T)) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    fill(v.as_mut_ptr());
    // SAFETY: the capacity is n and `fill` initialised every element (the caller's promise).
    unsafe { v.set_len(n) };
    v
}

/// An element type that can live in a `Storage`. Kernels are generic over this.
pub trait Elem: Float + crate::vmath::FastMath {
    fn slice(s: &Storage) -> &[Self];
    fn slice_mut(s: &mut Storage) -> &mut [Self];
    fn wrap(v: Vec<Self>) -> Storage;
}

impl Elem for f32 {
    fn slice(s: &Storage) -> &[f32] {
        match s {
            Storage::F32(v) => v,
            Storage::Foreign(f) if f.dtype == DType::F32 => f.slice(),
            // Callers dispatch on the tensor's dtype first, so a mismatch is a bug in the core.
            Storage::F64(_) | Storage::Foreign(_) => unreachable!("float64 storage read as float32"),
            #[cfg(feature = "gpu")]
            Storage::Gpu(_) => unreachable!("GPU storage read on the CPU"),
        }
    }
    fn slice_mut(s: &mut Storage) -> &mut [f32] {
        match s {
            Storage::F32(v) => v,
            Storage::Foreign(f) if f.dtype == DType::F32 => f.slice_mut(),
            Storage::F64(_) | Storage::Foreign(_) => unreachable!("float64 storage written as float32"),
            #[cfg(feature = "gpu")]
            Storage::Gpu(_) => unreachable!("GPU storage written on the CPU"),
        }
    }
    fn wrap(v: Vec<f32>) -> Storage {
        Storage::F32(v)
    }
}

impl Elem for f64 {
    fn slice(s: &Storage) -> &[f64] {
        match s {
            Storage::F64(v) => v,
            Storage::Foreign(f) if f.dtype == DType::F64 => f.slice(),
            _ => unreachable!("float32 or GPU storage read as float64"),
        }
    }
    fn slice_mut(s: &mut Storage) -> &mut [f64] {
        match s {
            Storage::F64(v) => v,
            Storage::Foreign(f) if f.dtype == DType::F64 => f.slice_mut(),
            _ => unreachable!("float32 or GPU storage written as float64"),
        }
    }
    fn wrap(v: Vec<f64>) -> Storage {
        Storage::F64(v)
    }
}

/// Run `$body` with `$T` bound to the Rust type of `$dtype`.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(unused_imports)]
                use $crate::dtype::Float as _;
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                #[allow(unused_imports)]
                use $crate::dtype::Float as _;
                type $T = f64;
                $body
            }
        }
    };
}
