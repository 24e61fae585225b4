//! Ops, one family per file. Each op has its forward kernel and its backward rule side by
//! side; backward rules are written with differentiable ops so they can be differentiated
//! again. Kernels run serially below `PAR_THRESHOLD` elements: rayon's fork/join costs
//! more than it saves on the small tensors of small models.

/// Declares an op enum from one table, each variant beside its name and its expression in
/// the GPU's elementwise kernel (WGSL over the operand names that kernel documents). The
/// enum, `name`, `code` (the variant's place in the table, which is its case in the kernel's
/// generated switch), `TABLE` and `every` all come from the table, so adding an op is one
/// line here plus its CPU kernel, and no number is written twice.
macro_rules! op_table {
    ($(#[$m:meta])* pub enum $enum:ident {
        $($(#[$vm:meta])* $v:ident $(($($t:ty),*))? = $name:literal => $wgsl:literal,)*
    }) => {
        $(#[$m])*
        pub enum $enum {
            $($(#[$vm])* $v $(($($t),*))?),*
        }

        impl $enum {
            /// (name, WGSL expression) of every op, in `code` order.
            pub const TABLE: &'static [(&'static str, &'static str)] = &[$(($name, $wgsl)),*];

            pub fn name(self) -> &'static str {
                Self::TABLE[self.code() as usize].0
            }

            /// Its place in `TABLE`: its case in the GPU kernel's switch.
            pub fn code(self) -> u32 {
                #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
                enum Code {
                    $($v),*
                }
                match self {
                    $($enum::$v { .. } => Code::$v as u32),*
                }
            }

            /// One op of each variant (parameters zero), in `code` order.
            pub fn every() -> Vec<$enum> {
                vec![$($enum::$v $(($(<$t>::default()),*))?),*]
            }
        }
    };
}

pub mod binary;
pub mod compare;
pub mod conv;
mod dot_gemm;
#[cfg(test)]
mod gradcheck;
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
