//! Device dispatch: which backend runs an op. Each op's CPU kernel sits in the op's own
//! file; an op whose inputs live on another device hands itself to that device's
//! `Backend`, found here from its inputs (`of` for one, `common` for several). This file,
//! its `Storage` variant and its own module are all a backend adds to the core, as in
//! candle's `storage.rs`: a second accelerator is a new module implementing `Backend` and
//! one arm in `get`.

use crate::device::{common_device, Device, GPU_COMPILED};
use crate::error::Result;
use crate::ops::{compare::CmpOp, conv, nn::Act, pool, reduce, BinaryOp, UnaryOp};
use crate::optim::{ParamState, Rule};
use crate::tensor::Tensor;

/// What an accelerator runs on its own buffers. The op has checked shapes, dtypes and
/// devices before it dispatches; results are fresh contiguous tensors on the backend's
/// device, and unrecorded unless a method says otherwise (the op records them).
pub(crate) trait Backend: Sync {
    /// The adapter in use, opening it; an error saying why there is none.
    fn describe(&self) -> Result<String>;
    /// A copy of the CPU tensor `t` on this backend.
    fn upload(&self, t: &Tensor) -> Result<Tensor>;
    /// A CPU copy of `t`, which lives here.
    fn download(&self, t: &Tensor) -> Result<Tensor>;
    /// `dst[...] = src` in place (same shape up to broadcasting), either of them here.
    fn assign(&self, dst: &Tensor, src: &Tensor) -> Result<()>;
    /// A contiguous copy.
    fn contiguous(&self, x: &Tensor) -> Result<Tensor>;

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor>;
    /// `op` over the broadcast of `a` and `b`.
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `op`'s 0/1 mask over the broadcast of `a` and `b`.
    fn compare(&self, op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `a` where `cond` is nonzero, else `b`, all broadcast to `shape`.
    fn where_(&self, cond: &Tensor, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// Reduce `axes` (sorted, distinct), dropping them from the shape.
    fn reduce(&self, x: &Tensor, axes: &[usize], kind: reduce::Kind) -> Result<Tensor>;
    /// softmax, or logsoftmax when `log`, along `axis`.
    fn softmax(&self, x: &Tensor, axis: usize, log: bool) -> Result<Tensor>;

    /// The batched product `[B.., m, k] @ [B.., k, n]` of same-batch operands.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `act(x @ w^T + b)` for x `(n, in)`, w `(out, in)`, b `(out,)`: a fused Dense.
    fn dense(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act) -> Result<Tensor>;
    /// `act(conv(x, w) + b)` of geometry `g`, of shape `shape`.
    fn conv(&self, g: &conv::Geom, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor>;
    /// `act(conv_transpose(y, w) + b)`: the adjoint of the convolution of geometry `g`.
    fn conv_transpose(&self, g: &conv::Geom, y: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor>;
    /// The weight gradient of the convolution of geometry `g`, of shape `shape`.
    fn conv_filter_grad(&self, g: &conv::Geom, x: &Tensor, gy: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// Max pooling of geometry `g`, recorded: its backward keeps the arg-max here.
    fn maxpool(&self, g: &pool::Geom, x: &Tensor, shape: &[usize]) -> Result<Tensor>;

    /// Positions `idx` along `axis` (repeats allowed).
    fn index_select(&self, x: &Tensor, axis: usize, idx: &[usize]) -> Result<Tensor>;
    /// Zeros of `shape` with the slices of `x` added at positions `idx` along `axis`.
    fn index_add(&self, x: &Tensor, shape: &[usize], axis: usize, idx: &[usize]) -> Result<Tensor>;
    /// `parts` joined along `axis` into `shape`.
    fn concat(&self, parts: &[Tensor], axis: usize, shape: &[usize]) -> Result<Tensor>;

    /// Whether `optim_update` runs every rule of `chain`.
    fn optim_supports(&self, chain: &[Rule]) -> bool;
    /// `x -= chain(dx)`, advancing `st`; all of them here, shapes checked.
    fn optim_update(&self, chain: &[Rule], x: &Tensor, dx: &Tensor, st: &mut ParamState) -> Result<()>;
}

/// Whether this build has any backend besides the CPU; without one, dispatch costs nothing
/// (no look at a tensor's storage).
const ACCELERATED: bool = GPU_COMPILED;

/// The backend of `device`: None for the CPU, and for a device this build lacks.
pub(crate) fn get(device: Device) -> Option<&'static dyn Backend> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "gpu")]
        Device::Gpu => Some(&crate::gpu::Wgpu),
        #[cfg(not(feature = "gpu"))]
        Device::Gpu => None,
    }
}

/// The backend `x` lives on; None on the CPU.
pub(crate) fn of(x: &Tensor) -> Option<&'static dyn Backend> {
    if !ACCELERATED {
        return None;
    }
    get(x.device())
}

/// The backend an op on `inputs` runs on (`device::common_device`); None on the CPU.
pub(crate) fn common(op: &'static str, inputs: &[&Tensor]) -> Result<Option<&'static dyn Backend>> {
    if !ACCELERATED {
        return Ok(None);
    }
    Ok(get(common_device(op, inputs)?))
}
