//! Python values to tensors and back. numpy arrays come in by copy (one memcpy for the
//! contiguous case), or lent in place to a kernel that only reads them (`lend_numpy`);
//! tensors go out to numpy without a copy, the array keeping the tensor alive.

use fluxrs_core::layout::Layout;
use fluxrs_core::{DType, Foreign, Tensor};
use numpy::ndarray::{ArrayViewD, IxDyn, ShapeBuilder};
use numpy::{PyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::errors::to_py;
use crate::tensor::PyTensor;

pub fn parse_dtype(name: &str) -> PyResult<DType> {
    match name {
        "float32" | "f32" | "float" => Ok(DType::F32),
        "float64" | "f64" | "double" => Ok(DType::F64),
        other => Err(PyTypeError::new_err(format!("unsupported dtype {other:?}: fluxrs tensors are float32 or float64"))),
    }
}

/// Arrays at least this large are copied with the GIL released, so that another thread's
/// Python runs meanwhile. Below it the copy (~20 us at 1 MiB) is shorter than what a thread
/// waiting to take the GIL back can lose to the other thread's Python.
pub const DETACH_COPY_BYTES: usize = 1 << 20;

/// A numpy array of element type `S` as a tensor of element type `T`, in one pass: a memcpy
/// for a C-contiguous array of the same type, a converting copy otherwise.
fn from_numpy_typed<S, T>(py: Python<'_>, arr: &Bound<'_, PyArrayDyn<S>>) -> PyResult<Tensor>
where
    S: numpy::Element + Copy + Send + Sync,
    T: fluxrs_core::Elem + FromElem<S>,
{
    let ro = arr.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?;
    let shape = ro.shape().to_vec();
    let view = ro.as_array();
    let bytes = view.len() * std::mem::size_of::<S>();
    // `as_slice` also accepts Fortran-ordered buffers, which are not in row-major order:
    // take the raw buffer only when it is C-contiguous, else copy in logical order.
    let contiguous = ro.is_c_contiguous();
    let copy = || -> Vec<T> {
        match view.as_slice() {
            Some(s) if contiguous => T::from_slice(s),
            _ => view.iter().map(|&v| T::from_elem(v)).collect(),
        }
    };
    // The readonly borrow keeps Rust from writing the array meanwhile; a Python thread that
    // writes to it during the copy races as it would with numpy's own GIL-free copies.
    let data = if bytes >= DETACH_COPY_BYTES { crate::gil::detach(py, copy) } else { copy() };
    Tensor::from_vec(data, &shape).map_err(to_py)
}

/// Element conversion for `from_numpy_typed` (numpy's `astype(..., casting="unsafe")`).
trait FromElem<S>: Sized + Send {
    fn from_elem(v: S) -> Self;
    fn from_slice(s: &[S]) -> Vec<Self>
    where
        S: Copy,
    {
        s.iter().map(|&v| Self::from_elem(v)).collect()
    }
}

macro_rules! from_elem {
    ($($s:ty => $t:ty),*) => {$(
        impl FromElem<$s> for $t {
            #[inline]
            fn from_elem(v: $s) -> $t {
                v as $t
            }
        }
    )*};
}
from_elem!(f64 => f32, f32 => f64);

impl FromElem<f32> for f32 {
    fn from_elem(v: f32) -> f32 {
        v
    }
    fn from_slice(s: &[f32]) -> Vec<f32> {
        s.to_vec()
    }
}

impl FromElem<f64> for f64 {
    fn from_elem(v: f64) -> f64 {
        v
    }
    fn from_slice(s: &[f64]) -> Vec<f64> {
        s.to_vec()
    }
}

/// Convert a numpy array (any numeric dtype) to a tensor of `dtype`.
/// Booleans and integers are accepted as data; objects and strings are refused.
pub fn from_array_like(py: Python<'_>, obj: &Bound<'_, PyAny>, dtype: DType) -> PyResult<Tensor> {
    // float arrays, the usual batch: one copy straight from the array's buffer
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        return match dtype {
            DType::F32 => from_numpy_typed::<f32, f32>(py, a),
            DType::F64 => from_numpy_typed::<f32, f64>(py, a),
        };
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f64>>() {
        return match dtype {
            DType::F32 => from_numpy_typed::<f64, f32>(py, a),
            DType::F64 => from_numpy_typed::<f64, f64>(py, a),
        };
    }
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "f" | "i" | "u" | "b") {
        let tn: String = obj.get_type().name()?.extract()?;
        let dn: String = arr.getattr("dtype")?.str()?.extract()?;
        return Err(PyTypeError::new_err(format!("cannot make a tensor from a {tn} with numpy dtype {dn}: expected numbers")));
    }
    let arr = arr.call_method1("astype", (dtype.name(),))?;
    match dtype {
        DType::F32 => from_numpy_typed::<f32, f32>(py, arr.cast::<PyArrayDyn<f32>>()?),
        DType::F64 => from_numpy_typed::<f64, f64>(py, arr.cast::<PyArrayDyn<f64>>()?),
    }
}

