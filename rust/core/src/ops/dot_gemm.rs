//! Small float32 products whose operands are both contiguous along k (`x @ w^T` for a Dense
//! layer's forward pass: a batch of rows against the weight's rows), computed as blocks of
//! dot products straight from the operands.
//!
//! The gemm crate packs both operands into panels before it multiplies. For a skinny product
//! with a long k (the seed model's first layer: 32 x 32 outputs over k = 784) that packing is
//! a large share of the work, and a block of vector dot products, read as the operands lie,
//! runs such a product faster (AVX2 4 x 3 blocks; AVX-512 4 x 4 blocks, with masked loads for
//! the end of k); wider outputs or short k go gemm's way.
//! Each output's sum runs over k in the same order whatever the shape of the block it falls
//! in, so results do not depend on how a product is split.

use std::sync::OnceLock;

/// Whether a float32 product of this size and layout goes here: both operands contiguous
/// along k, their runs along k a positive stride apart (each given as `(column stride, row
/// stride)`, as `gemm_rm` takes them), k long enough to amortise each output's horizontal
/// sum, few outputs (wider ones reuse gemm's packed panels better), and below gemm's
/// threading threshold.
pub(crate) fn wanted(m: usize, n: usize, k: usize, lhs: (isize, isize), rhs: (isize, isize), serial: bool) -> bool {
    serial && lhs.0 == 1 && lhs.1 > 0 && rhs.1 == 1 && rhs.0 > 0 && k >= 128 && m * n <= 4096 && available()
}

fn available() -> bool {
    kernel().is_some()
}

/// The widest kernel this CPU runs: AVX-512 where it has it (twice the lanes per FMA, and
/// masked loads for the end of k), else AVX2 with FMA; None elsewhere or when
/// `FLUXRS_NO_DOT_GEMM` is set.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kernel {
    Avx2,
    Avx512,
}

fn kernel() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("FLUXRS_NO_DOT_GEMM").is_some() {
                None
            } else if is_x86_feature_detected!("avx512f") && std::env::var_os("FLUXRS_DOT_GEMM_AVX2").is_none() {
                Some(Kernel::Avx512)
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                Some(Kernel::Avx2)
            } else {
                None
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

/// `dst[i*ldd + j] (+)= sum_k a[i*lda + k] * b[j*ldb + k]` for i < m, j < n.
///
/// SAFETY: `wanted` returned true (the CPU has AVX2 and FMA, or AVX-512); `a` covers m rows of k
/// elements lda apart, `b` n rows of k elements ldb apart, `dst` m rows of n elements ldd
/// apart, not overlapping the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_nt(m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, dst: *mut f32, ldd: usize, acc: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises
    unsafe {
        match kernel() {
            Some(Kernel::Avx512) => avx512::dot_nt(m, n, k, a, lda, b, ldb, dst, ldd, acc),
            _ => avx2::dot_nt(m, n, k, a, lda, b, ldb, dst, ldd, acc),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, k, a, lda, b, ldb, dst, ldd, acc);
        unreachable!("dot_gemm::wanted is false off x86_64")
    }
}

