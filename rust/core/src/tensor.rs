//! The handle users hold: shared storage + layout + (when recorded) the autodiff node
//! that produced it. Cloning a `Tensor` clones an `Arc`; identity is the `TensorId`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use parking_lot::RwLock;

use crate::backprop::Node;
use crate::dtype::DType;
use crate::error::{shape_err, Error, Result};
use crate::layout::Layout;
use crate::storage::{Elem, Storage};
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

    pub(crate) fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, dtype: DType, node: Option<Node>) -> Tensor {
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
        // reachable through (shape, strides, offset) lie in `data`, which the read lock keeps alive.
        let view = unsafe {
            let strides: Vec<usize> = l.strides.iter().map(|&s| s as usize).collect();
            ArrayViewD::from_shape_ptr(IxDyn(&l.shape).strides(IxDyn(&strides)), data.as_ptr().add(l.offset))
        };
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
        #[cfg(feature = "gpu")]
        if self.is_gpu() {
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
        #[cfg(feature = "gpu")]
        if self.is_gpu() || src.is_gpu() {
            return crate::gpu::assign(self, src);
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
            let mut view = unsafe {
                let strides: Vec<usize> = l.strides.iter().map(|&s| s as usize).collect();
                ndarray::ArrayViewMutD::from_shape_ptr(IxDyn(&l.shape).strides(IxDyn(&strides)), data.as_mut_ptr().add(l.offset))
            };
            view.assign(&src);
        });
        Ok(())
    }

    /// This tensor if nothing else can see its buffer (so it may be written in place),
    /// else a contiguous copy. Used to accumulate gradients in place.
    pub(crate) fn into_exclusive(self) -> Result<Tensor> {
        let exclusive = Arc::strong_count(&self.0) == 1
            && Arc::strong_count(&self.0.storage) == 1
            && self.is_contiguous()
            && self.0.layout.offset == 0
            && self.0.node.is_none();
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
        #[cfg(feature = "gpu")]
        if self.is_gpu() {
            return Err(Error::Device { op: "add_assign", msg: "in-place accumulation runs on the CPU only".into() });
        }
        with_dtype!(self.dtype(), T => {
            let src: ArrayD<T> = src.to_array::<T>()?;
            let mut guard = self.0.storage.write();
            let data = T::slice_mut(&mut guard);
            let l = &self.0.layout;
            // SAFETY: as in `assign`.
            let mut view = unsafe {
                let strides: Vec<usize> = l.strides.iter().map(|&s| s as usize).collect();
                ndarray::ArrayViewMutD::from_shape_ptr(IxDyn(&l.shape).strides(IxDyn(&strides)), data.as_mut_ptr().add(l.offset))
            };
            view += &src;
        });
        Ok(())
    }

    /// The guard of every CPU data accessor: right dtype, and the data on the CPU.
    pub(crate) fn check_dtype<T: Elem>(&self, op: &'static str) -> Result<()> {
        #[cfg(feature = "gpu")]
        if self.0.storage.read_recursive().is_gpu() {
            return Err(Error::Device {
                op,
                msg: format!("this op has no GPU kernel yet (tensor of shape {:?} on gpu); move it with fx.cpu(...) first", self.shape()),
            });
        }
        if self.dtype() != T::DTYPE {
            return Err(Error::DType { op, msg: format!("expected {}, got {}", T::DTYPE, self.dtype()) });
        }
        Ok(())
    }
}
