//! Fused optimiser updates: one call applies a rule chain to every parameter of a model.
//!
//! Each rule of the core's registry is a class here, `_core.Adam(eta=..., beta=...,
//! epsilon=...)`, generated from the registry and extending `NativeRule`, which holds the
//! core rule: built once from keyword arguments, read (never parsed) by every update.

use fluxrs_core::optim::{self, Kind, ParamState, Rule, Value, RULES};
use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{run, to_py};
use crate::tensor::PyTensor;

/// A built-in rule of the fused kernel: the base of `_core.Adam` and the other rules.
#[pyclass(module = "fluxrs._core", subclass, frozen)]
pub struct NativeRule {
    pub(crate) rule: Rule,
}

fn value_to_py<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Real(v) => v.into_pyobject(py)?.into_any(),
        Value::Pair(a, b) => PyTuple::new(py, [a, b])?.into_any(),
        Value::Flag(v) => v.into_pyobject(py)?.to_owned().into_any(),
        Value::Count(v) => v.into_pyobject(py)?.into_any(),
    })
}

#[pymethods]
impl NativeRule {
    /// The rule's name (Optimisers.jl's).
    #[getter]
    fn name(&self) -> &'static str {
        self.rule.name()
    }

    /// The hyperparameters, by name.
    fn hyper<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for ((f, _), v) in RULES[self.rule.index()].fields.iter().zip(self.rule.values()) {
            d.set_item(f, value_to_py(py, v)?)?;
        }
        Ok(d)
    }

    /// The names of its state for one parameter: `(arrays, scalars)`, in `OptState`'s order.
    #[getter]
    fn state_names(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        let s = self.rule.init();
        (s.arrays.iter().map(|a| a.0).collect(), s.scalars.iter().map(|a| a.0).collect())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<NativeRule>().is_ok_and(|o| o.get().rule == self.rule)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let parts: Vec<String> = self.hyper(py)?.iter().map(|(k, v)| Ok(format!("{k}={}", v.repr()?))).collect::<PyResult<_>>()?;
        Ok(format!("{}({})", self.rule.name(), parts.join(", ")))
    }
}

/// The rule `name` from keyword arguments, one per field, converted by kind.
fn build(name: &str, fields: &[(&str, Kind)], kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<NativeRule> {
    let names = || fields.iter().map(|f| f.0).collect::<Vec<_>>().join(", ");
    let mut values = Vec::with_capacity(fields.len());
    for &(f, kind) in fields {
        let v = match kwargs {
            Some(k) => k.get_item(f)?,
            None => None,
        };
        let v = v.ok_or_else(|| PyTypeError::new_err(format!("{name}: missing hyperparameter {f} (it takes {})", names())))?;
        let wrong = |e: PyErr| PyTypeError::new_err(format!("{name}: hyperparameter {f}: {e}"));
        values.push(match kind {
            Kind::Real => Value::Real(v.extract().map_err(wrong)?),
            Kind::Pair => {
                let (a, b): (f64, f64) = v.extract().map_err(wrong)?;
                Value::Pair(a, b)
            }
            Kind::Flag => Value::Flag(v.extract().map_err(wrong)?),
            Kind::Count => Value::Count(v.extract().map_err(wrong)?),
        });
    }
    if let Some(k) = kwargs {
        if k.len() > fields.len() {
            let extra: Vec<String> = k.keys().iter().map(|key| key.to_string()).filter(|key| !fields.iter().any(|f| f.0 == key)).collect();
            return Err(PyTypeError::new_err(format!("{name} has no hyperparameter {}; it has {}", extra.join(", "), names())));
        }
    }
    Ok(NativeRule { rule: Rule::from_values(name, &values).map_err(to_py)? })
}

/// One class per rule of the core's registry.
macro_rules! py_rules {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("The core's ", stringify!($name), ", from its hyperparameters by keyword (see `fields`).")]
            #[pyclass(module = "fluxrs._core", extends = NativeRule, frozen)]
            pub struct $name;

            #[pymethods]
            impl $name {
                #[new]
                #[pyo3(signature = (**kwargs))]
                fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<PyClassInitializer<$name>> {
                    let base = build(stringify!($name), <optim::$name as optim::Hyper>::FIELDS, kwargs)?;
                    Ok(PyClassInitializer::from(base).add_subclass($name))
                }

                /// The hyperparameters' names, in Optimisers.jl's order.
                #[classattr]
                fn fields() -> Vec<&'static str> {
                    <optim::$name as optim::Hyper>::FIELDS.iter().map(|f| f.0).collect()
                }
            }
        )*

        /// Adds every rule's class, and `RULES`, their names in registry order.
        pub(crate) fn add_rules(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add_class::<NativeRule>()?;
            $(m.add_class::<$name>()?;)*
            m.add("RULES", vec![$(stringify!($name)),*])
        }
    };
}

mod classes {
    use super::*;
    fluxrs_core::for_each_rule!(py_rules);
}
pub(crate) use classes::add_rules;

/// The core rules of a chain of `NativeRule`s.
pub(crate) fn rules_of(chain: &[PyRef<'_, NativeRule>]) -> Vec<Rule> {
    chain.iter().map(|r| r.rule).collect()
}

/// One parameter's optimiser state (its arrays and scalars, per rule of the chain).
#[pyclass(module = "fluxrs._core", frozen)]
pub struct OptState {
    pub(crate) inner: Mutex<ParamState>,
}

#[pymethods]
impl OptState {
    /// Fresh state for `chain` (a sequence of rules, `NativeRule`s) on a parameter like `x`.
    #[new]
    fn new(chain: Vec<PyRef<'_, NativeRule>>, x: PyRef<'_, PyTensor>) -> OptState {
        OptState { inner: Mutex::new(ParamState::init(&rules_of(&chain), &x.inner)) }
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
    chain: Vec<PyRef<'_, NativeRule>>,
    xs: Vec<PyRef<'_, PyTensor>>,
    dxs: Vec<PyRef<'_, PyTensor>>,
    states: Vec<PyRef<'_, OptState>>,
) -> PyResult<()> {
    let rules = rules_of(&chain);
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
    chain: Vec<PyRef<'_, NativeRule>>,
    xs: Vec<PyRef<'_, PyTensor>>,
    states: Vec<PyRef<'_, OptState>>,
) -> PyResult<Option<Vec<Option<PyTensor>>>> {
    let rules = rules_of(&chain);
    let root = root.inner.clone();
    let xs: Vec<_> = xs.iter().map(|t| t.inner.clone()).collect();
    let states: Vec<&OptState> = states.iter().map(|s| &**s).collect();
    let left = run(py, move || with_locked(&states, |refs| optim::grad_update(&root, &rules, &xs, refs)))?;
    Ok(left.map(|gs| gs.into_iter().map(|g| g.map(PyTensor::wrap)).collect()))
}
