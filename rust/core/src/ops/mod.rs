//! Ops, one family per file. Each op has its forward kernel and its backward rule side by
//! side; backward rules are written with differentiable ops so they can be differentiated
//! again. Kernels run serially below `PAR_THRESHOLD` elements: rayon's fork/join costs
//! more than it saves on the small tensors of small models.

pub mod binary;
pub mod compare;
pub mod conv;
mod dot_gemm;
pub mod loss;
pub mod matmul;
pub mod nn;
pub mod pool;
pub mod reduce;
pub mod rnn;
pub mod shape;
pub mod softmax;
pub mod unary;

pub use binary::BinaryOp;
pub use unary::UnaryOp;

/// Elements above which elementwise kernels use rayon.
pub const PAR_THRESHOLD: usize = 1 << 16;
