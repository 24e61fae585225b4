//! Elementwise binary ops with numpy broadcasting.

use ndarray::{ArrayD, Zip};

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::ops::PAR_THRESHOLD;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;
use crate::with_dtype;

op_table! {
    /// The GPU kernel's expressions read the operands' elements `p` and `q`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BinaryOp {
        Add = "add" => "p + q",
        Sub = "sub" => "p - q",
        Mul = "mul" => "p * q",
        Div = "div" => "p / q",
        Pow = "pow" => "powf(p, q)",
        // NaN propagates, as on the CPU
        Maximum = "maximum" => "select(q, p, p != p || p >= q)",
        Minimum = "minimum" => "select(q, p, p != p || p <= q)",
    }
}

pub(crate) fn check_same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op, msg: format!("operands have different dtypes: {} and {}", a.dtype(), b.dtype()) });
    }
    Ok(())
}

/// `f` over two equal-length slices into a fresh vector: vectorised (see `vmath::simd`), and
/// split over rayon's threads above `PAR_THRESHOLD`.
pub(crate) fn map2<T: Elem>(x: &[T], y: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    debug_assert_eq!(x.len(), y.len());
    let mut out = vec![T::ZERO; x.len()];
    let kernel = |o: &mut [T], x: &[T], y: &[T]| {
        simd(
            #[inline(always)]
            || o.iter_mut().zip(x).zip(y).for_each(|((o, &p), &q)| *o = f(p, q)),
        )
    };
    if x.len() >= PAR_THRESHOLD {
        use rayon::prelude::*;
        let c = PAR_THRESHOLD / 4;
        out.par_chunks_mut(c).zip(x.par_chunks(c)).zip(y.par_chunks(c)).for_each(|((o, x), y)| kernel(o, x, y));
    } else {
        kernel(&mut out, x, y);
    }
    out
}

/// Apply `f` elementwise over the broadcast of `a` and `b` into a fresh contiguous tensor.
pub(crate) fn zip_map<T: Elem>(op: &'static str, a: &Tensor, b: &Tensor, f: impl Fn(T, T) -> T + Sync + Send) -> Result<Tensor> {
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let n = crate::layout::checked_numel(op, &shape)?;
    crate::layout::check_alloc(op, n, std::mem::size_of::<T>())?;
    if a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous() {
        let v = a.with_slice::<T, _>(|x| b.with_slice::<T, _>(|y| map2(x, y, f)))??;
        return Tensor::from_vec(v, &shape);
    }
    if b.numel() == 1 && a.is_contiguous() && a.shape() == shape.as_slice() {
        let s = b.to_vec::<T>()?[0];
        let v = a.with_slice::<T, _>(|x| {
            simd(
                #[inline(always)]
                || x.iter().map(|&p| f(p, s)).collect::<Vec<T>>(),
            )
        })?;
        return Tensor::from_vec(v, &shape);
    }
    if a.numel() == 1 && b.is_contiguous() && b.shape() == shape.as_slice() {
        let s = a.to_vec::<T>()?[0];
        let v = b.with_slice::<T, _>(|y| {
            simd(
                #[inline(always)]
                || y.iter().map(|&q| f(s, q)).collect::<Vec<T>>(),
            )
        })?;
        return Tensor::from_vec(v, &shape);
    }
    let out: ArrayD<T> = a.with_view::<T, _>(|av| {
        b.with_view::<T, _>(|bv| {
            let av = av.broadcast(shape.as_slice()).expect("shape checked");
            let bv = bv.broadcast(shape.as_slice()).expect("shape checked");
            if n >= PAR_THRESHOLD {
                Zip::from(&av).and(&bv).par_map_collect(|&x, &y| f(x, y))
            } else {
                Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y))
            }
        })
    })??;
    Ok(Tensor::from_array(out))
}

/// Whether `t` is a single element equal to 2 (the exponent of a square).
fn is_two(t: &Tensor) -> bool {
    t.numel() == 1 && t.item().is_ok_and(|v| v == 2.0)
}

