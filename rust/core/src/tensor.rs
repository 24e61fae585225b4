//! The handle users hold: shared storage + layout + (when recorded) the autodiff node
//! that produced it. Cloning a `Tensor` clones an `Arc`; identity is the `TensorId`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use parking_lot::RwLock;

use crate::backend;
use crate::backprop::Node;
use crate::dtype::DType;
use crate::error::{shape_err, Error, Result};
use crate::layout::Layout;
use crate::storage::{Elem, Foreign, Storage};
use crate::with_dtype;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl TensorId {
    fn fresh() -> TensorId {
        TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
    /// Below the id of every tensor created from now on (ids only grow): tells tensors
    /// made before a point from those made after it.
    pub fn mark() -> TensorId {
        TensorId(NEXT_ID.load(Ordering::Relaxed))
    }
    /// The id `as_u64` gave (a mark handed through Python).
    pub fn from_u64(v: u64) -> TensorId {
        TensorId(v)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

pub(crate) struct Inner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) node: Option<Node>,
}

#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(shape={:?}, dtype={}, id={})", self.shape(), self.dtype(), self.id().0)
    }
}

impl Tensor {
    // ---------- construction ----------

    /// Every tensor is made here, so this is where an empty layout is made canonical (offset
    /// 0, contiguous strides). A view with no elements addresses nothing, but the offset it
    /// inherits from a slice or index may lie past its buffer (the columns `1::2` of a (0, 6)
    /// tensor start at offset 1 of a buffer of length 0), and every accessor that offsets or
    /// slices the storage by it, on the CPU or the GPU, would otherwise need its own guard.
    pub(crate) fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, dtype: DType, node: Option<Node>) -> Tensor {
        let layout = if layout.numel() == 0 { Layout::contiguous(&layout.shape) } else { layout };
        Tensor(Arc::new(Inner { id: TensorId::fresh(), storage, layout, dtype, node }))
    }

    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if storage.len() != n {
            return shape_err("tensor", format!("{} elements cannot have shape {shape:?} ({n} elements)", storage.len()));
        }
        let dtype = storage.dtype();
        Ok(Tensor::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, None))
    }

    /// A tensor over memory another library lends (see `Foreign`), addressed by `layout`
    /// in elements: zero-copy, and writes show on the lender's side. The layout must lie in
    /// the buffer, with non-negative strides and no two indices on one element (a write
    /// through a broadcast view would land twice); copy memory laid out otherwise first.
    pub fn from_foreign(buf: Foreign, layout: Layout) -> Result<Tensor> {
        let op = "from_foreign";
        if layout.strides.len() != layout.shape.len() {
            return shape_err(op, format!("{} strides for shape {:?}", layout.strides.len(), layout.shape));
        }
        crate::layout::checked_numel(op, &layout.shape)?;
        let storage = Storage::Foreign(buf);
        match layout.end() {
            Some(end) if end <= storage.len() => {}
            Some(end) => return shape_err(op, format!("the layout {layout:?} reaches element {}, past the buffer of {}", end - 1, storage.len())),
            None => return shape_err(op, format!("the layout {layout:?} has a negative stride or cannot be addressed")),
        }
        if !layout.is_non_overlapping() {
            return shape_err(op, format!("the layout {layout:?} reaches some elements twice"));
        }
        let dtype = storage.dtype();
        Ok(Tensor::from_parts(Arc::new(RwLock::new(storage)), layout, dtype, None))
    }

    pub fn from_vec<T: Elem>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(T::wrap(data), shape)
    }

    /// Standard-layout result of a kernel. Kernels always produce fresh contiguous data.
    pub(crate) fn from_array<T: Elem>(a: ArrayD<T>) -> Tensor {
        let shape = a.shape().to_vec();
        let a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
        let (v, off) = a.into_raw_vec_and_offset();
        debug_assert!(off.unwrap_or(0) == 0);
        Tensor::from_vec(v, &shape).expect("kernel output matches its shape")
    }

    pub fn scalar<T: Elem>(v: T) -> Tensor {
        Tensor::from_vec(vec![v], &[]).expect("scalar")
    }

    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        with_dtype!(dtype, T => Tensor::from_vec(vec![T::from_f64(value); n], shape).expect("full"))
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// Zeros of this shape and dtype, on this tensor's device.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::full_like(self, 0.0)
    }

    pub fn ones_like(&self) -> Tensor {
        Tensor::full_like(self, 1.0)
    }

    fn full_like(&self, v: f64) -> Tensor {
        let t = Tensor::full(self.shape(), v, self.dtype());
        // Moving a fresh buffer to the device of an existing tensor only fails if that
        // device failed since; the CPU copy is then the useful answer.
        t.to_device(self.device()).unwrap_or(t)
    }

    // ---------- metadata ----------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn strides(&self) -> &[isize] {
        &self.0.layout.strides
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn ndim(&self) -> usize {
        self.0.layout.ndim()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Whether this tensor was produced by a recorded op (it carries a backward node).
    pub fn has_node(&self) -> bool {
        self.0.node.is_some()
    }
    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.node.as_ref().map(|n| n.op.name())
    }
    /// Whether two tensors share one buffer (a view and its base, say).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// A new tensor on the same buffer with a different layout: the basis of views.
    pub(crate) fn view_with(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, self.0.dtype, None)
    }

    /// The same data, cut off from the graph (shares the buffer).
    pub fn detach(&self) -> Tensor {
        self.view_with(self.0.layout.clone())
    }

    // ---------- data access ----------

    /// Run `f` on an ndarray view of the data, with the storage read-locked.
    pub fn with_view<T: Elem, R>(&self, f: impl FnOnce(ArrayViewD<'_, T>) -> R) -> Result<R> {
        self.check_dtype::<T>("with_view")?;
        let guard = self.0.storage.read_recursive();
        let data = T::slice(&guard);
        let l = &self.0.layout;
        // SAFETY: every layout is built by this crate's ops from a valid one over the same
        // buffer (views only narrow, permute or broadcast with stride 0), so all indices
        // reachable through (shape, strides, offset) lie in `data`, which the read lock keeps alive;
        // an empty layout has offset 0 (`from_parts`), so even its pointer stays in the buffer.
        let view = unsafe { ArrayViewD::from_shape_ptr(nd_shape(l), data.as_ptr().add(l.offset)) };
        Ok(f(view))
    }

    /// Run `f` on the contiguous data. Copies first when the layout is not contiguous.
    pub fn with_slice<T: Elem, R>(&self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        self.check_dtype::<T>("with_slice")?;
        if self.is_contiguous() {
            let guard = self.0.storage.read_recursive();
            let off = self.0.layout.offset;
            Ok(f(&T::slice(&guard)[off..off + self.numel()]))
        } else {
            let v = self.to_vec::<T>()?;
            Ok(f(&v))
        }
    }

    /// Write access to a contiguous tensor's elements (optimisers update parameters in place).
    pub fn with_slice_mut<T: Elem, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        self.check_dtype::<T>("with_slice_mut")?;
        if !self.is_contiguous() {
            return Err(Error::Value { op: "in-place update", msg: "the tensor is a non-contiguous view".into() });
        }
        let mut guard = self.0.storage.write();
        let off = self.0.layout.offset;
        let n = self.numel();
        Ok(f(&mut T::slice_mut(&mut guard)[off..off + n]))
    }

    /// The elements in row-major order (a memcpy when contiguous).
    pub fn to_vec<T: Elem>(&self) -> Result<Vec<T>> {
        if self.is_contiguous() {
            return self.with_slice::<T, _>(|s| s.to_vec());
        }
        // ndarray's per-element iterator over an IxDyn view costs several ns per element;
        // `assign` walks the inner axis as a strided lane instead.
        self.with_view::<T, _>(|v| {
            let mut out = ArrayD::<T>::zeros(v.raw_dim());
            out.assign(&v);
            out.into_raw_vec_and_offset().0
        })
    }

    pub fn to_vec_f64(&self) -> Vec<f64> {
        if backend::of(self).is_some() {
            // A read-back (the sync point); NaN if the device failed since the data went up.
            return match self.to_device(crate::Device::Cpu) {
                Ok(c) => c.to_vec_f64(),
                Err(_) => vec![f64::NAN; self.numel()],
            };
        }
        with_dtype!(self.dtype(), T => self.to_vec::<T>().expect("dtype").into_iter().map(|x| x.to_f64()).collect())
    }

    pub fn to_array<T: Elem>(&self) -> Result<ArrayD<T>> {
        self.with_view::<T, _>(|v| v.to_owned())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::Value { op: "item", msg: format!("only one-element tensors can be converted to a number, got shape {:?}", self.shape()) });
        }
        Ok(self.to_vec_f64()[0])
    }

    /// Overwrite this tensor's elements with `src` (same shape, broadcast allowed), in place
    /// and unrecorded: the building block of optimiser steps and `loadmodel_`.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.dtype() != self.dtype() {
            return Err(Error::DType { op: "assign", msg: format!("cannot assign {} data to a {} tensor", src.dtype(), self.dtype()) });
        }
        if let Some(b) = backend::of(self).or_else(|| backend::of(src)) {
            return b.assign(self, src);
        }
        let bshape = crate::layout::broadcast_shapes("assign", self.shape(), src.shape())?;
        if bshape != self.shape() {
            return shape_err("assign", format!("cannot assign shape {:?} to shape {:?}", src.shape(), self.shape()));
        }
        with_dtype!(self.dtype(), T => {
            // Materialise the source first: it may alias this tensor's buffer.
            let src: ArrayD<T> = src
                .with_view::<T, _>(|v| v.broadcast(self.shape()).map(|b| b.to_owned()))?
                .ok_or_else(|| Error::Shape { op: "assign", msg: "broadcast failed".into() })?;
            let mut guard = self.0.storage.write();
            let data = T::slice_mut(&mut guard);
            let l = &self.0.layout;
            // SAFETY: as in `with_view`; the write lock gives exclusive access to the buffer.
            let mut view = unsafe { ndarray::ArrayViewMutD::from_shape_ptr(nd_shape(l), data.as_mut_ptr().add(l.offset)) };
            view.assign(&src);
        });
        Ok(())
    }

    /// This tensor if nothing else can see its buffer (so it may be written in place),
    /// else a contiguous copy. Used to accumulate gradients in place. Foreign memory is
    /// never exclusive: its lender sees it.
    pub(crate) fn into_exclusive(self) -> Result<Tensor> {
        let exclusive = Arc::strong_count(&self.0) == 1
            && Arc::strong_count(&self.0.storage) == 1
            && self.is_contiguous()
            && self.0.layout.offset == 0
            && self.0.node.is_none()
            && !self.0.storage.read_recursive().is_foreign();
        if exclusive {
            return Ok(self);
        }
        with_dtype!(self.dtype(), T => Tensor::from_vec(self.to_vec::<T>()?, self.shape()))
    }

    /// `self += src` in place and unrecorded (`self` may be a strided view).
    pub(crate) fn add_assign_raw(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.dtype() != self.dtype() {
            return shape_err("add_assign", format!("cannot add {:?} into {:?}", src.shape(), self.shape()));
        }
        if backend::of(self).is_some() {
            return Err(Error::Device { op: "add_assign", msg: "in-place accumulation runs on the CPU only".into() });
        }
        with_dtype!(self.dtype(), T => {
            let src: ArrayD<T> = src.to_array::<T>()?;
            let mut guard = self.0.storage.write();
            let data = T::slice_mut(&mut guard);
            let l = &self.0.layout;
            // SAFETY: as in `assign`.
            let mut view = unsafe { ndarray::ArrayViewMutD::from_shape_ptr(nd_shape(l), data.as_mut_ptr().add(l.offset)) };
            view += &src;
        });
        Ok(())
    }

    /// The guard of every CPU data accessor: right dtype, and the data on the CPU.
    pub(crate) fn check_dtype<T: Elem>(&self, op: &'static str) -> Result<()> {
        if backend::of(self).is_some() {
            let dev = self.device();
            return Err(Error::Device {
                op,
                msg: format!(
                    "this op has no {} kernel yet (tensor of shape {:?} on {dev}); move it with fx.cpu(...) first",
                    dev.name().to_uppercase(),
                    self.shape()
                ),
            });
        }
        if self.dtype() != T::DTYPE {
            return Err(Error::DType { op, msg: format!("expected {}, got {}", T::DTYPE, self.dtype()) });
        }
        Ok(())
    }
}

