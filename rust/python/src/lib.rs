//! pyo3 bindings for fluxrs-core, built by maturin into `fluxrs._core`.
//! This crate converts, validates, maps errors and releases the GIL; the math is in the core.

mod convert;
mod dlpack;
mod errors;
mod gil;
mod nn;
mod optim;
mod tensor;
mod trace;

use fluxrs_core::{backprop, Tensor};
use pyo3::prelude::*;

use crate::convert::{parse_dtype, sizes};
use crate::errors::{run, run_sized};
use crate::tensor::PyTensor;

// Tensor buffers are large and short-lived (a step allocates and frees the same sizes again
// and again): mimalloc reuses them, where glibc's malloc unmapped them and page-faulted them
// back in on every step. Only Rust allocations go through it; Python keeps its own. mimalloc 3
// keeps freed pages 1 s before returning them (mimalloc 2: 10 ms, shorter than a wide model's step).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn unwrap_all(ts: &[PyRef<'_, PyTensor>]) -> Vec<Tensor> {
    ts.iter().map(|t| t.inner.clone()).collect()
}

/// Gradients of `root` w.r.t. each of `leaves` (None where it does not depend on one).
/// `seed` is the incoming gradient (ones for a scalar root when omitted). `on_final(i, g)`,
/// when given, is called during the backward pass as soon as leaf i's gradient g is final;
/// the pass runs without the GIL and takes it only for these calls. An exception raised by
/// `on_final` stops the pass and propagates unchanged.
#[pyfunction]
#[pyo3(signature = (root, leaves, seed = None, on_final = None))]
fn grad(
    py: Python<'_>,
    root: PyRef<'_, PyTensor>,
    leaves: Vec<PyRef<'_, PyTensor>>,
    seed: Option<PyRef<'_, PyTensor>>,
    on_final: Option<Py<PyAny>>,
) -> PyResult<Vec<Option<PyTensor>>> {
    let root = root.inner.clone();
    let leaves = unwrap_all(&leaves);
    let seed = seed.map(|s| s.inner.clone());
    let Some(cb) = on_final else {
        let gs = run(py, move || fluxrs_core::grad(&root, &leaves, seed.as_ref()))?;
        return Ok(gs.into_iter().map(|g| g.map(PyTensor::wrap)).collect());
    };
    // The callback's exception is kept here and raised instead of the core's error that
    // stopped the pass.
    let (gs, raised) = run(py, move || {
        let mut raised: Option<PyErr> = None;
        let mut call = |i: usize, g: &Tensor| {
            Python::attach(|py| cb.call1(py, (i, PyTensor::wrap(g.clone())))).map(drop).map_err(|e| {
                raised = Some(e);
                fluxrs_core::Error::Value { op: "grad", msg: "the on_final callback raised".into() }
            })
        };
        match fluxrs_core::grad_with(&root, &leaves, seed.as_ref(), Some(&mut call)) {
            Ok(gs) => Ok((gs, None)),
            Err(e) => match raised {
                Some(err) => Ok((vec![], Some(err))),
                None => Err(e),
            },
        }
    })?;
    if let Some(e) = raised {
        return Err(e);
    }
    Ok(gs.into_iter().map(|g| g.map(PyTensor::wrap)).collect())
}

/// Open a differentiation context on this thread: ops touching `tensors` record from now on.
/// With `context=False` they record inside the context already open, which `watch_depth`
/// goes on counting alone (a recorded trace's data).
#[pyfunction]
#[pyo3(signature = (tensors, context = true))]
fn push_watch(tensors: Vec<PyRef<'_, PyTensor>>, context: bool) {
    let ts = unwrap_all(&tensors);
    if context {
        fluxrs_core::push_watch(&ts);
    } else {
        backprop::push_record_watch(&ts);
    }
}

/// Close the innermost `push_watch` on this thread.
#[pyfunction]
fn pop_watch() {
    fluxrs_core::pop_watch();
}

