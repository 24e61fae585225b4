//! Shape ops. reshape (of contiguous data), permute, broadcast_to and slice are views:
//! they share the buffer and only change the layout. index_select, concat and the
//! scatter ops used by backward rules copy.

use crate::backprop::{record, BackwardOp};
use crate::dtype::DType;
use crate::error::{shape_err, value_err, Error, Result};
use crate::layout::{normalize_axis, Layout};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

// ---------------- reshape ----------------

struct Reshape;
impl BackwardOp for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(inputs[0].shape())?)])
    }
}

// ---------------- permute ----------------

struct Permute(Vec<usize>);
impl BackwardOp for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut inv = vec![0isize; self.0.len()];
        for (i, &p) in self.0.iter().enumerate() {
            inv[p] = i as isize;
        }
        Ok(vec![Some(g.permute(&inv)?)])
    }
}

// ---------------- broadcast ----------------

struct BroadcastTo;
impl BackwardOp for BroadcastTo {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.sum_to(inputs[0].shape())?)])
    }
}

// ---------------- slice ----------------

#[derive(Clone, Copy)]
struct SliceSpec {
    axis: usize,
    start: usize,
    step: usize,
}

struct Slice(SliceSpec);
impl BackwardOp for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.slice_scatter(inputs[0].shape(), self.0)?)])
    }
    fn accumulates(&self) -> bool {
        true
    }
    fn accumulate_into(&self, _inputs: &[Tensor], g: &Tensor, acc: &Tensor) -> Result<()> {
        let s = self.0;
        let len = g.shape()[s.axis];
        let stop = if len == 0 { s.start } else { s.start + (len - 1) * s.step + 1 };
        acc.slice_raw(s.axis, s.start, stop, s.step).add_assign_raw(g)
    }
}

/// Zeros of `shape` with `src` written into the strided slice: the adjoint of `slice`.
struct SliceScatter(SliceSpec);
impl BackwardOp for SliceScatter {
    fn name(&self) -> &'static str {
        "slice_scatter"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let s = self.0;
        let len = inputs[0].shape()[s.axis];
        // As in `slice_scatter`: an empty slice stops at its start (len.max(1) gave one element).
        let stop = if len == 0 { s.start } else { s.start + (len - 1) * s.step + 1 };
        Ok(vec![Some(g.slice(s.axis as isize, s.start, stop, s.step)?)])
    }
}

// ---------------- index_select / index_add ----------------

struct IndexSelect {
    axis: usize,
    idx: Vec<usize>,
}
impl BackwardOp for IndexSelect {
    fn name(&self) -> &'static str {
        "index_select"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.index_add_into(inputs[0].shape(), self.axis, &self.idx)?)])
    }
}

struct IndexAdd {
    axis: usize,
    idx: Vec<usize>,
}
impl BackwardOp for IndexAdd {
    fn name(&self) -> &'static str {
        "index_add"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.index_select(self.axis as isize, &self.idx)?)])
    }
}

// ---------------- concat ----------------

struct Concat(usize);
impl BackwardOp for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(inputs.len());
        for (t, &nd) in inputs.iter().zip(need) {
            let len = t.shape()[self.0];
            out.push(if nd { Some(g.slice(self.0 as isize, start, start + len, 1)?) } else { None });
            start += len;
        }
        Ok(out)
    }
}

// ---------------- copies and casts ----------------

struct Identity;
impl BackwardOp for Identity {
    fn name(&self) -> &'static str {
        "contiguous"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

struct Cast(DType);
impl BackwardOp for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.cast(self.0)?)])
    }
}

fn copy_contiguous(t: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "gpu")]
    if t.is_gpu() {
        return crate::gpu::contiguous(t);
    }
    with_dtype!(t.dtype(), T => { let v = t.to_vec::<T>()?; Tensor::from_vec(v, t.shape()) })
}

impl Tensor {
    /// Reshape without recording: a view when contiguous, else a copy. `-1` is not
    /// handled here (the bindings resolve it).
    pub(crate) fn reshape_raw(&self, shape: &[usize]) -> Result<Tensor> {
        let n = crate::layout::checked_numel("reshape", shape)?;
        if n != self.numel() {
            return shape_err("reshape", format!("cannot reshape a tensor of shape {:?} ({} elements) into shape {:?} ({n} elements)", self.shape(), self.numel(), shape));
        }
        if self.is_contiguous() {
            let mut l = Layout::contiguous(shape);
            l.offset = self.layout().offset;
            Ok(self.view_with(l))
        } else {
            copy_contiguous(self)?.reshape_raw(shape)
        }
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let out = self.reshape_raw(shape)?;
        Ok(record(out, Reshape, &[self]))
    }

