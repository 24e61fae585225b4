//! Errors of the core. Every user-reachable failure is one of these, never a panic:
//! the bindings map each kind to the Python exception a user expects.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// Shapes that do not fit together (broadcasting, matmul, reshape, concat...).
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// Mixed or unsupported element types.
    #[error("{op}: {msg}")]
    DType { op: &'static str, msg: String },
    /// An axis outside `-ndim..ndim`.
    #[error("{op}: axis {axis} is out of range for a tensor with {ndim} dimensions")]
    Axis { op: &'static str, axis: isize, ndim: usize },
    /// An index outside a dimension.
    #[error("{op}: index {index} is out of range for dimension {dim} of size {size}")]
    Index { op: &'static str, index: isize, dim: usize, size: usize },
    /// A bad argument value (negative size, zero step...).
    #[error("{op}: {msg}")]
    Value { op: &'static str, msg: String },
    /// A result too large for this machine's memory.
    #[error("{op}: {msg}")]
    Memory { op: &'static str, msg: String },
    /// Operands on different devices, or an op the tensor's device does not run.
    #[error("{op}: {msg}")]
    Device { op: &'static str, msg: String },
    /// Gradient bookkeeping misuse (e.g. backward from a non-scalar).
    #[error("{0}")]
    Autodiff(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, msg: msg.into() })
}

pub(crate) fn value_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Value { op, msg: msg.into() })
}
