//! The wgpu backend's side of `backend::Backend`: each op to its kernel.

use super::{axis, conv, kernels, optim, pool};
use crate::backend::Backend;
use crate::backprop::record;
use crate::error::Result;
use crate::ops::{compare::CmpOp, conv::Geom as ConvGeom, nn::Act, pool::Geom as PoolGeom, reduce, BinaryOp, UnaryOp};
use crate::optim::{ParamState, Rule};
use crate::tensor::Tensor;

/// The process's wgpu device (`super::context`), as a backend.
pub(crate) struct Wgpu;

impl Backend for Wgpu {
    fn describe(&self) -> Result<String> {
        super::context().map(|g| g.description())
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        super::upload(t)
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        super::download(t)
    }
    fn assign(&self, dst: &Tensor, src: &Tensor) -> Result<()> {
        super::assign(dst, src)
    }
    fn contiguous(&self, x: &Tensor) -> Result<Tensor> {
        kernels::contiguous(x)
    }

    fn unary(&self, op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        kernels::unary(op, x)
    }
    fn binary(&self, op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        kernels::binary(op, a, b)
    }
    fn compare(&self, op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        kernels::compare(op, a, b)
    }
    fn where_(&self, cond: &Tensor, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
        kernels::where_(cond, a, b, shape)
    }
    fn reduce(&self, x: &Tensor, axes: &[usize], kind: reduce::Kind) -> Result<Tensor> {
        kernels::reduce(x, axes, kind)
    }
    fn softmax(&self, x: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
        kernels::softmax(x, axis, log)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        kernels::matmul(a, b)
    }
    fn dense(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act) -> Result<Tensor> {
        kernels::matmul_bias_act(x, &w.transpose(0, 1)?, b, act)
    }
    fn conv(&self, g: &ConvGeom, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor> {
        conv::forward(g, x, w, b, act, shape)
    }
    fn conv_transpose(&self, g: &ConvGeom, y: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor> {
        conv::data(g, y, w, b, act, shape)
    }
    fn conv_filter_grad(&self, g: &ConvGeom, x: &Tensor, gy: &Tensor, shape: &[usize]) -> Result<Tensor> {
        conv::filter(g, x, gy, shape)
    }
    fn maxpool(&self, g: &PoolGeom, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let (out, op) = pool::maxpool(g, x, shape)?;
        Ok(record(out, op, &[x]))
    }

    fn index_select(&self, x: &Tensor, axis: usize, idx: &[usize]) -> Result<Tensor> {
        axis::index_select(x, axis, idx)
    }
    fn index_add(&self, x: &Tensor, shape: &[usize], axis: usize, idx: &[usize]) -> Result<Tensor> {
        axis::index_add(x, shape, axis, idx)
    }
    fn concat(&self, parts: &[Tensor], axis: usize, shape: &[usize]) -> Result<Tensor> {
        axis::concat(parts, axis, shape)
    }

    fn optim_supports(&self, chain: &[Rule]) -> bool {
        optim::supported(chain)
    }
    fn optim_update(&self, chain: &[Rule], x: &Tensor, dx: &Tensor, st: &mut ParamState) -> Result<()> {
        optim::update(chain, x, dx, st)
    }
}