#[pyfunction]
fn watch_depth() -> usize {
    backprop::watch_depth()
}

#[pyfunction]
fn is_recording() -> bool {
    backprop::is_recording()
}

/// Holds recording off on this thread while alive; `fluxrs.no_grad` wraps it.
#[pyclass(unsendable)]
struct NoGrad(Option<backprop::NoGradGuard>);

#[pymethods]
impl NoGrad {
    #[new]
    fn new() -> NoGrad {
        NoGrad(None)
    }
    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyRefMut<'_, Self> {
        slf.0 = Some(backprop::NoGradGuard::new());
        slf
    }
    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.0 = None;
        false
    }
}

#[pyfunction]
#[pyo3(signature = (tensors, axis = 0))]
fn concat(py: Python<'_>, tensors: Vec<PyRef<'_, PyTensor>>, axis: isize) -> PyResult<PyTensor> {
    let ts = unwrap_all(&tensors);
    run(py, move || Tensor::concat(&ts, axis)).map(PyTensor::wrap)
}

#[pyfunction]
#[pyo3(signature = (tensors, axis = 0))]
fn stack(py: Python<'_>, tensors: Vec<PyRef<'_, PyTensor>>, axis: isize) -> PyResult<PyTensor> {
    let ts = unwrap_all(&tensors);
    run(py, move || Tensor::stack(&ts, axis)).map(PyTensor::wrap)
}

/// `a` where `cond` is nonzero else `b` (tensors of one dtype, broadcast together).
#[pyfunction]
#[pyo3(name = "where")]
fn where_(py: Python<'_>, cond: PyRef<'_, PyTensor>, a: PyRef<'_, PyTensor>, b: PyRef<'_, PyTensor>) -> PyResult<PyTensor> {
    let (c, a, b) = (cond.inner.clone(), a.inner.clone(), b.inner.clone());
    run(py, move || Tensor::where_(&c, &a, &b)).map(PyTensor::wrap)
}

#[pyfunction]
#[pyo3(signature = (shape, value, dtype = "float32"))]
fn full(py: Python<'_>, shape: Vec<isize>, value: f64, dtype: &str) -> PyResult<PyTensor> {
    let (shape, dtype) = (sizes("full", &shape)?, parse_dtype(dtype)?);
    run(py, move || {
        let n = fluxrs_core::layout::checked_numel("full", &shape)?;
        fluxrs_core::layout::check_alloc("full", n, dtype.size())?;
        Ok(Tensor::full(&shape, value, dtype))
    })
    .map(PyTensor::wrap)
}

/// Host data (a numpy array, a list, a number, a tensor) as a tensor of `like`'s dtype on
/// `like`'s device: the input conversion of every layer and loss, in one call. `lend`: a
/// numpy array the caller only reads may be used in place (`convert::lend_numpy`).
#[pyfunction]
#[pyo3(signature = (data, like, lend = false))]
fn host_like(py: Python<'_>, data: &Bound<'_, PyAny>, like: PyRef<'_, PyTensor>, lend: bool) -> PyResult<PyTensor> {
    let (dtype, device) = (like.inner.dtype(), like.inner.device());
    if lend && device == fluxrs_core::Device::Cpu {
        if let Some(t) = convert::lend_numpy(data, dtype) {
            return Ok(PyTensor::wrap(t));
        }
    }
    let t = match data.cast::<PyTensor>() {
        Ok(t) if t.get().inner.dtype() == dtype => t.get().inner.clone(),
        Ok(t) => {
            let t = t.get().inner.clone();
            run(py, move || t.cast(dtype))?
        }
        Err(_) => convert::from_array_like(py, data, dtype)?,
    };
    if t.device() == device {
        return Ok(PyTensor::wrap(t));
    }
    run(py, move || t.to_device(device)).map(PyTensor::wrap)
}

