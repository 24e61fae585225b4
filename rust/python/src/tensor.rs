//! `fluxrs.Tensor`: the core tensor as a Python class. Arithmetic and math are bound here
//! directly (one crossing per op); ergonomics that need Python (indexing, repr, numpy
//! ufunc dispatch) are delegated to `fluxrs.tensor`.

use std::sync::atomic::{AtomicBool, Ordering};

use fluxrs_core::ops::UnaryOp;
use fluxrs_core::{DType, Device, Tensor};
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};
use pyo3::IntoPyObjectExt;

use crate::convert::{dims, from_array_like, operand, parse_dtype, sizes, to_numpy};
use crate::errors::{run, run_sized};

thread_local! {
    static VALUE_READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts the reads of tensor values into Python (`numpy()`, `item()` and what goes through
/// them: `float()`, `bool()`, `tolist()`, np.asarray) on this thread. A compiled step refuses
/// a loss that reads values while it records: what it read would be frozen into the replay.
fn note_value_read() {
    VALUE_READS.with(|c| c.set(c.get() + 1));
}

/// How many tensor values this thread has read into Python so far (see `note_value_read`).
#[pyfunction]
pub fn value_reads() -> u64 {
    VALUE_READS.with(|c| c.get())
}

#[pyclass(name = "Tensor", module = "fluxrs", frozen, weakref)]
pub struct PyTensor {
    pub inner: Tensor,
}

impl PyTensor {
    pub fn wrap(t: Tensor) -> PyTensor {
        PyTensor { inner: t }
    }
}

static WARNED_F64: AtomicBool = AtomicBool::new(false);

/// float64 data becomes float32 unless asked for; say so once per process, since a
/// silent float64 slowdown is a classic complaint of Flux users.
fn default_dtype(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<DType> {
    if data.cast::<numpy::PyArrayDyn<f32>>().is_ok() {
        return Ok(DType::F32); // the usual batch, without asking for its dtype's name
    }
    let is_f64 = data.getattr("dtype").ok().and_then(|d| d.str().ok().map(|s| s == "float64")).unwrap_or(false);
    if is_f64 && !WARNED_F64.swap(true, Ordering::Relaxed) {
        let warnings = py.import("warnings")?;
        warnings.call_method1(
            "warn",
            (
                "fluxrs converts float64 data to float32 (the default dtype); pass dtype='float64' to keep it. This warning is shown once.",
                py.get_type::<pyo3::exceptions::PyUserWarning>(),
                3,
            ),
        )?;
    }
    Ok(DType::F32)
}

fn py_delegate<'py>(py: Python<'py>, name: &str, args: impl pyo3::call::PyCallArgs<'py>) -> PyResult<Bound<'py, PyAny>> {
    py.import("fluxrs.tensor")?.getattr(name)?.call1(args)
}

fn axes_arg(axis: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<isize>>> {
    match axis {
        None => Ok(None),
        Some(a) if a.is_none() => Ok(None),
        Some(a) => Ok(Some(dims(a)?)),
    }
}

/// Shape arguments given either as `f(2, 3)` or `f((2, 3))`, with one `-1` resolved.
fn shape_args(op: &str, args: &Bound<'_, PyTuple>, numel: usize) -> PyResult<Vec<usize>> {
    let raw: Vec<isize> = if args.len() == 1 { dims(&args.get_item(0)?)? } else { args.extract()? };
    let unknown = raw.iter().filter(|&&d| d == -1).count();
    if unknown > 1 {
        return Err(PyValueError::new_err(format!("{op}: only one dimension can be -1, got {raw:?}")));
    }
    if unknown == 1 {
        let known: usize = raw.iter().filter(|&&d| d != -1).map(|&d| d.max(0) as usize).product();
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(PyValueError::new_err(format!("{op}: cannot reshape {numel} elements into {raw:?}")));
        }
        return sizes(op, &raw.iter().map(|&d| if d == -1 { (numel / known) as isize } else { d }).collect::<Vec<_>>());
    }
    sizes(op, &raw)
}

/// A 0-d tensor takes the other operand's dtype (as a Python number would), so a float64
/// scalar leaf can multiply a float32 weight; any other mix is an error from the core.
fn coerce(a: Tensor, o: Tensor) -> fluxrs_core::Result<(Tensor, Tensor)> {
    if a.dtype() == o.dtype() {
        return Ok((a, o));
    }
    if o.ndim() == 0 {
        let o = o.cast(a.dtype())?;
        return Ok((a, o));
    }
    if a.ndim() == 0 {
        let a = a.cast(o.dtype())?;
        return Ok((a, o));
    }
    Ok((a, o))
}

/// A non-negative integer argument (positions, sizes); anything else is an IndexError naming
/// the op, where pyo3's own conversion would raise OverflowError.
fn index_arg(op: &str, what: &str, v: i128) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| PyIndexError::new_err(format!("{op}: {what} {v} is out of range (expected 0 to {})", usize::MAX)))
}

macro_rules! binary_dunder {
    ($name:ident, $rname:ident, $method:ident) => {
        fn $name(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
            let o = operand(py, other, self.inner.dtype())?;
            let a = self.inner.clone();
            let work = a.numel().max(o.numel());
            run_sized(py, work, move || {
                let (a, o) = coerce(a, o)?;
                a.$method(&o)
            })
            .map(PyTensor::wrap)
        }
        fn $rname(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
            let o = operand(py, other, self.inner.dtype())?;
            let a = self.inner.clone();
            let work = a.numel().max(o.numel());
            run_sized(py, work, move || {
                let (a, o) = coerce(a, o)?;
                o.$method(&a)
            })
            .map(PyTensor::wrap)
        }
    };
}

macro_rules! unary_method {
    ($($name:ident => $op:expr),* $(,)?) => {
        #[pymethods]
        impl PyTensor {
            $(
                fn $name(&self, py: Python<'_>) -> PyResult<PyTensor> {
                    let a = self.inner.clone();
                    run_sized(py, a.numel(), move || a.unary($op)).map(PyTensor::wrap)
                }
            )*
        }
    };
}

unary_method! {
    exp => UnaryOp::Exp, log => UnaryOp::Log, log1p => UnaryOp::Log1p, sqrt => UnaryOp::Sqrt,
    abs => UnaryOp::Abs, tanh => UnaryOp::Tanh, sigmoid => UnaryOp::Sigmoid, relu => UnaryOp::Relu,
    sin => UnaryOp::Sin, cos => UnaryOp::Cos, softplus => UnaryOp::Softplus, sign => UnaryOp::Sign,
    __neg__ => UnaryOp::Neg, __abs__ => UnaryOp::Abs,
}

#[pymethods]
impl PyTensor {
    #[new]
    #[pyo3(signature = (data, dtype = None))]
    fn py_new(py: Python<'_>, data: &Bound<'_, PyAny>, dtype: Option<&str>) -> PyResult<PyTensor> {
        if let Ok(t) = data.cast::<PyTensor>() {
            let t = t.get().inner.clone();
            let d = match dtype {
                Some(d) => parse_dtype(d)?,
                None => t.dtype(),
            };
            return run(py, move || t.cast(d).map(|c| c.detach())).map(PyTensor::wrap);
        }
        let d = match dtype {
            Some(d) => parse_dtype(d)?,
            None => default_dtype(py, data)?,
        };
        from_array_like(py, data, d).map(PyTensor::wrap)
    }

    // ---------- metadata ----------

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.shape())
    }
    #[getter]
    fn ndim(&self) -> usize {
        self.inner.ndim()
    }
    #[getter]
    fn size(&self) -> usize {
        self.inner.numel()
    }
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Read on every layer call (input checks): the two numpy dtypes are made once.
        static F32: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static F64: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let (cell, dt) = match self.inner.dtype() {
            DType::F32 => (&F32, DType::F32),
            DType::F64 => (&F64, DType::F64),
        };
        let d = cell.get_or_try_init(py, || -> PyResult<Py<PyAny>> { Ok(py.import("numpy")?.getattr("dtype")?.call1((dt.name(),))?.unbind()) })?;
        Ok(d.bind(py).clone())
    }
    /// The core's identity of this tensor (stable for its lifetime).
    #[getter]
    fn id(&self) -> u64 {
        self.inner.id().as_u64()
    }
    /// Whether this tensor was produced by a recorded (differentiable) op.
    #[getter]
    fn is_tracked(&self) -> bool {
        self.inner.has_node()
    }
    /// Name of the op that produced this tensor, when recorded.
    #[getter]
    fn op(&self) -> Option<&'static str> {
        self.inner.op_name()
    }
    #[getter]
    fn is_contiguous(&self) -> bool {
        self.inner.is_contiguous()
    }
    /// "cpu" or "gpu".
    #[getter]
    fn device(&self) -> &'static str {
        self.inner.device().name()
    }
    /// A copy on `device` ("cpu" or "gpu"); the tensor itself when it is already there.
    fn to_device(&self, py: Python<'_>, device: &str) -> PyResult<PyTensor> {
        let dev = match device {
            "cpu" => Device::Cpu,
            "gpu" => Device::Gpu,
            other => return Err(PyValueError::new_err(format!("to_device: unknown device {other:?}; expected 'cpu' or 'gpu'"))),
        };
        crate::errors::run(py, || self.inner.to_device(dev)).map(PyTensor::wrap)
    }
    fn __len__(&self) -> PyResult<usize> {
        self.inner.shape().first().copied().ok_or_else(|| PyTypeError::new_err("len() of a 0-d tensor"))
    }
    fn __hash__(&self) -> u64 {
        self.inner.id().as_u64()
    }
    fn same_storage(&self, other: PyRef<'_, PyTensor>) -> bool {
        self.inner.same_storage(&other.inner)
    }

    // ---------- numpy and Python values ----------

    /// A numpy array sharing this tensor's memory (no copy).
    fn numpy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        note_value_read();
        let t = &slf.get().inner;
        if t.device() != Device::Cpu {
            // A read-back into a CPU tensor that the array then views (as Flux's Array(cu)).
            let host = Bound::new(slf.py(), PyTensor::wrap(crate::errors::run(slf.py(), || t.to_device(Device::Cpu))?))?;
            return to_numpy(slf.py(), &host.get().inner.clone(), host.into_any());
        }
        to_numpy(slf.py(), t, slf.clone().into_any())
    }
    #[pyo3(signature = (dtype = None, copy = None))]
    fn __array__<'py>(slf: &Bound<'py, Self>, dtype: Option<&Bound<'py, PyAny>>, copy: Option<bool>) -> PyResult<Bound<'py, PyAny>> {
        let mut a = Self::numpy(slf)?;
        if let Some(d) = dtype {
            if !d.is_none() {
                a = a.call_method1("astype", (d,))?;
            }
        }
        if copy == Some(true) {
            a = a.call_method0("copy")?;
        }
        Ok(a)
    }
    fn tolist<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::numpy(slf)?.call_method0("tolist")
    }
    fn item(&self) -> PyResult<f64> {
        note_value_read();
        self.inner.item().map_err(crate::errors::to_py)
    }
    fn __float__(&self) -> PyResult<f64> {
        self.item()
    }
    fn __int__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // Through Python's float: NaN raises ValueError, infinities OverflowError, and large
        // values become exact big ints, as int(float) does (a Rust `as i64` saturated them).
        pyo3::types::PyFloat::new(py, self.item()?).call_method0("__int__")
    }
    fn __bool__(&self) -> PyResult<bool> {
        if self.inner.numel() != 1 {
            return Err(PyValueError::new_err(format!("the truth value of a tensor with {} elements is ambiguous; use .any() or .all()", self.inner.numel())));
        }
        Ok(self.item()? != 0.0)
    }
    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        py_delegate(slf.py(), "_repr", (slf,))?.extract()
    }
    fn __getitem__<'py>(slf: &Bound<'py, Self>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        py_delegate(slf.py(), "_getitem", (slf, key))
    }
    fn __setitem__(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        py_delegate(slf.py(), "_setitem", (slf, key, value)).map(|_| ())
    }
    #[pyo3(signature = (ufunc, method, *inputs, **kwargs))]
    fn __array_ufunc__<'py>(
        slf: &Bound<'py, Self>,
        ufunc: &Bound<'py, PyAny>,
        method: &Bound<'py, PyAny>,
        inputs: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = slf;
        py_delegate(slf.py(), "_array_ufunc", (ufunc, method, inputs, kwargs))
    }
    #[pyo3(signature = (func, types, args, kwargs))]
    fn __array_function__<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        types: &Bound<'py, PyAny>,
        args: &Bound<'py, PyAny>,
        kwargs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        py_delegate(slf.py(), "_array_function", (func, types, args, kwargs))
    }

    // ---------- arithmetic ----------

    fn __add__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.add_(py, o)
    }
    fn __radd__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.radd_(py, o)
    }
    fn __sub__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.sub_(py, o)
    }
    fn __rsub__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.rsub_(py, o)
    }
    fn __mul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.mul_(py, o)
    }
    fn __rmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.rmul_(py, o)
    }
    fn __truediv__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.div_(py, o)
    }
    fn __rtruediv__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.rdiv_(py, o)
    }
    fn __pow__(&self, py: Python<'_>, o: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<PyTensor> {
        let _ = modulo;
        self.pow_(py, o)
    }
    fn __rpow__(&self, py: Python<'_>, o: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<PyTensor> {
        let _ = modulo;
        self.rpow_(py, o)
    }
    fn __matmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.matmul_(py, o)
    }
    fn __rmatmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.rmatmul_(py, o)
    }
    fn __pos__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __lt__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.lt_(py, o)
    }
    fn __le__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.le_(py, o)
    }
    fn __gt__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.gt_(py, o)
    }
    fn __ge__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.ge_(py, o)
    }
    /// Elementwise equality (a 0/1 mask), as numpy and PyTorch do; identity is `is`.
    fn __eq__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match operand(py, o, self.inner.dtype()) {
            Ok(t) => {
                let a = self.inner.clone();
                PyTensor::wrap(run_sized(py, a.numel(), move || a.eq(&t))?).into_py_any(py)
            }
            Err(_) => Ok(py.NotImplemented()),
        }
    }
    fn __ne__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match operand(py, o, self.inner.dtype()) {
            Ok(t) => {
                let a = self.inner.clone();
                PyTensor::wrap(run_sized(py, a.numel(), move || a.ne(&t))?).into_py_any(py)
            }
            Err(_) => Ok(py.NotImplemented()),
        }
    }
    fn maximum(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.max_(py, o)
    }
    fn minimum(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.min_(py, o)
    }
    fn matmul(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.matmul_(py, o)
    }

    // ---------- parameterised elementwise ----------

    #[pyo3(signature = (min = None, max = None))]
    fn clamp(&self, py: Python<'_>, min: Option<f64>, max: Option<f64>) -> PyResult<PyTensor> {
        let a = self.inner.clone();
        let (lo, hi) = (min.unwrap_or(f64::NEG_INFINITY), max.unwrap_or(f64::INFINITY));
        if lo > hi {
            return Err(PyValueError::new_err(format!("clamp: min ({lo}) is greater than max ({hi})")));
        }
        run_sized(py, a.numel(), move || a.clamp(lo, hi)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (a = 0.01))]
    fn leakyrelu(&self, py: Python<'_>, a: f64) -> PyResult<PyTensor> {
        let t = self.inner.clone();
        run(py, move || t.unary(UnaryOp::LeakyRelu(a))).map(PyTensor::wrap)
    }
    #[pyo3(signature = (a = 1.0))]
    fn elu(&self, py: Python<'_>, a: f64) -> PyResult<PyTensor> {
        let t = self.inner.clone();
        run(py, move || t.unary(UnaryOp::Elu(a))).map(PyTensor::wrap)
    }

    // ---------- reductions ----------

    #[pyo3(signature = (axis = None, keepdims = false))]
    fn sum(&self, py: Python<'_>, axis: Option<&Bound<'_, PyAny>>, keepdims: bool) -> PyResult<PyTensor> {
        let ax = axes_arg(axis)?;
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.sum_axes(ax.as_deref(), keepdims)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = None, keepdims = false))]
    fn mean(&self, py: Python<'_>, axis: Option<&Bound<'_, PyAny>>, keepdims: bool) -> PyResult<PyTensor> {
        let ax = axes_arg(axis)?;
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.mean_axes(ax.as_deref(), keepdims)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = None, keepdims = false))]
    fn max(&self, py: Python<'_>, axis: Option<&Bound<'_, PyAny>>, keepdims: bool) -> PyResult<PyTensor> {
        let ax = axes_arg(axis)?;
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.max_axes(ax.as_deref(), keepdims)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = None, keepdims = false))]
    fn min(&self, py: Python<'_>, axis: Option<&Bound<'_, PyAny>>, keepdims: bool) -> PyResult<PyTensor> {
        let ax = axes_arg(axis)?;
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.min_axes(ax.as_deref(), keepdims)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = None, keepdims = false))]
    fn logsumexp(&self, py: Python<'_>, axis: Option<&Bound<'_, PyAny>>, keepdims: bool) -> PyResult<PyTensor> {
        let ax = axes_arg(axis)?;
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.logsumexp(ax.as_deref(), keepdims)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = -1))]
    fn softmax(&self, py: Python<'_>, axis: isize) -> PyResult<PyTensor> {
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.softmax(axis)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis = -1))]
    fn logsoftmax(&self, py: Python<'_>, axis: isize) -> PyResult<PyTensor> {
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.logsoftmax(axis)).map(PyTensor::wrap)
    }

    // ---------- shape ----------

    #[pyo3(signature = (*shape))]
    fn reshape(&self, py: Python<'_>, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let s = shape_args("reshape", shape, self.inner.numel())?;
        let a = self.inner.clone();
        run_sized(py, 0, move || a.reshape(&s)).map(PyTensor::wrap)
    }
    /// numpy `transpose`: reverse the axes, or apply the given permutation.
    #[pyo3(signature = (*axes))]
    fn transpose(&self, py: Python<'_>, axes: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let perm: Vec<isize> = if axes.is_empty() {
            (0..self.inner.ndim() as isize).rev().collect()
        } else if axes.len() == 1 {
            dims(&axes.get_item(0)?)?
        } else {
            axes.extract()?
        };
        let a = self.inner.clone();
        run_sized(py, 0, move || a.permute(&perm)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (*axes))]
    fn permute(&self, py: Python<'_>, axes: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        self.transpose(py, axes)
    }
    fn swapaxes(&self, py: Python<'_>, a: isize, b: isize) -> PyResult<PyTensor> {
        let t = self.inner.clone();
        run_sized(py, 0, move || t.transpose(a, b)).map(PyTensor::wrap)
    }
    #[getter(T)]
    fn t_(&self, py: Python<'_>) -> PyResult<PyTensor> {
        let perm: Vec<isize> = (0..self.inner.ndim() as isize).rev().collect();
        let a = self.inner.clone();
        run_sized(py, 0, move || a.permute(&perm)).map(PyTensor::wrap)
    }
    fn broadcast_to(&self, py: Python<'_>, shape: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let s = sizes("broadcast_to", &dims(shape)?)?;
        let a = self.inner.clone();
        run_sized(py, 0, move || a.broadcast_to(&s)).map(PyTensor::wrap)
    }
    #[pyo3(signature = (axis, start, stop, step = 1))]
    fn slice(&self, py: Python<'_>, axis: isize, start: i128, stop: i128, step: i128) -> PyResult<PyTensor> {
        let (start, stop, step) = (index_arg("slice", "start", start)?, index_arg("slice", "stop", stop)?, index_arg("slice", "step", step)?);
        let a = self.inner.clone();
        run_sized(py, 0, move || a.slice(axis, start, stop, step)).map(PyTensor::wrap)
    }
    fn select(&self, py: Python<'_>, axis: isize, index: i128) -> PyResult<PyTensor> {
        let index = isize::try_from(index).map_err(|_| PyIndexError::new_err(format!("select: index {index} is out of range")))?;
        let a = self.inner.clone();
        run_sized(py, 0, move || a.select(axis, index)).map(PyTensor::wrap)
    }
    fn index_select(&self, py: Python<'_>, axis: isize, indices: Vec<i128>) -> PyResult<PyTensor> {
        let indices = indices.into_iter().map(|i| index_arg("index_select", "index", i)).collect::<PyResult<Vec<usize>>>()?;
        let a = self.inner.clone();
        run(py, move || a.index_select(axis, &indices)).map(PyTensor::wrap)
    }
    fn contiguous(&self, py: Python<'_>) -> PyResult<PyTensor> {
        let a = self.inner.clone();
        run_sized(py, a.numel(), move || a.contiguous()).map(PyTensor::wrap)
    }
    /// The same data cut off from the autodiff graph (shares memory).
    fn detach(&self) -> PyTensor {
        PyTensor::wrap(self.inner.detach())
    }
    /// A copy in `dtype` ('float32' or 'float64'); differentiable.
    fn astype(&self, py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let name: String = match dtype.extract::<String>() {
            Ok(s) => s,
            Err(_) => py.import("numpy")?.getattr("dtype")?.call1((dtype,))?.str()?.extract()?,
        };
        let d = parse_dtype(&name)?;
        let a = self.inner.clone();
        run(py, move || a.cast(d)).map(PyTensor::wrap)
    }
    /// Overwrite the elements in place with `value` (broadcast), unrecorded. Optimisers and
    /// `loadmodel_` use this so that parameters stay the same objects.
    fn assign_(slf: PyRef<'_, Self>, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyTensor>> {
        let v = operand(py, value, slf.inner.dtype())?;
        let a = slf.inner.clone();
        run(py, move || a.assign(&v))?;
        Ok(slf.into())
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }
}

impl PyTensor {
    binary_dunder!(add_, radd_, add);
    binary_dunder!(sub_, rsub_, sub);
    binary_dunder!(mul_, rmul_, mul);
    binary_dunder!(div_, rdiv_, div);
    binary_dunder!(pow_, rpow_, pow);
    binary_dunder!(matmul_, rmatmul_, matmul);
    binary_dunder!(lt_, _rlt, lt);
    binary_dunder!(le_, _rle, le);
    binary_dunder!(gt_, _rgt, gt);
    binary_dunder!(ge_, _rge, ge);
    binary_dunder!(max_, _rmax, maximum);
    binary_dunder!(min_, _rmin, minimum);
}
