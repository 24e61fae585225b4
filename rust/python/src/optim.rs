//! Fused optimiser updates: one call applies a rule chain to every parameter of a model.

use fluxrs_core::optim::{self, ParamState, Rule};
use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::errors::{run, to_py};
use crate::tensor::PyTensor;

pub(crate) fn parse_chain(chain: &[(String, Vec<f64>)]) -> PyResult<Vec<Rule>> {
    chain.iter().map(|(n, p)| Rule::from_name(n, p).map_err(to_py)).collect()
}

/// One parameter's optimiser state (its arrays and scalars, per rule of the chain).
#[pyclass(module = "fluxrs._core", frozen)]
pub struct OptState {
    pub(crate) inner: Mutex<ParamState>,
}

#[pymethods]
impl OptState {
    /// Fresh state for `chain` (a list of `(rule_name, hyperparameters)`) on a parameter like `x`.
    #[new]
    fn new(chain: Vec<(String, Vec<f64>)>, x: PyRef<'_, PyTensor>) -> PyResult<OptState> {
        let rules = parse_chain(&chain)?;
        Ok(OptState { inner: Mutex::new(ParamState::init(&rules, &x.inner)) })
    }
    /// State arrays, per rule (shared with the optimiser: updates are visible).
    #[getter]
    fn arrays(&self) -> Vec<Vec<PyTensor>> {
        self.inner.lock().arrays.iter().map(|a| a.iter().map(|t| PyTensor::wrap(t.clone())).collect()).collect()
    }
    #[setter]
    fn set_arrays(&self, arrays: Vec<Vec<PyRef<'_, PyTensor>>>) {
        self.inner.lock().arrays = arrays.iter().map(|a| a.iter().map(|t| t.inner.clone()).collect()).collect();
    }
    /// Scalar state (e.g. Adam's running beta powers), per rule.
    #[getter]
    fn scalars(&self) -> Vec<Vec<f64>> {
        self.inner.lock().scalars.clone()
    }
    #[setter]
    fn set_scalars(&self, scalars: Vec<Vec<f64>>) {
        self.inner.lock().scalars = scalars;
    }
}

/// `xs[i] -= chain(dxs[i])` for every parameter, in place, with the GIL released.
#[pyfunction]
pub fn optim_update(
    py: Python<'_>,
    chain: Vec<(String, Vec<f64>)>,
    xs: Vec<PyRef<'_, PyTensor>>,
    dxs: Vec<PyRef<'_, PyTensor>>,
    states: Vec<PyRef<'_, OptState>>,
) -> PyResult<()> {
    let rules = parse_chain(&chain)?;
    let xs: Vec<_> = xs.iter().map(|t| t.inner.clone()).collect();
    let dxs: Vec<_> = dxs.iter().map(|t| t.inner.clone()).collect();
    let states: Vec<&OptState> = states.iter().map(|s| &**s).collect();
    run(py, move || with_locked(&states, |refs| optim::update(&rules, &xs, &dxs, refs)))
}

/// `f` with each parameter's state locked for the call.
pub(crate) fn with_locked<R>(states: &[&OptState], f: impl FnOnce(&mut [&mut ParamState]) -> R) -> R {
    let mut guards: Vec<_> = states.iter().map(|s| s.inner.lock()).collect();
    let mut refs: Vec<&mut ParamState> = guards.iter_mut().map(|g| &mut **g).collect();
    f(&mut refs)
}

/// `train_`'s step after the forward pass: the gradients of `root` w.r.t. `xs`, then
/// `xs[i] -= chain(grad_i)`, in one call with the GIL released throughout (one hand-over
/// per step instead of two, and no gradient tensors handed to Python). Returns None when it
/// updated. When some parameter got no gradient it updates nothing and returns the gradients
/// (None for those) for the caller's general path, which skips them as Optimisers.jl does.
#[pyfunction]
pub fn grad_update(
    py: Python<'_>,
    root: PyRef<'_, PyTensor>,
    chain: Vec<(String, Vec<f64>)>,
    xs: Vec<PyRef<'_, PyTensor>>,
    states: Vec<PyRef<'_, OptState>>,
) -> PyResult<Option<Vec<Option<PyTensor>>>> {
    let rules = parse_chain(&chain)?;
    let root = root.inner.clone();
    let xs: Vec<_> = xs.iter().map(|t| t.inner.clone()).collect();
    let states: Vec<&OptState> = states.iter().map(|s| &**s).collect();
    let left = run(py, move || with_locked(&states, |refs| optim::grad_update(&root, &rules, &xs, refs)))?;
    Ok(left.map(|gs| gs.into_iter().map(|g| g.map(PyTensor::wrap)).collect()))
}
