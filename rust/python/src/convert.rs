//! Python values to tensors and back. numpy arrays come in by copy (one memcpy for the
//! contiguous case); tensors go out to numpy without a copy, the array keeping the tensor alive.

use fluxrs_core::{DType, Tensor};
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

fn from_numpy_typed<T: fluxrs_core::Elem + numpy::Element>(arr: &Bound<'_, PyArrayDyn<T>>) -> PyResult<Tensor> {
    let ro = arr.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?;
    let shape = ro.shape().to_vec();
    // `as_slice` also accepts Fortran-ordered buffers, which are not in row-major order:
    // take the raw buffer only when it is C-contiguous, else copy in logical order.
    let data: Vec<T> = if ro.is_c_contiguous() {
        ro.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?.to_vec()
    } else {
        ro.as_array().iter().copied().collect()
    };
    Tensor::from_vec(data, &shape).map_err(to_py)
}

/// Convert a numpy array (any numeric dtype) to a tensor of `dtype`.
/// Booleans and integers are accepted as data; objects and strings are refused.
pub fn from_array_like(py: Python<'_>, obj: &Bound<'_, PyAny>, dtype: DType) -> PyResult<Tensor> {
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
        DType::F32 => from_numpy_typed::<f32>(arr.cast::<PyArrayDyn<f32>>()?),
        DType::F64 => from_numpy_typed::<f64>(arr.cast::<PyArrayDyn<f64>>()?),
    }
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
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| PyValueError::new_err(format!("{op}: negative dimension {d} in {v:?}"))))
        .collect()
}
