//! Matrix products on the `gemm` crate (runtime-dispatched SIMD kernels, AVX-512 included),
//! with numpy's `matmul` semantics: 1-D operands are promoted, batch axes broadcast.
//! gemm takes arbitrary row/column strides, so transposed views multiply without a copy.

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::error::{shape_err, Error, Result};
use crate::layout::broadcast_shapes;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

/// How many threads gemm may use for an m*n*k product: rayon's threads above a threshold
/// (FLUXRS_GEMM_PAR_MACS overrides it, for tuning), one below.
pub(crate) fn gemm_par(macs: usize) -> gemm::Parallelism {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let min = *MIN.get_or_init(|| std::env::var("FLUXRS_GEMM_PAR_MACS").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 20));
    let threads = rayon::current_num_threads();
    if macs >= min && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// An operand of `gemm_rm`: (pointer, column stride, row stride), in elements.
pub(crate) type Operand<T> = (*const T, isize, isize);

/// Row strides (in bytes) that are multiples of this alias in the L1 cache (64 sets of 64-byte
/// lines): 64 rows of such a matrix share at most 8 sets, i.e. 64 lines of an 8-way cache.
const ALIASING_STRIDE_BYTES: usize = 512;

/// dst (m x n, row-major, row stride `dst_rs`) = [dst +] lhs (m x k) @ rhs (k x n): the one
/// call into `gemm` of every CPU product.
///
/// With k = 0 the product is zero (gemm would leave an unread destination as it was). A
/// transposed right operand (rhs stored n x k, e.g. a Dense weight read as w^T) whose rows lie
/// a multiple of 512 bytes apart is first copied to rows 64 bytes longer: gemm transposes it
/// into packed panels 64 rows at a time, and rows at such a stride all fall in the same few
/// L1 sets and evict one another. Measured on 256x1024 @ (1024x1024)^T, two threads: 112-117
/// GFLOP/s as is, 186-190 with the copy (784-wide rows: ~195 either way).
///
/// SAFETY: each pointer with its strides must address valid memory for its matrix, and dst
/// must not overlap the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    acc: bool,
    lhs: Operand<T>,
    rhs: Operand<T>,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(T::ZERO);
            }
        }
        return;
    }
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && super::dot_gemm::wanted(m, n, k, (lhs.1, lhs.2), (rhs.1, rhs.2), matches!(par, gemm::Parallelism::None))
    {
        // SAFETY: T is f32; both operands are contiguous along k with positive row strides,
        // as `wanted` requires, and the caller's promises cover the rest.
        unsafe { super::dot_gemm::dot_nt(m, n, k, lhs.0 as *const f32, lhs.2 as usize, rhs.0 as *const f32, rhs.1 as usize, dst as *mut f32, dst_rs, acc) };
        return;
    }
    let elem = std::mem::size_of::<T>();
    let aliasing = rhs.2 == 1 && rhs.1 > 0 && (rhs.1 as usize * elem).is_multiple_of(ALIASING_STRIDE_BYTES) && m >= 32 && n >= 64;
    // Only written and read through raw pointers (its padding never), so it keeps length 0.
    let mut padded: Vec<T> = Vec::new();
    let mut rhs = rhs;
    let ld = k + 64 / elem;
    if let (true, Some(len)) = (aliasing, n.checked_mul(ld)) {
        padded.reserve_exact(len);
        let out = padded.as_mut_ptr();
        for j in 0..n {
            std::ptr::copy_nonoverlapping(rhs.0.offset(j as isize * rhs.1), out.add(j * ld), k);
        }
        rhs = (out, ld as isize, 1);
    }
    gemm::gemm(m, n, k, dst, 1, dst_rs as isize, acc, lhs.0, lhs.1, lhs.2, rhs.0, rhs.1, rhs.2, T::ONE, T::ONE, false, false, false, par);
}

