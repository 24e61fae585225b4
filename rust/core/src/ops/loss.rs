//! Fused losses. The squared error is the loss of the seed model and of most regressions;
//! composed from ops it is three nodes forwards and three backwards (difference, square,
//! mean), ~7 µs of allocation and bookkeeping in a ~100 µs small-model step. Fused it is one
//! pass each way. Its backward is built from differentiable ops when a second derivative is
//! being recorded, and GPU tensors take the composed form.

use crate::backprop::{record, replay, should_record, BackwardOp};
use crate::error::{shape_err, Result};
use crate::ops::binary::check_same_dtype;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;
use crate::with_dtype;

/// Σ (a - b)², in eight independent accumulators per chunk (vectorised) and the chunks'
/// totals in f64, so a long sum keeps its precision.
fn sq_err_sum<T: Elem>(a: &[T], b: &[T]) -> f64 {
    simd(
        #[inline(always)]
        || {
            let mut total = 0.0f64;
            for (ca, cb) in a.chunks(4096).zip(b.chunks(4096)) {
                let mut acc = [T::ZERO; 8];
                let (xa, xb) = (ca.chunks_exact(8), cb.chunks_exact(8));
                let mut r = xa.remainder().iter().zip(xb.remainder()).fold(T::ZERO, |s, (&p, &q)| s + (p - q) * (p - q));
                for (p, q) in xa.zip(xb) {
                    for k in 0..8 {
                        let d = p[k] - q[k];
                        acc[k] += d * d;
                    }
                }
                for v in acc {
                    r += v;
                }
                total += r.to_f64();
            }
            total
        },
    )
}

struct SqErr {
    mean: bool,
}

impl BackwardOp for SqErr {
    replay!(|op, i, _| i[0].sq_err(&i[1], op.mean));
    fn name(&self) -> &'static str {
        "mse"
    }
    fn backward(&self, inputs: &[Tensor], _out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let scale = if self.mean { 2.0 / a.numel() as f64 } else { 2.0 };
        let d = if !should_record(&[a, b, g]) && !a.is_gpu() && !b.is_gpu() && !g.is_gpu() {
            // First order: one pass, d = (a - b) * 2g/N.
            let s = g.item()? * scale;
            with_dtype!(a.dtype(), T => {
                let s = T::from_f64(s);
                let v = a.with_slice::<T, _>(|x| b.with_slice::<T, _>(|y| {
                    simd(#[inline(always)] || x.iter().zip(y).map(|(&p, &q)| (p - q) * s).collect::<Vec<T>>())
                }))??;
                Tensor::from_vec(v, a.shape())?
            })
        } else {
            a.sub(b)?.mul(g)?.scale(scale)?
        };
        let db = if need[1] { Some(d.neg()?) } else { None };
        Ok(vec![need[0].then_some(d), db])
    }
}

impl Tensor {
    /// The squared-error loss `mean((self - y)²)` (`sum` when `mean` is false) as one op.
    /// Shapes must match; GPU tensors are computed with ordinary ops.
    pub fn sq_err(&self, y: &Tensor, mean: bool) -> Result<Tensor> {
        check_same_dtype("mse", self, y)?;
        if self.shape() != y.shape() {
            return shape_err("mse", format!("ŷ has shape {:?} but y has shape {:?}", self.shape(), y.shape()));
        }
        if self.is_gpu() || y.is_gpu() {
            let d = self.sub(y)?;
            let sq = d.mul(&d)?;
            return if mean { sq.mean_axes(None, false) } else { sq.sum_all() };
        }
        let total = with_dtype!(self.dtype(), T => self.with_slice::<T, _>(|a| y.with_slice::<T, _>(|b| sq_err_sum(a, b)))??);
        let v = if mean { total / self.numel() as f64 } else { total };
        Ok(record(Tensor::full(&[], v, self.dtype()), SqErr { mean }, &[self, y]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_squared_error_matches_composed_ops_in_value_first_and_second_derivative() {
        let a = Tensor::from_vec((0..37).map(|i| (i as f64 * 0.37).sin()).collect::<Vec<_>>(), &[37]).unwrap();
        let b = Tensor::from_vec((0..37).map(|i| (i as f64 * 0.11).cos()).collect::<Vec<_>>(), &[37]).unwrap();
        for mean in [true, false] {
            let leaves = [a.clone(), b.clone()];
            crate::push_watch(&leaves);
            let fused = a.sq_err(&b, mean).unwrap();
            let d = a.sub(&b).unwrap();
            let sq = d.mul(&d).unwrap();
            let composed = if mean { sq.mean_axes(None, false).unwrap() } else { sq.sum_all().unwrap() };
            crate::pop_watch();
            assert!((fused.item().unwrap() - composed.item().unwrap()).abs() < 1e-12);
            let gf = crate::grad(&fused, &leaves, None).unwrap();
            let gc = crate::grad(&composed, &leaves, None).unwrap();
            for (x, y) in gf.iter().zip(&gc) {
                for (p, q) in x.as_ref().unwrap().to_vec_f64().iter().zip(y.as_ref().unwrap().to_vec_f64()) {
                    assert!((p - q).abs() < 1e-12, "{p} vs {q}");
                }
            }
        }
        // d²/da² of mean((a-b)²) is 2/N on the diagonal: through the composed backward.
        crate::push_watch(std::slice::from_ref(&a));
        crate::push_watch(std::slice::from_ref(&a));
        let l = a.sq_err(&b, true).unwrap();
        let g = crate::grad(&l, std::slice::from_ref(&a), None).unwrap()[0].clone().unwrap();
        crate::pop_watch();
        let h = crate::grad(&g.sum_all().unwrap(), std::slice::from_ref(&a), None).unwrap()[0].clone().unwrap();
        crate::pop_watch();
        for v in h.to_vec_f64() {
            assert!((v - 2.0 / 37.0).abs() < 1e-12, "{v}");
        }
    }

    #[test]
    fn a_shape_mismatch_is_an_error() {
        let a = Tensor::zeros(&[2, 3], crate::DType::F32);
        assert!(matches!(a.sq_err(&Tensor::zeros(&[3, 2], crate::DType::F32), true), Err(crate::Error::Shape { .. })));
    }
}
