//! fluxrs-core: tensors, reverse-mode autodiff, kernels and optimiser rules, in pure Rust.
//!
//! Nothing here knows about Python; the `fluxrs-python` crate binds it. See `backprop`
//! for how differentiation is recorded per thread.

mod backend;
pub mod backprop;
pub mod device;
pub mod dtype;
pub mod error;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod layout;
pub mod ops;
pub mod optim;
pub mod storage;
pub mod tensor;
pub mod trace;
pub mod vmath;

pub use backprop::{grad, grad_with, no_grad, pop_watch, push_watch, BackwardOp, NoGradGuard, WatchGuard};
pub use device::Device;
pub use dtype::{DType, Float};
pub use error::{Error, Result};
pub use storage::{Elem, Foreign, Storage};
pub use tensor::{Tensor, TensorId};
