//! Fused layer kernels. `dense` computes act(x @ w^T + b) with one gemm (the bias is
//! preloaded into the output and accumulated into) and the activation applied in place:
//! one allocation and one pass instead of three ops. Its backward uses ordinary
//! differentiable ops, so second derivatives still work.

use crate::backend;
use crate::backprop::{record, replay, should_record, BackwardOp};
use crate::error::{shape_err, Result};
use crate::ops::binary::{check_same_dtype, map2};
use crate::ops::matmul::{gemm_par, gemm_rm, Operand};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;
use crate::with_dtype;

op_table! {
    /// The activations fused into Dense and Conv: those whose derivative can be computed
    /// from the output alone. The GPU kernels' expressions read the pre-activation `v`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Act {
        Identity = "identity" => "v",
        // a select, not max: NaN passes through
        Relu = "relu" => "select(v, 0.0, v < 0.0)",
        Sigmoid = "sigmoid" => "1.0 / (1.0 + exp(-v))",
        Tanh = "tanh" => "tanh(clamp(v, -15.0, 15.0))",
    }
}

impl Act {
    pub fn from_name(name: &str) -> Option<Act> {
        Act::every().into_iter().find(|a| a.name() == name)
    }

    /// The names `from_name` takes, in table order.
    pub fn names() -> impl ExactSizeIterator<Item = &'static str> {
        Act::TABLE.iter().map(|(name, _)| *name)
    }

    /// The derivative at the activation's input, from its output `y`.
    #[inline(always)]
    pub(crate) fn derivative<T: Elem>(self, y: T) -> T {
        match self {
            Act::Identity => T::ONE,
            Act::Relu => {
                if y > T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
            Act::Sigmoid => y * (T::ONE - y),
            Act::Tanh => T::ONE - y * y,
        }
    }
}

/// Applies `act` in place, vectorised. `a < 0` for relu so NaN passes through.
pub(crate) fn apply_act<T: Elem>(v: &mut [T], act: Act) {
    simd(
        #[inline(always)]
        || match act {
            Act::Identity => {}
            Act::Relu => v.iter_mut().for_each(|x| {
                if *x < T::ZERO {
                    *x = T::ZERO
                }
            }),
            Act::Sigmoid => v.iter_mut().for_each(|x| *x = x.fast_sigmoid()),
            Act::Tanh => v.iter_mut().for_each(|x| *x = x.fast_tanh()),
        },
    )
}

/// The gradient at the pre-activation from the activation's output `out` and the incoming
/// gradient `g`. One fused pass in a first-order backward; differentiable ops when this
/// backward is itself recorded (a second derivative is being built).
pub(crate) fn act_backward(act: Act, out: &Tensor, g: &Tensor) -> Result<Tensor> {
    if act == Act::Identity {
        return Ok(g.clone());
    }
    if out.shape() == g.shape() && out.dtype() == g.dtype() && !should_record(&[out, g]) && !out.is_gpu() && !g.is_gpu() {
        return with_dtype!(out.dtype(), T => {
            let v = out.with_slice::<T, _>(|y| g.with_slice::<T, _>(|gs| match act {
                // g * mask, not a select: a NaN gradient stays NaN (as the composed form).
                Act::Relu => map2(y, gs, |y, g| g * Act::Relu.derivative(y)),
                Act::Sigmoid => map2(y, gs, |y, g| g * Act::Sigmoid.derivative(y)),
                Act::Tanh => map2(y, gs, |y, g| g * Act::Tanh.derivative(y)),
                Act::Identity => unreachable!(),
            }))??;
            Tensor::from_vec(v, out.shape())
        });
    }
    match act {
        Act::Identity => Ok(g.clone()),
        Act::Relu => g.mul(&out.gt(&Tensor::full(&[], 0.0, out.dtype()))?),
        Act::Sigmoid => g.mul(&out.mul(&out.one_minus()?)?),
        Act::Tanh => g.mul(&out.mul(out)?.one_minus()?),
    }
}

