//! softmax and logsoftmax along one axis, max-shifted so they never overflow.

use ndarray::{Axis, Zip};

use crate::backprop::{record, should_record, BackwardOp};
use crate::error::Result;
use crate::layout::normalize_axis;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::{fold8, simd};
use crate::with_dtype;

/// One lane (`i` in, `o` out), max-shifted.
#[inline(always)]
fn lane<T: Elem>(o: &mut [T], i: &[T], log: bool) {
    let m = fold8(i, T::NEG_INFINITY, |m, a| if a > m { a } else { m });
    let m = if m.is_finite() { m } else { T::ZERO };
    // exp in a loop of its own (vectorised), then the sum.
    for (oo, &a) in o.iter_mut().zip(i) {
        *oo = (a - m).fast_exp();
    }
    let s = fold8(o, T::ZERO, |s, e| s + e);
    if log {
        let ls = s.ln() + m;
        for (oo, &a) in o.iter_mut().zip(i) {
            *oo = a - ls;
        }
    } else {
        for oo in o.iter_mut() {
            *oo /= s;
        }
    }
}

fn kernel<T: Elem>(x: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
    let n = x.shape()[axis];
    if axis + 1 == x.ndim() && n > 0 {
        // The usual case (classes on the last axis): contiguous rows, SIMD-dispatched loops.
        // The strided lanes below cost ~12 ns an element against ~1 here.
        let mut out = vec![T::ZERO; x.numel()];
        x.with_slice::<T, _>(|v| {
            simd(#[inline(always)] || {
                for (o, i) in out.chunks_exact_mut(n).zip(v.chunks_exact(n)) {
                    lane(o, i, log);
                }
            })
        })?;
        return Tensor::from_vec(out, x.shape());
    }
    x.with_view::<T, _>(|v| {
        let mut out = ndarray::ArrayD::<T>::zeros(v.raw_dim());
        Zip::from(out.lanes_mut(Axis(axis))).and(v.lanes(Axis(axis))).for_each(|mut o, i| {
            let m = i.iter().fold(T::NEG_INFINITY, |m, &a| if a > m { a } else { m });
            let m = if m.is_finite() { m } else { T::ZERO };
            // exp in a loop of its own (vectorised), then the sum.
            for (oo, &a) in o.iter_mut().zip(i.iter()) {
                *oo = (a - m).fast_exp();
            }
            let s = o.iter().fold(T::ZERO, |s, &e| s + e);
            if log {
                let ls = s.ln() + m;
                for (oo, &a) in o.iter_mut().zip(i.iter()) {
                    *oo = a - ls;
                }
            } else {
                for oo in o.iter_mut() {
                    *oo /= s;
                }
            }
        });
        Tensor::from_array(out)
    })
}

/// First-order backward in one pass over each lane (the composed form below is ~5 ops).
fn backward_kernel<T: Elem>(out: &Tensor, g: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
    let n = out.shape()[axis];
    if axis + 1 == out.ndim() && n > 0 {
        let mut gx = vec![T::ZERO; out.numel()];
        out.with_slice::<T, _>(|y| {
            g.with_slice::<T, _>(|g| {
                simd(#[inline(always)] || {
                    for ((d, y), g) in gx.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(g.chunks_exact(n)) {
                        if log {
                            let s = fold8(g, T::ZERO, |s, v| s + v);
                            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                                *d = g - y.fast_exp() * s;
                            }
                        } else {
                            let s = g.iter().zip(y).fold(T::ZERO, |s, (&g, &y)| s + g * y);
                            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                                *d = y * (g - s);
                            }
                        }
                    }
                })
            })
        })??;
        return Tensor::from_vec(gx, out.shape());
    }
    out.with_view::<T, _>(|y| {
        g.with_view::<T, _>(|g| {
            let mut gx = ndarray::ArrayD::<T>::zeros(y.raw_dim());
            Zip::from(gx.lanes_mut(Axis(axis))).and(y.lanes(Axis(axis))).and(g.lanes(Axis(axis))).for_each(|mut d, y, g| {
                if log {
                    // g - softmax * sum(g)
                    let s = g.iter().fold(T::ZERO, |s, &v| s + v);
                    Zip::from(&mut d).and(&y).and(&g).for_each(|d, &y, &g| *d = g - y.fast_exp() * s);
                } else {
                    // y * (g - sum(g * y))
                    let s = g.iter().zip(y.iter()).fold(T::ZERO, |s, (&g, &y)| s + g * y);
                    Zip::from(&mut d).and(&y).and(&g).for_each(|d, &y, &g| *d = y * (g - s));
                }
            });
            Tensor::from_array(gx)
        })
    })?
}

struct Softmax {
    axis: usize,
    log: bool,
}

impl BackwardOp for Softmax {
    fn name(&self) -> &'static str {
        if self.log { "logsoftmax" } else { "softmax" }
    }
    fn backward(&self, _i: &[Tensor], out: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if out.shape() == g.shape() && !should_record(&[out, g]) && !out.is_gpu() && !g.is_gpu() {
            let gx = with_dtype!(out.dtype(), T => backward_kernel::<T>(out, g, self.axis, self.log)?);
            return Ok(vec![Some(gx)]);
        }
        let ax = [self.axis as isize];
        let gx = if self.log {
            // d logsoftmax: g - softmax * sum(g)
            g.sub(&out.exp()?.mul(&g.sum_axes(Some(&ax), true)?)?)?
        } else {
            // d softmax: y * (g - sum(g * y))
            out.mul(&g.sub(&g.mul(out)?.sum_axes(Some(&ax), true)?)?)?
        };
        Ok(vec![Some(gx)])
    }
}

impl Tensor {
    fn softmax_kernel(&self, ax: usize, log: bool) -> Result<Tensor> {
        #[cfg(feature = "gpu")]
        if self.is_gpu() {
            return crate::gpu::softmax(self, ax, log);
        }
        with_dtype!(self.dtype(), T => kernel::<T>(self, ax, log))
    }
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let ax = normalize_axis("softmax", axis, self.ndim())?;
        let out = self.softmax_kernel(ax, false)?;
        Ok(record(out, Softmax { axis: ax, log: false }, &[self]))
    }
    pub fn logsoftmax(&self, axis: isize) -> Result<Tensor> {
        let ax = normalize_axis("logsoftmax", axis, self.ndim())?;
        let out = self.softmax_kernel(ax, true)?;
        Ok(record(out, Softmax { axis: ax, log: true }, &[self]))
    }
}
