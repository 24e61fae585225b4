//! softmax and logsoftmax along one axis, max-shifted so they never overflow.

use crate::backend;
use crate::backprop::{no_grad, record, replay, should_record, BackwardOp};
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
    if m == T::INFINITY {
        return infinite_lane(o, i, log);
    }
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

/// A lane holding +Inf, as NNlib defines it (the limit of large logits): the +Inf entries
/// share the mass equally and the others get none, where `exp(x - max)` would give NaN.
#[cold]
fn infinite_lane<T: Elem>(o: &mut [T], i: &[T], log: bool) {
    if i.iter().any(|a| a.is_nan()) {
        // NaN wins, as in the finite case (exp(NaN - max) poisons the sum)
        o.fill(T::from_f64(f64::NAN));
        return;
    }
    let k = i.iter().filter(|&&a| a == T::INFINITY).count();
    let share = T::from_f64(1.0 / k as f64);
    for (oo, &a) in o.iter_mut().zip(i) {
        let top = a == T::INFINITY;
        *oo = match (log, top) {
            (false, true) => share,
            (false, false) => T::ZERO,
            (true, true) => share.ln(),
            (true, false) => T::NEG_INFINITY,
        };
    }
}

/// Runs `f` (a rows kernel for the last axis) along `axis`: another axis is swapped last and
/// back, two transposing copies, still cheaper than walking strided lanes (~12 ns an element).
fn along<const N: usize>(axis: usize, ts: [&Tensor; N], f: impl Fn([&Tensor; N]) -> Result<Tensor>) -> Result<Tensor> {
    let last = ts[0].ndim() - 1;
    if axis == last {
        return f(ts);
    }
    let (a, l) = (axis as isize, last as isize);
    no_grad(|| {
        let swapped = ts.iter().map(|t| t.transpose(a, l)).collect::<Result<Vec<_>>>()?;
        f(std::array::from_fn(|k| &swapped[k]))?.transpose(a, l)?.contiguous()
    })
}

/// softmax (or logsoftmax) of every row of the last axis, SIMD-dispatched.
fn kernel<T: Elem>(x: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
    along(axis, [x], |[x]| {
        let n = x.shape()[x.ndim() - 1];
        let mut out = vec![T::ZERO; x.numel()];
        if n > 0 {
            x.with_slice::<T, _>(|v| {
                simd(
                    #[inline(always)]
                    || {
                        for (o, i) in out.chunks_exact_mut(n).zip(v.chunks_exact(n)) {
                            lane(o, i, log);
                        }
                    },
                )
            })?;
        }
        Tensor::from_vec(out, x.shape())
    })
}

/// First-order backward in one pass over each row (the composed form below is ~5 ops).
fn backward_kernel<T: Elem>(out: &Tensor, g: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
    along(axis, [out, g], |[out, g]| {
        let n = out.shape()[out.ndim() - 1];
        let mut gx = vec![T::ZERO; out.numel()];
        if n > 0 {
            out.with_slice::<T, _>(|y| {
                g.with_slice::<T, _>(|g| {
                    simd(
                        #[inline(always)]
                        || {
                            for ((d, y), g) in gx.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(g.chunks_exact(n)) {
                                if log {
                                    // g - softmax * sum(g)
                                    let s = fold8(g, T::ZERO, |s, v| s + v);
                                    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                                        *d = g - y.fast_exp() * s;
                                    }
                                } else {
                                    // y * (g - sum(g * y))
                                    let s = g.iter().zip(y).fold(T::ZERO, |s, (&g, &y)| s + g * y);
                                    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                                        *d = y * (g - s);
                                    }
                                }
                            }
                        },
                    )
                })
            })??;
        }
        Tensor::from_vec(gx, out.shape())
    })
}

struct Softmax {
    axis: usize,
    log: bool,
}

impl BackwardOp for Softmax {
    replay!(|op, i, _| if op.log { i[0].logsoftmax(op.axis as isize) } else { i[0].softmax(op.axis as isize) });
    fn name(&self) -> &'static str {
        if self.log {
            "logsoftmax"
        } else {
            "softmax"
        }
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
        if let Some(b) = backend::of(self) {
            return b.softmax(self, ax, log);
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
