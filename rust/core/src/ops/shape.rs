//! Shape ops. reshape (wherever numpy's would be a view), permute, broadcast_to and slice
//! are views: they share the buffer and only change the layout. index_select, concat and
//! the scatter ops used by backward rules copy.

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::dtype::DType;
use crate::error::{shape_err, value_err, Error, Result};
use crate::layout::{normalize_axis, Layout};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

// ---------------- reshape ----------------

struct Reshape;
impl BackwardOp for Reshape {
    replay!(|_, i, out| i[0].reshape(out.shape()));
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
    replay!(|op, i, _| i[0].permute(&op.0.iter().map(|&a| a as isize).collect::<Vec<_>>()));
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
    replay!(|_, i, out| i[0].broadcast_to(out.shape()));
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
    replay!(|op, i, out| {
        let (s, count) = (op.0, out.shape()[op.0.axis]);
        let stop = if count == 0 { s.start } else { s.start + (count - 1) * s.step + 1 };
        i[0].slice(s.axis as isize, s.start, stop, s.step)
    });
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
    replay!(|_, i, _| i[0].contiguous());
    fn name(&self) -> &'static str {
        "contiguous"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

struct Cast(DType);
impl BackwardOp for Cast {
    replay!(|_, i, out| i[0].cast(out.dtype()));
    fn name(&self) -> &'static str {
        "cast"
    }
    fn backward(&self, _i: &[Tensor], _o: &Tensor, g: &Tensor, _n: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.cast(self.0)?)])
    }
}

fn copy_contiguous(t: &Tensor) -> Result<Tensor> {
    if let Some(b) = backend::of(t) {
        return b.contiguous(t);
    }
    with_dtype!(t.dtype(), T => { let v = t.to_vec::<T>()?; Tensor::from_vec(v, t.shape()) })
}

/// Strides that give the elements of (`shape`, `strides`) in row-major order under
/// `new_shape`, if there are any (numpy's no-copy reshape): each run of old axes merged into
/// new ones must itself be laid out contiguously. Size-1 axes carry no constraint.
fn nocopy_strides(shape: &[usize], strides: &[isize], new_shape: &[usize]) -> Option<Vec<isize>> {
    let (os, ost): (Vec<usize>, Vec<isize>) = shape.iter().zip(strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).unzip();
    if os.contains(&0) || new_shape.contains(&0) {
        return None;
    }
    let mut nst = vec![1isize; new_shape.len()];
    let (mut oi, mut ni) = (0, 0);
    while ni < new_shape.len() && oi < os.len() {
        let (mut oj, mut nj) = (oi + 1, ni + 1);
        let (mut np, mut op) = (new_shape[ni], os[oi]);
        while np != op {
            if np < op {
                np *= *new_shape.get(nj)?;
                nj += 1;
            } else {
                op *= *os.get(oj)?;
                oj += 1;
            }
        }
        if (oi..oj - 1).any(|k| ost[k] != ost[k + 1] * os[k + 1] as isize) {
            return None;
        }
        nst[nj - 1] = ost[oj - 1];
        for k in (ni + 1..nj).rev() {
            nst[k - 1] = nst[k] * new_shape[k] as isize;
        }
        (oi, ni) = (oj, nj);
    }
    Some(nst)
}