/// Walks the m x n output in R x S blocks: `block` gets the R rows of `a` and the S rows of
/// `b` one block reads and returns their R x S dot products; only the real outputs are
/// stored (added to `dst` when `acc`). Rows past the edge repeat the last real row, so every
/// read stays inside the operands. Inlined into each kernel, so `block` runs with the
/// kernel's instruction set.
///
/// SAFETY: as `dot_nt`'s caller promises.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn blocks<const R: usize, const S: usize>(
    m: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    dst: *mut f32,
    ldd: usize,
    acc: bool,
    mut block: impl FnMut(&[*const f32; R], &[*const f32; S]) -> [[f32; S]; R],
) {
    for i in (0..m).step_by(R) {
        let mi = (m - i).min(R);
        let ap: [*const f32; R] = std::array::from_fn(|r| unsafe { a.add((i + r.min(mi - 1)) * lda) });
        for j in (0..n).step_by(S) {
            let nj = (n - j).min(S);
            let bp: [*const f32; S] = std::array::from_fn(|s| unsafe { b.add((j + s.min(nj - 1)) * ldb) });
            let c = block(&ap, &bp);
            for (r, cr) in c.iter().enumerate().take(mi) {
                for (s, &v) in cr.iter().enumerate().take(nj) {
                    // SAFETY: output (i + r, j + s) is inside dst (r < mi, s < nj)
                    unsafe {
                        let d = dst.add((i + r) * ldd + j + s);
                        *d = if acc { *d + v } else { v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Rows of `a` and of `b` per block: 12 accumulators, 3 loaded rows of b and one of a
    /// fill the 16 vector registers.
    const R: usize = 4;
    const S: usize = 3;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics, AVX2 enabled by the caller
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_nt(m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, dst: *mut f32, ldd: usize, acc: bool) {
        let kv = k / 8 * 8;
        // SAFETY: as the caller promises; the block reads k elements of each row it is given
        unsafe {
            super::blocks::<R, S>(m, n, a, lda, b, ldb, dst, ldd, acc, |ap, bp| {
                let mut c = [[_mm256_setzero_ps(); S]; R];
                for o in (0..kv).step_by(8) {
                    let bv: [__m256; S] = std::array::from_fn(|s| _mm256_loadu_ps(bp[s].add(o)));
                    for (r, cr) in c.iter_mut().enumerate() {
                        let av = _mm256_loadu_ps(ap[r].add(o));
                        for (cs, bs) in cr.iter_mut().zip(&bv) {
                            *cs = _mm256_fmadd_ps(av, *bs, *cs);
                        }
                    }
                }
                // plain loops, not `from_fn` closures: a closure borrowing `c` made the
                // accumulators live in memory, stored back on every FMA of the loop above
                let mut out = [[0.0f32; S]; R];
                for r in 0..R {
                    for s in 0..S {
                        let mut v = hsum(c[r][s]);
                        for t in kv..k {
                            v += *ap[r].add(t) * *bp[s].add(t);
                        }
                        out[r][s] = v;
                    }
                }
                out
            })
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of `a` and of `b` per block: 16 accumulators and 8 loaded rows, so each FMA
    /// needs half a load (the 32 vector registers would hold more, but a 32 x 32 product
    /// then leaves blocks partly empty).
    const R: usize = 4;
    const S: usize = 4;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_nt(m: usize, n: usize, k: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, dst: *mut f32, ldd: usize, acc: bool) {
        let kv = k / 16 * 16;
        // the last k % 16 elements, read with a mask (lanes past k load as zeros)
        let tail: __mmask16 = ((1u32 << (k - kv)) - 1) as __mmask16;
        // SAFETY: as the caller promises; the block reads k elements of each row it is given
        unsafe {
            super::blocks::<R, S>(m, n, a, lda, b, ldb, dst, ldd, acc, |ap, bp| {
                let mut c = [[_mm512_setzero_ps(); S]; R];
                let mut fma = |o: usize, mask: __mmask16| {
                    let bv: [__m512; S] = std::array::from_fn(|s| _mm512_maskz_loadu_ps(mask, bp[s].add(o)));
                    for (r, cr) in c.iter_mut().enumerate() {
                        let av = _mm512_maskz_loadu_ps(mask, ap[r].add(o));
                        for (cs, bs) in cr.iter_mut().zip(&bv) {
                            *cs = _mm512_fmadd_ps(av, *bs, *cs);
                        }
                    }
                };
                for o in (0..kv).step_by(16) {
                    fma(o, !0);
                }
                if kv < k {
                    fma(kv, tail);
                }
                let mut out = [[0.0f32; S]; R];
                for r in 0..R {
                    for s in 0..S {
                        out[r][s] = _mm512_reduce_add_ps(c[r][s]);
                    }
                }
                out
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| a[i * k + t] as f64 * b[j * k + t] as f64).sum();
            }
        }
        out
    }

    /// The kernels this CPU can run, each called directly (not only the one `kernel` picks).
    #[allow(clippy::type_complexity)]
    fn kernels() -> Vec<(&'static str, unsafe fn(usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize, bool))> {
        let mut out: Vec<(&'static str, unsafe fn(usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize, bool))> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(("avx2", avx2::dot_nt));
            }
            if is_x86_feature_detected!("avx512f") {
                out.push(("avx512", avx512::dot_nt));
            }
        }
        out
    }

    #[test]
    fn blocks_and_edges_match_a_float64_reference() {
        // every remainder of the blocks and of the k loops (8- and 16-wide), accumulating or not
        for (name, dot) in kernels() {
            for (m, n, k) in [(1, 1, 1), (5, 7, 130), (4, 3, 8), (9, 11, 201), (32, 32, 784), (6, 5, 15), (3, 9, 16), (7, 2, 17)] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
                let b: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
                let want = naive(m, n, k, &a, &b);
                for acc in [false, true] {
                    // a destination wider than n (ldd > n): the columns past n stay as they were
                    let ldd = n + 2;
                    let mut dst = vec![1.0f32; m * ldd];
                    unsafe { dot(m, n, k, a.as_ptr(), k, b.as_ptr(), k, dst.as_mut_ptr(), ldd, acc) };
                    for i in 0..m {
                        for j in 0..ldd {
                            let got = dst[i * ldd + j] as f64;
                            if j >= n {
                                assert_eq!(got, 1.0);
                                continue;
                            }
                            let w = want[i * n + j] + if acc { 1.0 } else { 0.0 };
                            assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()), "{name} {m}x{n}x{k} acc={acc} at ({i},{j}): {got} vs {w}");
                        }
                    }
                }
            }
        }
    }
}
