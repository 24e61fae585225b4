//! Compiled training steps (`fluxrs_core::trace`): `train_(..., compile=True)` records its
//! first step and replays the rest from one call each, with the GIL released throughout.

use fluxrs_core::trace::{self, Outcome};
use fluxrs_core::{Tensor, TensorId};
use pyo3::prelude::*;

use crate::errors::run;
use crate::optim::{rules_of, with_locked, NativeRule, OptState};
use crate::tensor::PyTensor;

fn inner(ts: &[PyRef<'_, PyTensor>]) -> Vec<Tensor> {
    ts.iter().map(|t| t.inner.clone()).collect()
}

/// The mark to pass to `Trace` for a loss about to be called: tensors made from now on
/// count as made during the call.
#[pyfunction]
pub fn tensor_mark() -> u64 {
    TensorId::mark().as_u64()
}

/// The step that stopped a run of `Trace::steps` without updating: its loss, and the
/// gradients when some parameter got none.
type Stopped = (f64, Option<Vec<Option<PyTensor>>>);

/// A recorded step: the graph behind `root` (the loss), from `params` and `inputs`.
#[pyclass(module = "fluxrs._core", frozen)]
pub struct Trace {
    inner: trace::Trace,
}

#[pymethods]
impl Trace {
    #[new]
    fn new(py: Python<'_>, root: PyRef<'_, PyTensor>, params: Vec<PyRef<'_, PyTensor>>, inputs: Vec<PyRef<'_, PyTensor>>, mark: u64) -> PyResult<Trace> {
        let (root, params, inputs) = (root.inner.clone(), inner(&params), inner(&inputs));
        let inner = run(py, move || trace::Trace::build(&root, &params, &inputs, TensorId::from_u64(mark)))?;
        Ok(Trace { inner })
    }

    /// The recorded forward pass on new `inputs`: the loss, its graph recorded from `params`
    /// (watched for it), so an enclosing `gradient` differentiates it as if the loss had run.
    fn forward(&self, py: Python<'_>, params: Vec<PyRef<'_, PyTensor>>, inputs: Vec<PyRef<'_, PyTensor>>) -> PyResult<PyTensor> {
        let (params, inputs) = (inner(&params), inner(&inputs));
        run(py, move || self.inner.forward(&params, &inputs)).map(PyTensor::wrap)
    }

    /// Whether `inputs` have the shapes and dtypes the trace was recorded with.
    fn matches(&self, inputs: Vec<PyRef<'_, PyTensor>>) -> bool {
        self.inner.matches(&inner(&inputs))
    }

    /// Steps on the batches in turn, each a list of input tensors, with the GIL released
    /// throughout, for as long as they have the recorded shapes and dtypes and update:
    /// `(losses, stop)`. `losses` are those of the steps that updated. `stop` is None, or
    /// the step after them when it updated nothing: `(loss, None)` for a non-finite loss,
    /// `(loss, grads)` when some parameter got no gradient (None for that one).
    fn steps(
        &self,
        py: Python<'_>,
        batches: Vec<Vec<PyRef<'_, PyTensor>>>,
        chain: Vec<PyRef<'_, NativeRule>>,
        xs: Vec<PyRef<'_, PyTensor>>,
        states: Vec<PyRef<'_, OptState>>,
    ) -> PyResult<(Vec<f64>, Option<Stopped>)> {
        let batches: Vec<Vec<Tensor>> = batches.iter().map(|b| inner(b)).collect();
        let rules = rules_of(&chain);
        let xs = inner(&xs);
        let states: Vec<&OptState> = states.iter().map(|s| &**s).collect();
        let (losses, stop) = run(py, move || with_locked(&states, |refs| self.inner.steps(&xs, &batches, &rules, refs)))?;
        Ok((
            losses,
            stop.map(|outcome| match outcome {
                Outcome::Updated(v) | Outcome::NotFinite(v) => (v, None),
                Outcome::Ungraded(v, gs) => (v, Some(gs.into_iter().map(|g| g.map(PyTensor::wrap)).collect())),
            }),
        ))
    }
}