impl Tensor {
    /// Reshape without recording: a view where the layout allows one (as numpy decides; the
    /// view may be non-contiguous), else a contiguous copy. `-1` is not handled here (the
    /// bindings resolve it).
    pub(crate) fn reshape_raw(&self, shape: &[usize]) -> Result<Tensor> {
        let n = crate::layout::checked_numel("reshape", shape)?;
        if n != self.numel() {
            return shape_err(
                "reshape",
                format!("cannot reshape a tensor of shape {:?} ({} elements) into shape {:?} ({n} elements)", self.shape(), self.numel(), shape),
            );
        }
        if self.is_contiguous() {
            let mut l = Layout::contiguous(shape);
            l.offset = self.layout().offset;
            Ok(self.view_with(l))
        } else if let Some(strides) = nocopy_strides(self.shape(), self.strides(), shape) {
            // e.g. a column `x[:, j]`: still a view, so writing through it reaches `x`
            let l = self.layout();
            Ok(self.view_with(Layout { shape: shape.to_vec(), strides, offset: l.offset }))
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
        let layout = Layout { shape: p.iter().map(|&a| l.shape[a]).collect(), strides: p.iter().map(|&a| l.strides[a]).collect(), offset: l.offset };
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
        Ok(record(self.slice_raw(ax, start, stop, step), Slice(SliceSpec { axis: ax, start, step }), &[self]))
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
        let out = Tensor::zeros(shape, self.dtype()).to_device(self.device())?;
        let len = self.shape()[s.axis];
        let stop = if len == 0 { s.start } else { s.start + (len - 1) * s.step + 1 };
        let dst = out.slice_raw(s.axis, s.start, stop, s.step);
        dst.assign(self)?;
        Ok(record(out, SliceScatter(s), &[self]))
    }

    /// The view of `start..stop` by `step` along `ax`, unrecorded; the bounds already clamped.
    fn slice_raw(&self, ax: usize, start: usize, stop: usize, step: usize) -> Tensor {
        let l = self.layout();
        let len = (stop - start).div_ceil(step);
        let mut layout = l.clone();
        layout.shape[ax] = len;
        layout.strides[ax] = l.strides[ax] * step as isize;
        // (an empty result may point past the storage here: `from_parts` resets its offset)
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
        if let Some(b) = backend::of(self) {
            let out = b.index_select(self, ax, idx)?;
            return Ok(record(out, IndexSelect { axis: ax, idx: idx.to_vec() }, &[self]));
        }
        let out = with_dtype!(self.dtype(), T => self.with_view::<T, _>(|v| Tensor::from_array(v.select(ndarray::Axis(ax), idx)))?);
        Ok(record(out, IndexSelect { axis: ax, idx: idx.to_vec() }, &[self]))
    }

    /// Zeros of `shape` with the slices of `self` added at positions `idx` along `axis`.
    fn index_add_into(&self, shape: &[usize], axis: usize, idx: &[usize]) -> Result<Tensor> {
        if let Some(b) = backend::of(self) {
            let out = b.index_add(self, shape, axis, idx)?;
            return Ok(record(out, IndexAdd { axis, idx: idx.to_vec() }, &[self]));
        }
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
        let refs: Vec<&Tensor> = tensors.iter().collect();
        if let Some(b) = backend::common("concat", &refs)? {
            let mut shape = first.shape().to_vec();
            shape[ax] = tensors.iter().map(|t| t.shape()[ax]).sum();
            return Ok(record(b.concat(tensors, ax, &shape)?, Concat(ax), &refs));
        }
        let out = with_dtype!(first.dtype(), T => {
            let parts: Vec<ndarray::ArrayD<T>> = tensors.iter().map(|t| t.to_array::<T>()).collect::<Result<_>>()?;
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Tensor::from_array(ndarray::concatenate(ndarray::Axis(ax), &views).map_err(|e| Error::Shape { op: "concat", msg: e.to_string() })?)
        });
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

#[cfg(test)]
mod tests {
    use super::nocopy_strides;

    #[test]
    fn reshape_keeps_views_where_numpy_does() {
        // a column of a (4, 6) matrix, dropping its unit axis
        assert_eq!(nocopy_strides(&[4, 1], &[6, 1], &[4]), Some(vec![6]));
        // split and merge within a contiguous run of a strided view
        assert_eq!(nocopy_strides(&[3, 4, 2], &[16, 2, 1], &[3, 8]), Some(vec![16, 1]));
        assert_eq!(nocopy_strides(&[3, 8], &[16, 1], &[3, 2, 1, 4]), Some(vec![16, 4, 4, 1]));
        // a transpose cannot be flattened without a copy
        assert_eq!(nocopy_strides(&[6, 4], &[1, 6], &[24]), None);
        assert_eq!(nocopy_strides(&[3, 4], &[8, 1], &[12]), None);
    }
}