fn dense_kernel<T: Elem>(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let (n, k) = (x.shape()[0], x.shape()[1]);
    let m = w.shape()[0];
    let (lx, lw) = (x.layout().clone(), w.layout().clone());
    let gx = x.0.storage.read_recursive();
    let gw = w.0.storage.read_recursive();
    // SAFETY: layouts are valid views of the locked buffers (see Tensor::with_view).
    // w^T is w read with its strides swapped, without a copy.
    let (xa, wt) = unsafe {
        ((T::slice(&gx).as_ptr().add(lx.offset), lx.strides[1], lx.strides[0]), (T::slice(&gw).as_ptr().add(lw.offset), lw.strides[0], lw.strides[1]))
    };
    let mut out = match b {
        // SAFETY: as above
        None => unsafe { gemm_new(n, m, k, xa, wt) },
        Some(b) => {
            // every row starts as the bias, and the product is added to it
            let mut out = b.with_slice::<T, _>(|bs| bs.repeat(n))?;
            // SAFETY: as above; out is n*m, row-major
            unsafe { gemm_rm(n, m, k, out.as_mut_ptr(), m, true, xa, wt, gemm_par(n * m * k)) };
            out
        }
    };
    drop((gx, gw));
    apply_act(&mut out, act);
    Tensor::from_vec(out, &[n, m])
}

/// A new row-major (m x n) = a (m x k) @ b (k x n), each operand given by (pointer, column
/// stride, row stride) in elements, as `gemm` takes them.
///
/// SAFETY: the pointers must cover every element their shapes and strides reach.
unsafe fn gemm_new<T: Elem>(m: usize, n: usize, k: usize, a: Operand<T>, b: Operand<T>) -> Vec<T> {
    // SAFETY: gemm_rm writes all m*n elements of dst (dst not read); a and b as promised.
    unsafe { crate::storage::filled_by(m * n, |dst| gemm_rm(m, n, k, dst, n, false, a, b, gemm_par(m * n * k))) }
}

/// The first-order gradients of `x @ w^T + b` given the pre-activation gradient `gp` (n x m,
/// contiguous): gx = gp @ w, gw = gp^T @ x, gb = column sums of gp.
fn dense_backward_kernel<T: Elem>(x: &Tensor, w: &Tensor, gp: &Tensor, has_bias: bool, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
    let (n, k, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let (lx, lw, lg) = (x.layout().clone(), w.layout().clone(), gp.layout().clone());
    let sx = x.0.storage.read_recursive();
    let sw = w.0.storage.read_recursive();
    let sg = gp.0.storage.read_recursive();
    // SAFETY: the layouts are valid views of the locked buffers (see Tensor::with_view).
    let (px, pw, pg) = unsafe { (T::slice(&sx).as_ptr().add(lx.offset), T::slice(&sw).as_ptr().add(lw.offset), T::slice(&sg).as_ptr().add(lg.offset)) };
    let mut grads = Vec::with_capacity(3);
    grads.push(if need[0] {
        // SAFETY: as above; gp is contiguous (n x m).
        let gx = unsafe { gemm_new(n, k, m, (pg, 1, m as isize), (pw, lw.strides[1], lw.strides[0])) };
        Some(Tensor::from_vec(gx, &[n, k])?)
    } else {
        None
    });
    grads.push(if need[1] {
        // gp^T is gp read with its strides swapped.
        let gw = unsafe { gemm_new(m, k, n, (pg, m as isize, 1), (px, lx.strides[1], lx.strides[0])) };
        Some(Tensor::from_vec(gw, &[m, k])?)
    } else {
        None
    });
    if has_bias {
        grads.push(if need[2] {
            let gs = &T::slice(&sg)[lg.offset..lg.offset + n * m];
            let mut gb = vec![T::ZERO; m];
            simd(
                #[inline(always)]
                || {
                    for row in gs.chunks_exact(m.max(1)) {
                        gb.iter_mut().zip(row).for_each(|(b, &v)| *b += v);
                    }
                },
            );
            Some(Tensor::from_vec(gb, &[m])?)
        } else {
            None
        });
    }
    Ok(grads)
}

struct Dense(Act);

impl BackwardOp for Dense {
    replay!(|op, i, _| Tensor::dense(&i[0], &i[1], i.get(2), op.0));
    fn name(&self) -> &'static str {
        "dense"
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let gp = act_backward(self.0, out, g)?;
        if !should_record(&[&gp, x, w]) && gp.is_contiguous() && !gp.is_gpu() {
            // First order: three products straight on the buffers, no intermediate ops.
            return with_dtype!(gp.dtype(), T => dense_backward_kernel::<T>(x, w, &gp, inputs.len() == 3, need));
        }
        let gx = if need[0] { Some(gp.matmul(w)?) } else { None };
        let gw = if need[1] { Some(gp.transpose(0, 1)?.matmul(x)?) } else { None };
        let mut grads = vec![gx, gw];
        if inputs.len() == 3 {
            grads.push(if need[2] { Some(gp.sum_axes(Some(&[0]), false)?) } else { None });
        }
        Ok(grads)
    }
}