/// The shape and strides of an ndarray view of `l`. An empty layout gets ndarray's own
/// strides for its shape (all zero): the numpy-style strides of an empty tensor fail ndarray's
/// debug checks (an owned copy's strides reach past its empty buffer; zero strides given
/// explicitly count as overlapping in a mutable view).
fn nd_shape(l: &Layout) -> ndarray::StrideShape<IxDyn> {
    if l.numel() == 0 {
        return IxDyn(&l.shape).into();
    }
    let strides: Vec<usize> = l.strides.iter().map(|&s| s as usize).collect();
    IxDyn(&l.shape).strides(IxDyn(&strides))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|i| i as f32).collect(), shape).unwrap()
    }

    /// Views with no elements whose raw offset (base offset plus start times stride) lies past
    /// the end of their storage, each with its expected shape.
    fn empty_views() -> Vec<(&'static str, Tensor, Vec<usize>)> {
        let cols = iota(&[0, 6]);
        let rows = iota(&[4, 0]);
        let wide = iota(&[0, 4]);
        let full = iota(&[2, 3]);
        vec![
            ("columns 1::2 of (0, 6)", cols.slice(1, 1, 6, 2).unwrap(), vec![0, 3]),
            ("row 1 of (4, 0)", rows.select(0, 1).unwrap(), vec![0]),
            ("rows 2.. of (4, 0)", rows.slice(0, 2, 4, 1).unwrap(), vec![2, 0]),
            ("rows 2.. of a (0, 4) transposed", wide.transpose(0, 1).unwrap().slice(0, 2, 4, 1).unwrap(), vec![2, 0]),
            // the storage has 6 elements, the offset would be 2 + 2 * 3 = 8
            ("rows 2.. of the last column of (2, 3)", full.slice(1, 2, 3, 1).unwrap().slice(0, 2, 2, 1).unwrap(), vec![0, 1]),
            ("reshape of row 1 of (4, 0)", rows.select(0, 1).unwrap().reshape(&[0, 5]).unwrap(), vec![0, 5]),
            ("permute of columns 1::2 of (0, 6)", cols.slice(1, 1, 6, 2).unwrap().permute(&[1, 0]).unwrap(), vec![3, 0]),
            ("broadcast of row 1 of (4, 0)", rows.slice(0, 1, 2, 1).unwrap().broadcast_to(&[3, 0]).unwrap(), vec![3, 0]),
        ]
    }

    #[test]
    fn an_empty_view_has_offset_zero_and_contiguous_strides() {
        for (what, v, shape) in empty_views() {
            assert_eq!(v.shape(), &shape[..], "{what}");
            assert_eq!(v.layout().offset, 0, "{what}");
            assert_eq!(v.strides(), &crate::layout::contiguous_strides(&shape)[..], "{what}");
            assert!(v.is_contiguous(), "{what}");
        }
    }

    #[test]
    fn empty_views_read_as_no_elements() {
        for (what, v, shape) in empty_views() {
            assert_eq!(v.with_slice::<f32, _>(|s| s.len()).unwrap(), 0, "{what}");
            assert_eq!(v.with_view::<f32, _>(|a| a.len()).unwrap(), 0, "{what}");
            assert!(v.to_vec::<f32>().unwrap().is_empty(), "{what}");
            assert!(v.to_vec_f64().is_empty(), "{what}");
            assert_eq!(v.to_array::<f32>().unwrap().shape(), &shape[..], "{what}");
            assert!(v.item().is_err(), "{what}");
        }
    }

    #[test]
    fn empty_views_write_no_elements() {
        for (what, v, shape) in empty_views() {
            assert_eq!(v.with_slice_mut::<f32, _>(|s| s.len()).unwrap(), 0, "{what}");
            v.assign(&Tensor::zeros(&shape, DType::F32)).unwrap();
            v.assign(&Tensor::scalar(1.0f32)).unwrap();
            v.add_assign_raw(&Tensor::zeros(&shape, DType::F32)).unwrap();
            let e = v.clone().into_exclusive().unwrap();
            assert_eq!((e.shape(), e.numel()), (&shape[..], 0), "{what}");
        }
    }

    #[test]
    fn empty_views_go_through_the_kernels() {
        for (what, v, shape) in empty_views() {
            let check = |t: Tensor, op: &str| {
                assert_eq!(t.shape(), &shape[..], "{what}: {op}");
                assert!(t.to_vec_f64().is_empty(), "{what}: {op}");
            };
            check(v.contiguous().unwrap(), "contiguous");
            check(v.cast(DType::F64).unwrap(), "cast");
            check(v.exp().unwrap(), "exp");
            check(v.scale(2.0).unwrap(), "scale");
            check(v.add(&v).unwrap(), "add");
            check(v.mul(&Tensor::scalar(3.0f32)).unwrap(), "mul by a scalar");
            check(v.mul(&Tensor::zeros(&shape, DType::F32)).unwrap(), "mul by a fresh tensor");
            assert_eq!(v.sum_all().unwrap().item().unwrap(), 0.0, "{what}: sum");
            let flat = v.reshape(&[0]).unwrap();
            assert_eq!(flat.shape(), &[0], "{what}: reshape");
            check(Tensor::concat(&[v.clone(), v.clone()], 0).unwrap().slice(0, 0, shape[0], 1).unwrap(), "concat");
            if shape.len() == 2 {
                let t = v.transpose(0, 1).unwrap();
                assert_eq!(t.shape(), &[shape[1], shape[0]], "{what}: transpose");
                let p = v.matmul(&Tensor::zeros(&[shape[1], 2], DType::F32)).unwrap();
                assert_eq!(p.to_vec_f64(), vec![0.0; shape[0] * 2], "{what}: matmul");
                if shape[0] > 0 {
                    check(v.index_select(0, &(0..shape[0]).rev().collect::<Vec<_>>()).unwrap(), "index_select");
                }
            }
        }
    }

    #[test]
    fn foreign_memory_is_never_taken_for_an_exclusive_accumulator() {
        // leaked, so the lender's side can be read after the tensors are gone
        let data: &'static mut [f32] = Box::leak(vec![1.0f32, 2.0].into_boxed_slice());
        let ptr = data.as_mut_ptr();
        // SAFETY: the leaked buffer lives for the whole test.
        let buf = unsafe { Foreign::new(ptr.cast(), 2, DType::F32, Box::new(())) }.unwrap();
        // the sole handle on a contiguous, unrecorded tensor: only foreignness keeps it from being written
        let e = Tensor::from_foreign(buf, Layout::contiguous(&[2])).unwrap().into_exclusive().unwrap();
        e.add_assign_raw(&Tensor::ones(&[2], DType::F32)).unwrap();
        assert_eq!(e.to_vec::<f32>().unwrap(), vec![2.0, 3.0]);
        // SAFETY: as above.
        assert_eq!(unsafe { std::slice::from_raw_parts(ptr, 2) }, &[1.0, 2.0]);
    }

    #[test]
    fn gradients_flow_through_empty_views() {
        let x = iota(&[0, 6]);
        crate::push_watch(std::slice::from_ref(&x));
        let loss = x.slice(1, 1, 6, 2).unwrap().exp().unwrap().sum_all().unwrap();
        crate::pop_watch();
        let g = crate::grad(&loss, std::slice::from_ref(&x), None).unwrap()[0].clone().expect("x reaches the loss");
        assert_eq!(g.shape(), &[0, 6]);
        assert!(g.to_vec_f64().is_empty());
    }
}
