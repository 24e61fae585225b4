//! Elementwise unary math and activations.

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::dtype::Float;
use crate::error::Result;
use crate::ops::PAR_THRESHOLD;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::{simd, FastMath};
use crate::with_dtype;

op_table! {
    /// The GPU kernel's expressions read the element `a` and the parameters `p0`, `p1` (a
    /// variant's fields, in order).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum UnaryOp {
        Neg = "neg" => "-a",
        Exp = "exp" => "exp(a)",
        Log = "log" => "log(a)",
        Log1p = "log1p" => "kahan_log1p(a)",
        Sqrt = "sqrt" => "sqrt(a)",
        Abs = "abs" => "abs(a)",
        // clamped: tanh overflows to NaN past ~44 on some drivers
        Tanh = "tanh" => "tanh(clamp(a, -15.0, 15.0))",
        Sigmoid = "sigmoid" => "1.0 / (1.0 + exp(-a))",
        // a select, not max: NaN passes through
        Relu = "relu" => "select(a, 0.0, a < 0.0)",
        Sin = "sin" => "sin(a)",
        Cos = "cos" => "cos(a)",
        /// log(1 + exp(x)), computed without overflow.
        Softplus = "softplus" => "max(a, 0.0) + log(1.0 + exp(-abs(a)))",
        LeakyRelu(f64) = "leakyrelu" => "select(p0 * a, a, a > 0.0)",
        Elu(f64) = "elu" => "select(p0 * (exp(a) - 1.0), a, a > 0.0)",
        Clamp(f64, f64) = "clamp" => "select(min(max(a, p0), p1), a, a != a)",
        /// sign(x): -1, 0 or 1. Piecewise constant, so no gradient flows through it.
        Sign = "sign" => "sign(a)",
        /// 1 where lo <= x <= hi else 0: a mask, no gradient.
        InRange(f64, f64) = "in_range" => "select(0.0, 1.0, a >= p0 && a <= p1)",
    }
}

impl UnaryOp {
    fn differentiable(self) -> bool {
        !matches!(self, UnaryOp::Sign | UnaryOp::InRange(..))
    }
}

#[inline(always)]
fn softplus<T: Float>(x: T) -> T {
    x.max(T::ZERO) + (-x.abs()).exp().ln_1p()
}

pub(crate) fn map<T: Elem>(x: &Tensor, f: impl Fn(T) -> T + Sync + Send) -> Result<Tensor> {
    // The loop runs under `simd` so `f` (branch-free for exp/tanh/sigmoid) is vectorised.
    let kernel = |o: &mut [T], i: &[T]| {
        simd(
            #[inline(always)]
            || o.iter_mut().zip(i).for_each(|(o, &a)| *o = f(a)),
        )
    };
    let v = x.with_slice::<T, _>(|s| {
        let mut out = vec![T::ZERO; s.len()];
        if s.len() >= PAR_THRESHOLD {
            use rayon::prelude::*;
            out.par_chunks_mut(PAR_THRESHOLD / 4).zip(s.par_chunks(PAR_THRESHOLD / 4)).for_each(|(o, i)| kernel(o, i));
        } else {
            kernel(&mut out, s);
        }
        out
    })?;
    Tensor::from_vec(v, x.shape())
}

