//! Comparisons (float 0/1 masks, never differentiated) and `where_`.

use ndarray::Zip;

use crate::backend;
use crate::backprop::{record, BackwardOp};
use crate::error::Result;
use crate::layout::broadcast_shapes;
use crate::ops::binary::{check_same_dtype, zip_map};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

op_table! {
    /// The GPU kernel's expressions read the operands' elements `p` and `q`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CmpOp {
        Eq = "eq" => "mask(p == q)",
        Ne = "ne" => "mask(p != q)",
        Lt = "lt" => "mask(p < q)",
        Le = "le" => "mask(p <= q)",
        Gt = "gt" => "mask(p > q)",
        Ge = "ge" => "mask(p >= q)",
    }
}

fn cmp_kernel<T: Elem>(op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let m = |c: bool| if c { T::ONE } else { T::ZERO };
    match op {
        CmpOp::Eq => zip_map::<T>(op.name(), a, b, move |x, y| m(x == y)),
        CmpOp::Ne => zip_map::<T>(op.name(), a, b, move |x, y| m(x != y)),
        CmpOp::Lt => zip_map::<T>(op.name(), a, b, move |x, y| m(x < y)),
        CmpOp::Le => zip_map::<T>(op.name(), a, b, move |x, y| m(x <= y)),
        CmpOp::Gt => zip_map::<T>(op.name(), a, b, move |x, y| m(x > y)),
        CmpOp::Ge => zip_map::<T>(op.name(), a, b, move |x, y| m(x >= y)),
    }
}

struct Where;

impl BackwardOp for Where {
    fn name(&self) -> &'static str {
        "where"
    }
    fn backward(&self, inputs: &[Tensor], _out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (cond, a, b) = (&inputs[0], &inputs[1], &inputs[2]);
        let zero = Tensor::full(&[], 0.0, g.dtype());
        let ga = if need[1] { Some(Tensor::where_(cond, g, &zero)?.sum_to(a.shape())?) } else { None };
        let gb = if need[2] { Some(Tensor::where_(cond, &zero, g)?.sum_to(b.shape())?) } else { None };
        Ok(vec![None, ga, gb])
    }
}

impl Tensor {
    pub fn compare(&self, op: CmpOp, other: &Tensor) -> Result<Tensor> {
        check_same_dtype(op.name(), self, other)?;
        if let Some(be) = backend::common(op.name(), &[self, other])? {
            return be.compare(op, self, other);
        }
        with_dtype!(self.dtype(), T => cmp_kernel::<T>(op, self, other))
    }
    pub fn eq(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Eq, o)
    }
    pub fn ne(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Ne, o)
    }
    pub fn lt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Lt, o)
    }
    pub fn le(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Le, o)
    }
    pub fn gt(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Gt, o)
    }
    pub fn ge(&self, o: &Tensor) -> Result<Tensor> {
        self.compare(CmpOp::Ge, o)
    }

    /// `a` where `cond` is nonzero, else `b`; all three broadcast together. Unlike
    /// `cond*a + (1-cond)*b`, an Inf or NaN in the branch not taken does not leak through.
    pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check_same_dtype("where", a, b)?;
        check_same_dtype("where", cond, a)?;
        let shape = broadcast_shapes("where", &broadcast_shapes("where", cond.shape(), a.shape())?, b.shape())?;
        if let Some(be) = backend::common("where", &[cond, a, b])? {
            return Ok(record(be.where_(cond, a, b, &shape)?, Where, &[cond, a, b]));
        }
        let out = with_dtype!(a.dtype(), T => {
            cond.with_view::<T, _>(|c| a.with_view::<T, _>(|av| b.with_view::<T, _>(|bv| {
                let c = c.broadcast(shape.as_slice()).expect("checked");
                let av = av.broadcast(shape.as_slice()).expect("checked");
                let bv = bv.broadcast(shape.as_slice()).expect("checked");
                Tensor::from_array(Zip::from(&c).and(&av).and(&bv).map_collect(|&c, &x, &y| if c != T::ZERO { x } else { y }))
            })))???
        });
        Ok(record(out, Where, &[cond, a, b]))
    }
}