/// The owner of a lent numpy buffer: a reference to the array. Dropped without the GIL (the
/// tape freed inside a kernel), pyo3 defers the decref to the next time it holds the GIL.
struct Lent(#[allow(dead_code)] Py<PyAny>);

/// `obj` as a tensor over the numpy array's own buffer, without a copy, when it is a
/// C-contiguous, aligned, writeable array of `dtype`; None otherwise (the caller copies).
///
/// For data that a layer or loss only reads during one step: a batch's copy (~5 us for 32 x
/// 784 float32, with the GIL held) was the largest cost of feeding numpy arrays. The tensor
/// keeps the array alive; like `torch.from_numpy` it sees later writes to the array, so it
/// is never handed to users (they get `fx.tensor`'s copy).
pub fn lend_numpy(obj: &Bound<'_, PyAny>, dtype: DType) -> Option<Tensor> {
    let (ptr, shape) = match dtype {
        DType::F32 => {
            let a = obj.cast::<PyArrayDyn<f32>>().ok()?;
            (a.data().cast::<u8>(), a.shape().to_vec())
        }
        DType::F64 => {
            let a = obj.cast::<PyArrayDyn<f64>>().ok()?;
            (a.data().cast::<u8>(), a.shape().to_vec())
        }
    };
    let arr = obj.cast::<numpy::PyUntypedArray>().ok()?;
    // SAFETY: a live numpy array (the GIL is held); its flags are plain fields.
    let flags = unsafe { (*numpy::npyffi::_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).flags };
    let needed = numpy::npyffi::NPY_ARRAY_C_CONTIGUOUS | numpy::npyffi::NPY_ARRAY_ALIGNED | numpy::npyffi::NPY_ARRAY_WRITEABLE;
    if flags & needed != needed {
        return None;
    }
    let layout = Layout::contiguous(&shape);
    let owner = Box::new(Lent(obj.clone().unbind()));
    // SAFETY: the array's buffer holds `numel` writeable, aligned elements of `dtype` for as
    // long as the array lives, which the owner's reference ensures.
    let buf = unsafe { Foreign::new(ptr, layout.numel(), dtype, owner) }.ok()?;
    Tensor::from_foreign(buf, layout).ok()
}

/// A tensor operand: tensors pass through; numbers and arrays take `like`'s dtype.
pub fn operand(py: Python<'_>, obj: &Bound<'_, PyAny>, like: DType) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().inner.clone());
    }
    if obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        let v: f64 = obj.extract()?;
        return Ok(Tensor::full(&[], v, like));
    }
    from_array_like(py, obj, like)
}

/// A zero-copy numpy view of a tensor. `owner` (the Python tensor) keeps the buffer alive.
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor, owner: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    fn view<'py, T: fluxrs_core::Elem + numpy::Element>(py: Python<'py>, t: &Tensor, owner: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let _ = py;
        t.with_view::<T, _>(|v| {
            let ptr = v.as_ptr();
            let strides: Vec<usize> = v.strides().iter().map(|&s| s as usize).collect();
            // SAFETY: `ptr` points into the tensor's buffer, which lives in an Arc held by
            // `owner` for as long as the numpy array exists; buffers never move or shrink.
            unsafe {
                let detached: ArrayViewD<'_, T> = ArrayViewD::from_shape_ptr(IxDyn(v.shape()).strides(IxDyn(&strides)), ptr);
                PyArray::borrow_from_array(&detached, owner).into_any()
            }
        })
        .map_err(to_py)
    }
    match t.dtype() {
        DType::F32 => view::<f32>(py, t, owner),
        DType::F64 => view::<f64>(py, t, owner),
    }
}

pub fn dims(obj: &Bound<'_, PyAny>) -> PyResult<Vec<isize>> {
    if let Ok(v) = obj.extract::<isize>() {
        return Ok(vec![v]);
    }
    obj.extract::<Vec<isize>>().map_err(|_| PyTypeError::new_err("expected an int or a sequence of ints"))
}

pub fn sizes(op: &str, v: &[isize]) -> PyResult<Vec<usize>> {
    v.iter().map(|&d| usize::try_from(d).map_err(|_| PyValueError::new_err(format!("{op}: negative dimension {d} in {v:?}")))).collect()
}
