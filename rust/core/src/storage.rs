//! Buffer ownership. A buffer is shared between a tensor and its views through
//! `Arc<RwLock<Storage>>`: optimisers write parameters in place while other threads may
//! read them, so access goes through the lock (as candle does), never through aliasing.

use crate::dtype::{DType, Float};

#[derive(Debug, Clone)]
pub enum Storage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// float32 on the GPU. CPU kernels never see it: `Tensor`'s data accessors refuse it.
    #[cfg(feature = "gpu")]
    Gpu(crate::gpu::GpuBuf),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            #[cfg(feature = "gpu")]
            Storage::Gpu(_) => DType::F32,
        }
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
            // Callers dispatch on the tensor's dtype first, so a mismatch is a bug in the core.
            Storage::F64(_) => unreachable!("float64 storage read as float32"),
            #[cfg(feature = "gpu")]
            Storage::Gpu(_) => unreachable!("GPU storage read on the CPU"),
        }
    }
    fn slice_mut(s: &mut Storage) -> &mut [f32] {
        match s {
            Storage::F32(v) => v,
            Storage::F64(_) => unreachable!("float64 storage written as float32"),
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
            _ => unreachable!("float32 or GPU storage read as float64"),
        }
    }
    fn slice_mut(s: &mut Storage) -> &mut [f64] {
        match s {
            Storage::F64(v) => v,
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
