//! Core errors and panics become Python exceptions here, and nowhere else.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fluxrs_core::Error;
use pyo3::exceptions::{PyIndexError, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Shape { .. } | Error::Axis { .. } | Error::Value { .. } | Error::Autodiff(_) => PyValueError::new_err(msg),
        Error::DType { .. } => PyTypeError::new_err(msg),
        Error::Index { .. } => PyIndexError::new_err(msg),
        Error::Memory { .. } => PyMemoryError::new_err(msg),
        // PyTorch raises RuntimeError for device mismatches; users catch that.
        Error::Device { .. } => PyRuntimeError::new_err(msg),
    }
}

/// Work (elements touched, or multiply-adds) below which `run_sized` keeps the GIL: about a
/// microsecond of compute. Releasing it costs little alone, but with two threads training,
/// every release of a tiny op hands the GIL over and back (a futex wake-up each way, several
/// microseconds on a VM), which cost more than the op itself and capped two threads at 1.25x.
pub const DETACH_MIN_WORK: usize = 1 << 14;

/// Run core work with the GIL released, turning errors and panics into Python exceptions.
/// A panic is a bug in the core, but it must surface as an exception, never an abort.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> fluxrs_core::Result<T> + Send) -> PyResult<T> {
    convert(crate::gil::detach(py, || catch_unwind(AssertUnwindSafe(f))))
}

/// `run` for work whose size is known: the GIL is released only when `work` is at least
/// `DETACH_MIN_WORK` (views, scalars and small elementwise ops keep it).
pub fn run_sized<T: Send>(py: Python<'_>, work: usize, f: impl FnOnce() -> fluxrs_core::Result<T> + Send) -> PyResult<T> {
    if work >= DETACH_MIN_WORK {
        run(py, f)
    } else {
        convert(catch_unwind(AssertUnwindSafe(f)))
    }
}

fn convert<T>(r: std::thread::Result<fluxrs_core::Result<T>>) -> PyResult<T> {
    match r {
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