/// The GPU adapter in use ("name (backend, type)"), opening it on first call. Raises
/// RuntimeError when this build has no GPU backend or no adapter is found.
#[pyfunction]
fn gpu_info(py: Python<'_>) -> PyResult<String> {
    errors::run(py, fluxrs_core::device::gpu_info)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()?;
    m.add("GPU_COMPILED", fluxrs_core::device::GPU_COMPILED)?;
    // the activations `dense` and `conv` fuse, from the enum their kernels dispatch on
    m.add("FUSED_ACTIVATIONS", pyo3::types::PyTuple::new(m.py(), fluxrs_core::ops::nn::Act::names())?)?;
    m.add_function(wrap_pyfunction!(gpu_info, m)?)?;
    m.add_class::<NoGrad>()?;
    m.add_class::<optim::OptState>()?;
    optim::add_rules(m)?;
    m.add_function(wrap_pyfunction!(optim::optim_update, m)?)?;
    m.add_function(wrap_pyfunction!(optim::grad_update, m)?)?;
    m.add_class::<trace::Trace>()?;
    m.add_function(wrap_pyfunction!(trace::tensor_mark, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::value_reads, m)?)?;
    m.add_function(wrap_pyfunction!(sq_err, m)?)?;
    m.add_function(wrap_pyfunction!(grad, m)?)?;
    m.add_function(wrap_pyfunction!(push_watch, m)?)?;
    m.add_function(wrap_pyfunction!(pop_watch, m)?)?;
    m.add_function(wrap_pyfunction!(watch_depth, m)?)?;
    m.add_function(wrap_pyfunction!(is_recording, m)?)?;
    m.add_function(wrap_pyfunction!(concat, m)?)?;
    m.add_function(wrap_pyfunction!(stack, m)?)?;
    m.add_function(wrap_pyfunction!(where_, m)?)?;
    m.add_function(wrap_pyfunction!(full, m)?)?;
    m.add_function(wrap_pyfunction!(host_like, m)?)?;
    m.add_function(wrap_pyfunction!(dlpack::from_dlpack_capsule, m)?)?;
    m.add_function(wrap_pyfunction!(dense, m)?)?;
    m.add_function(wrap_pyfunction!(gru_sequence, m)?)?;
    m.add_function(wrap_pyfunction!(lstm_sequence, m)?)?;
    m.add_function(wrap_pyfunction!(rnn_sequence, m)?)?;
    m.add_function(wrap_pyfunction!(nn::conv, m)?)?;
    m.add_function(wrap_pyfunction!(nn::conv_transpose, m)?)?;
    m.add_function(wrap_pyfunction!(nn::maxpool, m)?)?;
    m.add_function(wrap_pyfunction!(nn::meanpool, m)?)?;
    Ok(())
}

/// act(x @ w.T + b) in one fused kernel; x may be one vector `(in,)` or a batch `(..., in)`.
#[pyfunction]
#[pyo3(signature = (x, w, b = None, act = "identity"))]
fn dense(py: Python<'_>, x: PyRef<'_, PyTensor>, w: PyRef<'_, PyTensor>, b: Option<PyRef<'_, PyTensor>>, act: &str) -> PyResult<PyTensor> {
    let act = nn::act_arg("dense", act)?;
    let (x, w, b) = (x.inner.clone(), w.inner.clone(), b.map(|b| b.inner.clone()));
    let work = x.numel() * w.shape().first().copied().unwrap_or(0);
    run_sized(py, work, move || {
        let lead: Vec<usize> = x.shape()[..x.ndim().saturating_sub(1)].to_vec();
        let k = x.shape().last().copied().unwrap_or(0);
        let x2 = if x.ndim() == 2 { x.clone() } else { x.reshape(&[lead.iter().product(), k])? };
        let y = Tensor::dense(&x2, &w, b.as_ref(), act)?;
        if x.ndim() == 2 {
            return Ok(y);
        }
        let mut s = lead;
        s.push(w.shape()[0]);
        y.reshape(&s)
    })
    .map(PyTensor::wrap)
}