fn forward(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    if let Some(b) = backend::of(x) {
        return b.unary(op, x);
    }
    with_dtype!(x.dtype(), T => {
        let c = |v: f64| T::from_f64(v);
        match op {
            UnaryOp::Neg => map::<T>(x, |a| -a),
            UnaryOp::Exp => map::<T>(x, |a| a.fast_exp()),
            UnaryOp::Log => map::<T>(x, |a| a.ln()),
            UnaryOp::Log1p => map::<T>(x, |a| a.ln_1p()),
            UnaryOp::Sqrt => map::<T>(x, |a| a.sqrt()),
            UnaryOp::Abs => map::<T>(x, |a| a.abs()),
            UnaryOp::Tanh => map::<T>(x, |a| a.fast_tanh()),
            UnaryOp::Sigmoid => map::<T>(x, |a| a.fast_sigmoid()),
            // `a < 0` rather than `a > 0`: NaN must pass through, or a non-finite loss goes unseen.
            UnaryOp::Relu => map::<T>(x, |a| if a < T::ZERO { T::ZERO } else { a }),
            UnaryOp::Sin => map::<T>(x, |a| a.sin()),
            UnaryOp::Cos => map::<T>(x, |a| a.cos()),
            UnaryOp::Softplus => map::<T>(x, softplus),
            UnaryOp::LeakyRelu(s) => { let s = c(s); map::<T>(x, move |a| if a > T::ZERO { a } else { s * a }) }
            UnaryOp::Elu(al) => { let al = c(al); map::<T>(x, move |a| if a > T::ZERO { a } else { al * (a.exp() - T::ONE) }) }
            UnaryOp::Clamp(lo, hi) => { let (lo, hi) = (c(lo), c(hi)); map::<T>(x, move |a| if a.is_nan() { a } else { a.max(lo).min(hi) }) }
            // `Float::signum` (0 at 0): with `T` a concrete type here, `a.signum()` would pick
            // the inherent `f32::signum`/`f64::signum`, which is 1 at +0 (abs got gradient 1 at 0).
            UnaryOp::Sign => map::<T>(x, <T as Float>::signum),
            UnaryOp::InRange(lo, hi) => { let (lo, hi) = (c(lo), c(hi)); map::<T>(x, move |a| if a >= lo && a <= hi { T::ONE } else { T::ZERO }) }
        }
    })
}

struct Unary(UnaryOp);

impl BackwardOp for Unary {
    replay!(|op, i, _| i[0].unary(op.0));
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let x = &inputs[0];
        let gx = match self.0 {
            UnaryOp::Neg => g.neg()?,
            UnaryOp::Exp => g.mul(out)?,
            UnaryOp::Log => g.div(x)?,
            UnaryOp::Log1p => g.div(&x.add_scalar(1.0)?)?,
            UnaryOp::Sqrt => g.div(&out.scale(2.0)?)?,
            UnaryOp::Abs => g.mul(&x.sign()?)?,
            UnaryOp::Tanh => g.mul(&out.mul(out)?.one_minus()?)?,
            UnaryOp::Sigmoid => g.mul(&out.mul(&out.one_minus()?)?)?,
            UnaryOp::Relu => g.mul(&x.gt(&Tensor::full(&[], 0.0, x.dtype()))?)?,
            UnaryOp::Sin => g.mul(&x.cos()?)?,
            UnaryOp::Cos => g.mul(&x.sin()?)?.neg()?,
            UnaryOp::Softplus => g.mul(&x.sigmoid()?)?,
            UnaryOp::LeakyRelu(s) => {
                // slope 1 where x > 0, s elsewhere: s + (1 - s) * [x > 0]
                let pos = x.gt(&Tensor::full(&[], 0.0, x.dtype()))?;
                g.mul(&pos.scale(1.0 - s)?.add_scalar(s)?)?
            }
            UnaryOp::Elu(a) => {
                // 1 where x > 0, out + a elsewhere
                let pos = x.gt(&Tensor::full(&[], 0.0, x.dtype()))?;
                let neg_slope = out.add_scalar(a)?.mul(&pos.one_minus()?)?;
                g.mul(&pos.add(&neg_slope)?)?
            }
            UnaryOp::Clamp(lo, hi) => g.mul(&x.unary(UnaryOp::InRange(lo, hi))?)?,
            UnaryOp::Sign | UnaryOp::InRange(..) => return Ok(vec![None]),
        };
        Ok(vec![Some(gx)])
    }
}

impl Tensor {
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let out = forward(op, self)?;
        if !op.differentiable() {
            return Ok(out);
        }
        Ok(record(out, Unary(op), &[self]))
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn log1p(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log1p)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }
    pub fn softplus(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Softplus)
    }
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sign)
    }
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Clamp(lo, hi))
    }
}
