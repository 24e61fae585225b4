//! Reductions over axes: sum, mean, max, min, logsumexp, and `sum_to` (the adjoint of
//! broadcasting, used by every broadcasting op's backward rule).

use ndarray::{ArrayD, ArrayViewD, Axis};

use crate::backend;
use crate::backprop::{no_grad, record, replay, BackwardOp};
use crate::error::{Error, Result};
use crate::layout::normalize_axes;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

/// What a reduction computes (its GPU kernel code is the discriminant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sum,
    Max,
    Min,
}

fn reduce_view<T: Elem>(v: ArrayViewD<T>, axes: &[usize], kind: Kind) -> ArrayD<T> {
    let mut cur: ArrayD<T> = match axes.last() {
        None => return v.to_owned(),
        Some(&a) => reduce_one(v, a, kind),
    };
    for &a in axes.iter().rev().skip(1) {
        cur = reduce_one(cur.view(), a, kind);
    }
    cur
}

fn reduce_one<T: Elem>(v: ArrayViewD<T>, axis: usize, kind: Kind) -> ArrayD<T> {
    match kind {
        Kind::Sum => v.sum_axis(Axis(axis)),
        Kind::Max => v.map_axis(Axis(axis), |lane| {
            lane.iter().fold(T::NEG_INFINITY, |m, &x| {
                if x.is_nan() || m.is_nan() {
                    T::from_f64(f64::NAN)
                } else if x > m {
                    x
                } else {
                    m
                }
            })
        }),
        Kind::Min => v.map_axis(Axis(axis), |lane| {
            lane.iter().fold(T::INFINITY, |m, &x| {
                if x.is_nan() || m.is_nan() {
                    T::from_f64(f64::NAN)
                } else if x < m {
                    x
                } else {
                    m
                }
            })
        }),
    }
}

/// Shape after reducing `axes` (kept as size 1 when `keepdim`).
fn reduced_shape(shape: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    shape.iter().enumerate().filter_map(|(i, &d)| if axes.contains(&i) { keepdim.then_some(1) } else { Some(d) }).collect()
}

fn reduce_forward(x: &Tensor, axes: &[usize], keepdim: bool, kind: Kind, op: &'static str) -> Result<Tensor> {
    if kind != Kind::Sum && axes.iter().any(|&a| x.shape()[a] == 0) {
        return Err(Error::Value { op, msg: format!("cannot reduce an empty dimension of shape {:?}", x.shape()) });
    }
    if let Some(b) = backend::of(x) {
        return b.reduce(x, axes, kind)?.reshape_raw(&reduced_shape(x.shape(), axes, keepdim));
    }
    let out = with_dtype!(x.dtype(), T => x.with_view::<T, _>(|v| Tensor::from_array(reduce_view(v, axes, kind)))?);
    out.reshape_raw(&reduced_shape(x.shape(), axes, keepdim))
}

fn isize_axes(axes: &[usize]) -> Vec<isize> {
    axes.iter().map(|&a| a as isize).collect()
}

struct Sum {
    axes: Vec<usize>,
}

impl BackwardOp for Sum {
    replay!(|op, i, out| i[0].sum_axes(Some(&isize_axes(&op.axes)), out.ndim() == i[0].ndim()));
    fn name(&self) -> &'static str {
        "sum"
    }
    fn backward(&self, inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let kept = g.reshape(&reduced_shape(x.shape(), &self.axes, true))?;
        Ok(vec![Some(kept.broadcast_to(x.shape())?)])
    }
}

/// max/min: the gradient goes to the arg-extremum, split evenly between ties.
struct Extremum {
    axes: Vec<usize>,
}

impl BackwardOp for Extremum {
    fn name(&self) -> &'static str {
        "max/min"
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let kshape = reduced_shape(x.shape(), &self.axes, true);
        let mask = x.eq(&out.detach().reshape(&kshape)?)?;
        let count = mask.sum_axes(Some(&self.axes.iter().map(|&a| a as isize).collect::<Vec<_>>()), true)?;
        let gk = g.reshape(&kshape)?;
        Ok(vec![Some(mask.mul(&gk.div(&count)?)?)])
    }
}

struct LogSumExp {
    axes: Vec<usize>,
}

impl BackwardOp for LogSumExp {
    replay!(|op, i, out| i[0].logsumexp(Some(&isize_axes(&op.axes)), out.ndim() == i[0].ndim()));
    fn name(&self) -> &'static str {
        "logsumexp"
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let kshape = reduced_shape(x.shape(), &self.axes, true);
        let soft = x.sub(&out.reshape(&kshape)?)?.exp()?;
        Ok(vec![Some(soft.mul(&g.reshape(&kshape)?)?)])
    }
}

impl Tensor {
    /// Sum over `axes` (all when None).
    pub fn sum_axes(&self, axes: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("sum", axes, self.ndim())?;
        let out = reduce_forward(self, &axes, keepdim, Kind::Sum, "sum")?;
        Ok(record(out, Sum { axes }, &[self]))
    }
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum_axes(None, false)
    }
    pub fn mean_axes(&self, axes: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axes("mean", axes, self.ndim())?;
        let n: usize = ax.iter().map(|&a| self.shape()[a]).product();
        self.sum_axes(axes, keepdim)?.scale(1.0 / n as f64)
    }
    pub fn max_axes(&self, axes: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("max", axes, self.ndim())?;
        let out = reduce_forward(self, &axes, keepdim, Kind::Max, "max")?;
        Ok(record(out, Extremum { axes }, &[self]))
    }
    pub fn min_axes(&self, axes: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("min", axes, self.ndim())?;
        let out = reduce_forward(self, &axes, keepdim, Kind::Min, "min")?;
        Ok(record(out, Extremum { axes }, &[self]))
    }
    /// log(sum(exp(x))) over `axes`, shifted by the max so it never overflows.
    pub fn logsumexp(&self, axes: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axes("logsumexp", axes, self.ndim())?;
        let out = no_grad(|| -> Result<Tensor> {
            let m = self.max_axes(axes, true)?;
            // An all -Inf lane has max -Inf; shift by 0 there so the result is -Inf, not NaN.
            // (On the GPU: clamp -Inf to the lowest float, which gives the same -Inf result.)
            let m = if m.is_gpu() {
                m.clamp(f32::MIN as f64, f32::MAX as f64)?
            } else {
                with_dtype!(m.dtype(), T => crate::ops::unary::map::<T>(&m, |v| if v.is_finite() { v } else { T::ZERO }))?
            };
            let s = self.sub(&m)?.exp()?.sum_axes(axes, true)?.log()?.add(&m)?;
            s.reshape_raw(&reduced_shape(self.shape(), &ax, keepdim))
        })?;
        Ok(record(out, LogSumExp { axes: ax }, &[self]))
    }

    /// Sum a broadcast result back down to `shape` (the adjoint of `broadcast_to`).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self
            .ndim()
            .checked_sub(shape.len())
            .ok_or_else(|| Error::Shape { op: "sum_to", msg: format!("cannot sum shape {:?} down to {:?}", self.shape(), shape) })?;
        let mut axes: Vec<isize> = (0..extra as isize).collect();
        for (i, &d) in shape.iter().enumerate() {
            let have = self.shape()[extra + i];
            if d == 1 && have != 1 {
                axes.push((extra + i) as isize);
            } else if d != have {
                return Err(Error::Shape { op: "sum_to", msg: format!("cannot sum shape {:?} down to {:?}", self.shape(), shape) });
            }
        }
        self.sum_axes(Some(&axes), false)?.reshape(shape)
    }
}