/// Batched product of `a: [B.., m, k]` and `b: [B.., k, n]` with identical batch axes.
fn bmm_kernel<T: Elem>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let nd = a.ndim();
    let (m, k, n) = (a.shape()[nd - 2], a.shape()[nd - 1], b.shape()[nd - 1]);
    let batch: Vec<usize> = a.shape()[..nd - 2].to_vec();
    let nb: usize = batch.iter().product();
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    if k == 0 || m == 0 || n == 0 || nb == 0 {
        return Tensor::from_vec(vec![T::ZERO; nb * m * n], &out_shape);
    }
    let (la, lb) = (a.layout().clone(), b.layout().clone());
    let par = gemm_par(m * n * k);
    let ga = a.0.storage.read_recursive();
    let gb = b.0.storage.read_recursive();
    let (pa, pb) = (T::slice(&ga).as_ptr(), T::slice(&gb).as_ptr());
    let mut idx = vec![0usize; batch.len()];
    // SAFETY: gemm (with k > 0 and its destination not read) writes every element of each
    // m*n block, the blocks tile the output, and the operands are valid views (below).
    let out = unsafe {
        crate::storage::filled_by::<T>(nb * m * n, |out| {
            for bi in 0..nb {
                let mut oa = la.offset as isize;
                let mut ob = lb.offset as isize;
                for (d, &i) in idx.iter().enumerate() {
                    oa += i as isize * la.strides[d];
                    ob += i as isize * lb.strides[d];
                }
                // The offsets and strides come from valid layouts over the locked buffers (see
                // Tensor::with_view); `out` is a fresh m*n block per batch element.
                gemm_rm(
                    m,
                    n,
                    k,
                    out.add(bi * m * n),
                    n,
                    false,
                    (pa.offset(oa), la.strides[nd - 1], la.strides[nd - 2]),
                    (pb.offset(ob), lb.strides[nd - 1], lb.strides[nd - 2]),
                    par,
                );
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < batch[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        })
    };
    drop((ga, gb));
    Tensor::from_vec(out, &out_shape)
}

struct Bmm;
impl BackwardOp for Bmm {
    replay!(|_, i, _| i[0].bmm(&i[1]));
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, inputs: &[Tensor], _o: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga = if need[0] { Some(g.bmm(&b.transpose(-1, -2)?)?) } else { None };
        let gb = if need[1] { Some(a.transpose(-1, -2)?.bmm(g)?) } else { None };
        Ok(vec![ga, gb])
    }
}

impl Tensor {
    /// Product of same-batch operands `[B.., m, k] @ [B.., k, n]`.
    pub(crate) fn bmm(&self, b: &Tensor) -> Result<Tensor> {
        if let Some(be) = backend::common("matmul", &[self, b])? {
            return Ok(record(be.matmul(self, b)?, Bmm, &[self, b]));
        }
        let out = with_dtype!(self.dtype(), T => bmm_kernel::<T>(self, b)?);
        Ok(record(out, Bmm, &[self, b]))
    }

    /// numpy `matmul`.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        crate::ops::binary::check_same_dtype("matmul", self, other)?;
        let (a, b) = (self, other);
        if a.ndim() == 0 || b.ndim() == 0 {
            return shape_err("matmul", format!("operands must have at least one dimension, got shapes {:?} and {:?}", a.shape(), b.shape()));
        }
        let a1 = if a.ndim() == 1 { a.reshape(&[1, a.shape()[0]])? } else { a.clone() };
        let b1 = if b.ndim() == 1 { b.reshape(&[b.shape()[0], 1])? } else { b.clone() };
        let (na, nb) = (a1.ndim(), b1.ndim());
        let (m, k) = (a1.shape()[na - 2], a1.shape()[na - 1]);
        let (k2, n) = (b1.shape()[nb - 2], b1.shape()[nb - 1]);
        if k != k2 {
            return Err(Error::Shape {
                op: "matmul",
                msg: format!("shapes {:?} and {:?} are not aligned: {k} (last axis of the first) != {k2} (second-to-last of the second)", a.shape(), b.shape()),
            });
        }
        let batch = broadcast_shapes("matmul", &a1.shape()[..na - 2], &b1.shape()[..nb - 2])?;
        let mut out = if nb == 2 && na > 2 {
            // [B.., m, k] @ [k, n]: fold the batch into the rows, one gemm and no broadcast copy.
            let rows: usize = batch.iter().product::<usize>() * m;
            let mut s = batch.clone();
            s.extend([m, n]);
            a1.reshape(&[rows, k])?.bmm(&b1)?.reshape(&s)?
        } else {
            let mut sa = batch.clone();
            sa.extend([m, k]);
            let mut sb = batch.clone();
            sb.extend([k, n]);
            a1.broadcast_to(&sa)?.bmm(&b1.broadcast_to(&sb)?)?
        };
        if a.ndim() == 1 || b.ndim() == 1 {
            let mut s = batch;
            if a.ndim() != 1 {
                s.push(m);
            }
            if b.ndim() != 1 {
                s.push(n);
            }
            out = out.reshape(&s)?;
        }
        Ok(out)
    }
}