/// The squared-error loss `mean((yhat - y)²)` (`sum` when `mean` is false) as one op; shapes must match.
#[pyfunction]
fn sq_err(py: Python<'_>, yhat: PyRef<'_, PyTensor>, y: PyRef<'_, PyTensor>, mean: bool) -> PyResult<PyTensor> {
    let (a, b) = (yhat.inner.clone(), y.inner.clone());
    run_sized(py, a.numel(), move || a.sq_err(&b, mean)).map(PyTensor::wrap)
}

/// All hidden states of a GRU over `gx = x @ Wi.T + b` `(N, T, 3H)`, recurrent weight
/// `wh` `(3H, H)`, initial state `h0` `(N, H)` (zeros when None): the whole sequence in one call.
#[pyfunction]
#[pyo3(signature = (gx, wh, h0 = None))]
fn gru_sequence(py: Python<'_>, gx: PyRef<'_, PyTensor>, wh: PyRef<'_, PyTensor>, h0: Option<PyRef<'_, PyTensor>>) -> PyResult<PyTensor> {
    let (gx, wh, h0) = (gx.inner.clone(), wh.inner.clone(), h0.map(|h| h.inner.clone()));
    run(py, move || Tensor::gru_sequence(&gx, &wh, h0.as_ref())).map(PyTensor::wrap)
}

/// Both state sequences of an LSTM over `gx = x @ Wi.T + b` `(N, T, 4H)`, recurrent weight
/// `wh` `(4H, H)`, initial state `h0`, `c0` `(N, H)` (both, or neither for zeros), as one
/// tensor `(2, N, T, H)`: h, then c. The whole sequence in one call.
#[pyfunction]
#[pyo3(signature = (gx, wh, h0 = None, c0 = None))]
fn lstm_sequence(
    py: Python<'_>,
    gx: PyRef<'_, PyTensor>,
    wh: PyRef<'_, PyTensor>,
    h0: Option<PyRef<'_, PyTensor>>,
    c0: Option<PyRef<'_, PyTensor>>,
) -> PyResult<PyTensor> {
    let state = match (h0, c0) {
        (Some(h0), Some(c0)) => Some((h0.inner.clone(), c0.inner.clone())),
        (None, None) => None,
        _ => return Err(pyo3::exceptions::PyValueError::new_err("lstm_sequence: give both initial states h0 and c0, or neither")),
    };
    let (gx, wh) = (gx.inner.clone(), wh.inner.clone());
    run(py, move || Tensor::lstm_sequence(&gx, &wh, state.as_ref().map(|(h, c)| (h, c)))).map(PyTensor::wrap)
}

/// All hidden states of an RNN `h' = act(gx + h @ wh.T)` over `gx = x @ Wi.T + b`
/// `(N, T, H)`, recurrent weight `wh` `(H, H)`, initial state `h0` `(N, H)` (zeros when
/// None), act one of identity, relu, sigmoid, tanh: the whole sequence in one call.
#[pyfunction]
#[pyo3(signature = (gx, wh, h0 = None, act = "tanh"))]
fn rnn_sequence(py: Python<'_>, gx: PyRef<'_, PyTensor>, wh: PyRef<'_, PyTensor>, h0: Option<PyRef<'_, PyTensor>>, act: &str) -> PyResult<PyTensor> {
    let act = fluxrs_core::ops::nn::Act::from_name(act)
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("rnn_sequence: unsupported fused activation {act:?}")))?;
    let (gx, wh, h0) = (gx.inner.clone(), wh.inner.clone(), h0.map(|h| h.inner.clone()));
    run(py, move || Tensor::rnn_sequence(&gx, &wh, h0.as_ref(), act)).map(PyTensor::wrap)
}