impl Tensor {
    /// act(x @ w^T + b) for x `(n, in)`, w `(out, in)`, b `(out,)`.
    pub fn dense(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act) -> Result<Tensor> {
        check_same_dtype("dense", x, w)?;
        if x.ndim() != 2 || w.ndim() != 2 || x.shape()[1] != w.shape()[1] {
            return shape_err(
                "dense",
                format!("expects x (n, {}) for a weight of shape {:?}, got x of shape {:?}", w.shape().get(1).copied().unwrap_or(0), w.shape(), x.shape()),
            );
        }
        if let Some(b) = b {
            check_same_dtype("dense", x, b)?;
            if b.shape() != [w.shape()[0]] {
                return shape_err("dense", format!("bias of shape {:?} does not match weight of shape {:?}", b.shape(), w.shape()));
            }
        }
        let operands: &[&Tensor] = match b {
            Some(b) => &[x, w, b],
            None => &[x, w],
        };
        let out = match backend::common("dense", operands)? {
            Some(be) => be.dense(x, w, b, act)?,
            None => with_dtype!(x.dtype(), T => dense_kernel::<T>(x, w, b, act)?),
        };
        Ok(match b {
            Some(b) => record(out, Dense(act), &[x, w, b]),
            None => record(out, Dense(act), &[x, w]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], s: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), s).unwrap()
    }

    #[test]
    fn dense_matches_composed_ops_in_value_and_gradient() {
        let x = t(&[0.5, -1.0, 2.0, 0.1, 0.3, -0.7], &[2, 3]);
        let w = t(&[0.2, -0.4, 0.6, -0.1, 0.5, 0.3], &[2, 3]).transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap();
        let b = t(&[0.05, -0.2], &[2]);
        for act in [Act::Identity, Act::Relu, Act::Sigmoid, Act::Tanh] {
            let leaves = [x.clone(), w.clone(), b.clone()];
            crate::push_watch(&leaves);
            let fused = Tensor::dense(&x, &w, Some(&b), act).unwrap();
            let pre = x.matmul(&w.transpose(0, 1).unwrap()).unwrap().add(&b).unwrap();
            let composed = match act {
                Act::Identity => pre,
                Act::Relu => pre.relu().unwrap(),
                Act::Sigmoid => pre.sigmoid().unwrap(),
                Act::Tanh => pre.tanh().unwrap(),
            };
            let wsum = t(&[1.0, 2.0, -1.0, 0.5], &[2, 2]);
            let lf = fused.mul(&wsum).unwrap().sum_all().unwrap();
            let lc = composed.mul(&wsum).unwrap().sum_all().unwrap();
            crate::pop_watch();
            assert!((lf.item().unwrap() - lc.item().unwrap()).abs() < 1e-12, "{act:?}");
            let gf = crate::grad(&lf, &leaves, None).unwrap();
            let gc = crate::grad(&lc, &leaves, None).unwrap();
            for (a, c) in gf.iter().zip(&gc) {
                let (a, c) = (a.as_ref().unwrap().to_vec_f64(), c.as_ref().unwrap().to_vec_f64());
                for (p, q) in a.iter().zip(&c) {
                    assert!((p - q).abs() < 1e-12, "{act:?}: {a:?} vs {c:?}");
                }
            }
        }
    }

    #[test]
    fn dense_rejects_wrong_feature_count() {
        let x = t(&[1.0; 6], &[2, 3]);
        let w = t(&[1.0; 8], &[2, 4]);
        assert!(matches!(Tensor::dense(&x, &w, None, Act::Identity), Err(crate::Error::Shape { .. })));
    }
}