fn forward(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_same_dtype(op.name(), a, b)?;
    if let Some(be) = backend::common(op.name(), &[a, b])? {
        return be.binary(op, a, b);
    }
    let name = op.name();
    with_dtype!(a.dtype(), T => match op {
        BinaryOp::Add => zip_map::<T>(name, a, b, |x, y| x + y),
        BinaryOp::Sub => zip_map::<T>(name, a, b, |x, y| x - y),
        BinaryOp::Mul => zip_map::<T>(name, a, b, |x, y| x * y),
        BinaryOp::Div => zip_map::<T>(name, a, b, |x, y| x / y),
        // x ** 2 (every squared error) as x * x: exact, and no libm powf call per element.
        BinaryOp::Pow if is_two(b) => zip_map::<T>(name, a, b, |x, _| x * x),
        BinaryOp::Pow => zip_map::<T>(name, a, b, |x, y| x.powf(y)),
        // NaN propagates, as in numpy's maximum/minimum.
        BinaryOp::Maximum => zip_map::<T>(name, a, b, |x, y| if x.is_nan() || x >= y { x } else { y }),
        BinaryOp::Minimum => zip_map::<T>(name, a, b, |x, y| if x.is_nan() || x <= y { x } else { y }),
    })
}

struct Binary(BinaryOp);

impl BackwardOp for Binary {
    replay!(|op, i, _| i[0].binary(op.0, &i[1]));
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let (ga, gb) = match self.0 {
            BinaryOp::Add => (need[0].then(|| g.clone()), need[1].then(|| g.clone())),
            BinaryOp::Sub => (need[0].then(|| g.clone()), if need[1] { Some(g.neg()?) } else { None }),
            BinaryOp::Mul => (if need[0] { Some(g.mul(b)?) } else { None }, if need[1] { Some(g.mul(a)?) } else { None }),
            BinaryOp::Div => (if need[0] { Some(g.div(b)?) } else { None }, if need[1] { Some(g.mul(out)?.div(b)?.neg()?) } else { None }),
            BinaryOp::Pow => (
                if need[0] && is_two(b) {
                    Some(g.mul(a)?.scale(2.0)?)
                } else if need[0] {
                    let one = Tensor::full(&[], 1.0, b.dtype());
                    Some(g.mul(b)?.mul(&a.pow(&b.sub(&one)?)?)?)
                } else {
                    None
                },
                if need[1] { Some(g.mul(out)?.mul(&a.log()?)?) } else { None },
            ),
            BinaryOp::Maximum | BinaryOp::Minimum => {
                // Ties send the gradient to `a`, so it is never split or lost.
                let mask_a = if self.0 == BinaryOp::Maximum { a.ge(b)? } else { a.le(b)? };
                (if need[0] { Some(g.mul(&mask_a)?) } else { None }, if need[1] { Some(g.mul(&mask_a.one_minus()?)?) } else { None })
            }
        };
        Ok(vec![ga.map(|x| x.sum_to(a.shape())).transpose()?, gb.map(|x| x.sum_to(b.shape())).transpose()?])
    }
}

impl Tensor {
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let out = forward(op, self, other)?;
        Ok(record(out, Binary(op), &[self, other]))
    }
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, o)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, o)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, o)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, o)
    }
    pub fn pow(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Pow, o)
    }
    pub fn maximum(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Maximum, o)
    }
    pub fn minimum(&self, o: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Minimum, o)
    }
    /// `self * s` for a plain number, in this tensor's dtype.
    pub fn scale(&self, s: f64) -> Result<Tensor> {
        self.mul(&Tensor::full(&[], s, self.dtype()))
    }
    /// `self + s` for a plain number.
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        self.add(&Tensor::full(&[], s, self.dtype()))
    }
    /// `1 - self`, used by masks in backward rules.
    pub(crate) fn one_minus(&self) -> Result<Tensor> {
        Tensor::full(&[], 1.0, self.dtype()).sub(self)
    }
}
