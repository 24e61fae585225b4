//! Core errors and panics become Python exceptions here, and nowhere else.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fluxrs_core::Error;
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Shape { .. } | Error::Axis { .. } | Error::Value { .. } | Error::Autodiff(_) => PyValueError::new_err(msg),
        Error::DType { .. } => PyTypeError::new_err(msg),
        Error::Index { .. } => PyIndexError::new_err(msg),
    }
}

/// Run core work with the GIL released, turning errors and panics into Python exceptions.
/// A panic is a bug in the core, but it must surface as an exception, never an abort.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> fluxrs_core::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!("internal error in fluxrs core (please report): {what}")))
        }
    }
}