    /// Reorder axes (a view). `perm` must be a permutation of `0..ndim` (negatives allowed).
    pub fn permute(&self, perm: &[isize]) -> Result<Tensor> {
        let nd = self.ndim();
        if perm.len() != nd {
            return shape_err("permute", format!("permutation {perm:?} has {} axes but the tensor has {nd}", perm.len()));
        }
        let p: Vec<usize> = perm.iter().map(|&a| normalize_axis("permute", a, nd)).collect::<Result<_>>()?;
        let mut seen = vec![false; nd];
        for &a in &p {
            if std::mem::replace(&mut seen[a], true) {
                return value_err("permute", format!("{perm:?} is not a permutation of the axes"));
            }
        }
        let l = self.layout();
        let layout = Layout {
            shape: p.iter().map(|&a| l.shape[a]).collect(),
            strides: p.iter().map(|&a| l.strides[a]).collect(),
            offset: l.offset,
        };
        Ok(record(self.view_with(layout), Permute(p), &[self]))
    }

    /// Swap two axes (a view).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let nd = self.ndim();
        let (a, b) = (normalize_axis("transpose", a, nd)?, normalize_axis("transpose", b, nd)?);
        let mut perm: Vec<isize> = (0..nd as isize).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Broadcast to `shape` (a view with zero strides on the broadcast axes).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        crate::layout::checked_numel("broadcast_to", shape)?;
        let nd = shape.len();
        let l = self.layout();
        if l.ndim() > nd {
            return shape_err("broadcast_to", format!("cannot broadcast shape {:?} to {shape:?}", l.shape));
        }
        let extra = nd - l.ndim();
        let mut strides = vec![0isize; nd];
        for i in 0..l.ndim() {
            let (have, want) = (l.shape[i], shape[extra + i]);
            strides[extra + i] = if have == want {
                l.strides[i]
            } else if have == 1 {
                0
            } else {
                return shape_err("broadcast_to", format!("cannot broadcast shape {:?} to {shape:?}", l.shape));
            };
        }
        let layout = Layout { shape: shape.to_vec(), strides, offset: l.offset };
        Ok(record(self.view_with(layout), BroadcastTo, &[self]))
    }

    /// Elements `start, start+step, ...` below `stop` along `axis` (a view).
    pub fn slice(&self, axis: isize, start: usize, stop: usize, step: usize) -> Result<Tensor> {
        let ax = normalize_axis("slice", axis, self.ndim())?;
        if step == 0 {
            return value_err("slice", "step must be positive");
        }
        let dim = self.shape()[ax];
        let stop = stop.min(dim);
        let start = start.min(stop);
        let len = (stop - start).div_ceil(step);
        let l = self.layout();
        let mut layout = l.clone();
        layout.shape[ax] = len;
        layout.strides[ax] = l.strides[ax] * step as isize;
        layout.offset = if len == 0 { l.offset } else { (l.offset as isize + start as isize * l.strides[ax]) as usize };
        Ok(record(self.view_with(layout), Slice(SliceSpec { axis: ax, start, step }), &[self]))
    }

    /// The sub-tensor at `index` along `axis`, with that axis removed (a view).
    pub fn select(&self, axis: isize, index: isize) -> Result<Tensor> {
        let ax = normalize_axis("select", axis, self.ndim())?;
        let dim = self.shape()[ax];
        let i = if index < 0 { index + dim as isize } else { index };
        if i < 0 || i >= dim as isize {
            return Err(Error::Index { op: "select", index, dim: ax, size: dim });
        }
        let s = self.slice(ax as isize, i as usize, i as usize + 1, 1)?;
        let mut shape = self.shape().to_vec();
        shape.remove(ax);
        s.reshape(&shape)
    }

    fn slice_scatter(&self, shape: &[usize], s: SliceSpec) -> Result<Tensor> {
        let out = Tensor::zeros(shape, self.dtype());
        let len = self.shape()[s.axis];
        let stop = if len == 0 { s.start } else { s.start + (len - 1) * s.step + 1 };
        let dst = out.slice_raw(s.axis, s.start, stop, s.step);
        dst.assign(self)?;
        Ok(record(out, SliceScatter(s), &[self]))
    }

    fn slice_raw(&self, ax: usize, start: usize, stop: usize, step: usize) -> Tensor {
        let l = self.layout();
        let len = (stop - start).div_ceil(step);
        let mut layout = l.clone();
        layout.shape[ax] = len;
        layout.strides[ax] = l.strides[ax] * step as isize;
        layout.offset = (l.offset as isize + start as isize * l.strides[ax]) as usize;
        self.view_with(layout)
    }

    /// Gather positions `idx` along `axis` (a copy); repeats allowed.
    pub fn index_select(&self, axis: isize, idx: &[usize]) -> Result<Tensor> {
        let ax = normalize_axis("index_select", axis, self.ndim())?;
        let dim = self.shape()[ax];
        if let Some(&bad) = idx.iter().find(|&&i| i >= dim) {
            return Err(Error::Index { op: "index_select", index: bad as isize, dim: ax, size: dim });
        }
        let out = with_dtype!(self.dtype(), T => self.with_view::<T, _>(|v| Tensor::from_array(v.select(ndarray::Axis(ax), idx)))?);
        Ok(record(out, IndexSelect { axis: ax, idx: idx.to_vec() }, &[self]))
    }

    /// Zeros of `shape` with the slices of `self` added at positions `idx` along `axis`.
    fn index_add_into(&self, shape: &[usize], axis: usize, idx: &[usize]) -> Result<Tensor> {
        let out = with_dtype!(self.dtype(), T => {
            let mut acc = ndarray::ArrayD::<T>::zeros(ndarray::IxDyn(shape));
            self.with_view::<T, _>(|src| {
                for (k, &i) in idx.iter().enumerate() {
                    let mut dst = acc.index_axis_mut(ndarray::Axis(axis), i);
                    dst += &src.index_axis(ndarray::Axis(axis), k);
                }
            })?;
            Tensor::from_array(acc)
        });
        Ok(record(out, IndexAdd { axis, idx: idx.to_vec() }, &[self]))
    }

    /// Join tensors along an existing axis.
    pub fn concat(tensors: &[Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::Value { op: "concat", msg: "needs at least one tensor".into() })?;
        let ax = normalize_axis("concat", axis, first.ndim())?;
        for t in tensors {
            crate::ops::binary::check_same_dtype("concat", first, t)?;
            let ok = t.ndim() == first.ndim() && t.shape().iter().zip(first.shape()).enumerate().all(|(i, (a, b))| i == ax || a == b);
            if !ok {
                return shape_err("concat", format!("shapes {:?} and {:?} differ outside axis {ax}", first.shape(), t.shape()));
            }
        }
        let out = with_dtype!(first.dtype(), T => {
            let parts: Vec<ndarray::ArrayD<T>> = tensors.iter().map(|t| t.to_array::<T>()).collect::<Result<_>>()?;
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Tensor::from_array(ndarray::concatenate(ndarray::Axis(ax), &views).map_err(|e| Error::Shape { op: "concat", msg: e.to_string() })?)
        });
        let refs: Vec<&Tensor> = tensors.iter().collect();
        Ok(record(out, Concat(ax), &refs))
    }

    /// Join tensors of one shape along a new axis.
    pub fn stack(tensors: &[Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::Value { op: "stack", msg: "needs at least one tensor".into() })?;
        let ax = normalize_axis("stack", axis, first.ndim() + 1)?;
        let mut expanded = Vec::with_capacity(tensors.len());
        for t in tensors {
            if t.shape() != first.shape() {
                return shape_err("stack", format!("all tensors need the same shape, got {:?} and {:?}", first.shape(), t.shape()));
            }
            let mut s = t.shape().to_vec();
            s.insert(ax, 1);
            expanded.push(t.reshape(&s)?);
        }
        Tensor::concat(&expanded, ax as isize)
    }

    /// A contiguous copy (or `self` when already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        Ok(record(copy_contiguous(self)?, Identity, &[self]))
    }

    /// Convert to another dtype (differentiable; a no-op when the dtype already matches).
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let v = self.to_vec_f64();
        let out = with_dtype!(dtype, T => Tensor::from_vec(v.into_iter().map(T::from_f64).collect::<Vec<T>>(), self.shape())?);
        Ok(record(out, Cast(self.dtype()), &[self]))
    }
}

#[allow(dead_code)]
fn _assert_elem<T: Elem>() {}
