//! A whole GRU sequence in one op. Run step by step from Python, a GRU costs ~16 small ops
//! per time step forwards and as many backwards, each a Python->Rust crossing and a
//! recorded node; here the recurrence runs in one loop (a gemm for the recurrent product
//! per step) and backpropagation through time is written out by hand.
//!
//! Flux's GRU (reset gate applied after the recurrent product), with `gx = x Wi^T + b`
//! precomputed for all steps by one dense call:
//!   r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), gh = h Wh^T
//!   c = tanh(gx_c + r ⊙ gh_c),  h' = (1 - z) ⊙ c + z ⊙ h
//! Its backward is not built from differentiable ops: a second derivative through it is
//! refused with an error (the Python layer uses the step-by-step form in that case).

use crate::backprop::{record, replay, BackwardOp};
use crate::error::{shape_err, Error, Result};
use crate::ops::binary::check_same_dtype;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;
use crate::with_dtype;

/// dst (m x n) = [dst +] a (m x k) @ b (k x n), strides in elements (row, column).
#[allow(clippy::too_many_arguments)]
fn mm<T: Elem>(m: usize, n: usize, k: usize, dst: &mut [T], d_rs: usize, acc: bool, a: &[T], a_rs: usize, a_cs: usize, b: &[T], b_rs: usize, b_cs: usize) {
    // SAFETY: callers pass slices that cover every (row, col) reached by these strides.
    unsafe {
        crate::ops::matmul::gemm_rm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d_rs,
            acc,
            (a.as_ptr(), a_cs as isize, a_rs as isize),
            (b.as_ptr(), b_cs as isize, b_rs as isize),
            gemm::Parallelism::None,
        );
    }
}

/// What the backward pass needs from the forward one, per (t, n, unit): time-major, so
/// that each step of the backward sweep reads one contiguous block.
struct Saved<T> {
    r: Vec<T>,
    z: Vec<T>,
    c: Vec<T>,
    ghc: Vec<T>,
}

// The gate loops live in functions of their own: their slice arguments are known not to
// alias (Rust's `&mut` becomes LLVM's noalias), so the loop vectorises without runtime overlap
// checks. Written inline, LLVM added those checks and ran half the work in the scalar fallback.

/// One sample's gates at one step. Inputs: gx (r, z, c), gh (r, z, c), h_prev; outputs:
/// h, and r, z, c, gh_c saved for the backward pass. All slices have length H.
#[inline(always)]
fn gates_forward<T: Elem>(i: [&[T]; 7], o: [&mut [T]; 5]) {
    let h = o[0].len();
    let [gxr, gxz, gxc, ghr, ghz, ghc, hp] = i.map(|v| &v[..h]);
    let [hs, r_o, z_o, c_o, ghc_o] = o.map(|v| &mut v[..h]);
    // One loop per output: few streams each, which LLVM vectorises whole (one fused loop
    // over all twelve streams ran partly scalar).
    for ((r, &a), &b) in r_o.iter_mut().zip(gxr).zip(ghr) {
        *r = (a + b).fast_sigmoid();
    }
    for ((z, &a), &b) in z_o.iter_mut().zip(gxz).zip(ghz) {
        *z = (a + b).fast_sigmoid();
    }
    for (((c, &a), &r), &g) in c_o.iter_mut().zip(gxc).zip(r_o.iter()).zip(ghc) {
        *c = (a + r * g).fast_tanh();
    }
    for (((hn, &c), &z), &p) in hs.iter_mut().zip(c_o.iter()).zip(z_o.iter()).zip(hp) {
        *hn = c + z * (p - c);
    }
    ghc_o.copy_from_slice(ghc);
}

/// One sample's gate gradients at one step. Inputs: dh (from later steps), dh_t (from the
/// output), h_prev, and the saved r, z, c, gh_c; outputs: d gx (r, z, c), d gh (r, z, c),
/// and d h_prev's direct part. All slices have length H.
#[inline(always)]
fn gates_backward<T: Elem>(i: [&[T]; 7], o: [&mut [T]; 7]) {
    let h = o[0].len();
    let [dh, dht, hp, r_s, z_s, c_s, ghc] = i.map(|v| &v[..h]);
    let [dgx_r, dgx_z, dgx_c, dgh_r, dgh_z, dgh_c, dprev] = o.map(|v| &mut v[..h]);
    // Short loops of few streams, as in `gates_forward`. `dprev` holds d = dh + dh_t first.
    for ((d, &a), &b) in dprev.iter_mut().zip(dh).zip(dht) {
        *d = a + b;
    }
    for (((g, &d), &z), &c) in dgx_c.iter_mut().zip(dprev.iter()).zip(z_s).zip(c_s) {
        *g = d * (T::ONE - z) * (T::ONE - c * c);
    }
    for ((((g, &d), &p), &c), &z) in dgx_z.iter_mut().zip(dprev.iter()).zip(hp).zip(c_s).zip(z_s) {
        *g = d * (p - c) * z * (T::ONE - z);
    }
    for (((g, &gc), &q), &r) in dgx_r.iter_mut().zip(dgx_c.iter()).zip(ghc).zip(r_s) {
        *g = gc * q * r * (T::ONE - r);
    }
    for (d, &z) in dprev.iter_mut().zip(z_s) {
        *d *= z;
    }
    dgh_r.copy_from_slice(dgx_r);
    dgh_z.copy_from_slice(dgx_z);
    for ((g, &gc), &r) in dgh_c.iter_mut().zip(dgx_c.iter()).zip(r_s) {
        *g = gc * r;
    }
}

/// The recurrence for one block of samples, writing its hidden states into `hs` `(n, T, H)`.
fn forward<T: Elem>(gx: &[T], wh: &[T], h0: &[T], hs: &mut [T], n: usize, t_len: usize, h: usize) -> Saved<T> {
    let g3 = 3 * h;
    let mut s = Saved { r: vec![T::ZERO; n * t_len * h], z: vec![T::ZERO; n * t_len * h], c: vec![T::ZERO; n * t_len * h], ghc: vec![T::ZERO; n * t_len * h] };
    let mut gh = vec![T::ZERO; n * g3];
    let mut hprev = h0.to_vec();
    for t in 0..t_len {
        // gh = h_prev @ Wh^T: Wh is (3H, H) row-major, so Wh^T(k, j) = wh[j*H + k].
        mm(n, g3, h, &mut gh, g3, false, &hprev, h, 1, wh, 1, h);
        // Gates for every unit at once, vectorised: slices of length h let the bounds checks go.
        simd(
            #[inline(always)]
            || {
                for i in 0..n {
                    let gxo = (i * t_len + t) * g3;
                    let o = (i * t_len + t) * h;
                    let (gxr, gxz, gxc) = (&gx[gxo..gxo + h], &gx[gxo + h..gxo + 2 * h], &gx[gxo + 2 * h..gxo + g3]);
                    let (ghr, ghz, ghcs) = (&gh[i * g3..i * g3 + h], &gh[i * g3 + h..i * g3 + 2 * h], &gh[i * g3 + 2 * h..(i + 1) * g3]);
                    let hp = &hprev[i * h..(i + 1) * h];
                    let so = (t * n + i) * h;
                    let (hs_o, r_o, z_o) = (&mut hs[o..o + h], &mut s.r[so..so + h], &mut s.z[so..so + h]);
                    let (c_o, ghc_o) = (&mut s.c[so..so + h], &mut s.ghc[so..so + h]);
                    gates_forward([gxr, gxz, gxc, ghr, ghz, ghcs, hp], [hs_o, r_o, z_o, c_o, ghc_o]);
                }
            },
        );
        for i in 0..n {
            let o = (i * t_len + t) * h;
            hprev[i * h..(i + 1) * h].copy_from_slice(&hs[o..o + h]);
        }
    }
    s
}

/// Backpropagation through time for one block of samples (all slices cover just its samples).
#[allow(clippy::too_many_arguments)]
/// Writes d gx into `dgx` `(n, T, 3H)`; returns (this block's part of dWh, d h0).
fn backward<T: Elem>(s: &Saved<T>, wh: &[T], h0: &[T], hs: &[T], dhs: &[T], dgx: &mut [T], n: usize, t_len: usize, h: usize) -> (Vec<T>, Vec<T>) {
    let g3 = 3 * h;
    let mut dwh = vec![T::ZERO; g3 * h];
    let mut dh = vec![T::ZERO; n * h]; // gradient flowing into h_t from later steps
    let mut dgh = vec![T::ZERO; n * g3];
    let mut hprev = vec![T::ZERO; n * h];
    let mut dprev = vec![T::ZERO; n * h];
    for t in (0..t_len).rev() {
        for i in 0..n {
            let src = if t == 0 { &h0[i * h..(i + 1) * h] } else { &hs[(i * t_len + t - 1) * h..(i * t_len + t) * h] };
            hprev[i * h..(i + 1) * h].copy_from_slice(src);
        }
        // Vectorised like the forward gates: per sample, slices of length h.
        simd(
            #[inline(always)]
            || {
                for i in 0..n {
                    let o = (i * t_len + t) * h;
                    let gxo = (i * t_len + t) * g3;
                    let (dh_i, dhs_i, hp) = (&dh[i * h..(i + 1) * h], &dhs[o..o + h], &hprev[i * h..(i + 1) * h]);
                    let so = (t * n + i) * h;
                    let (r_i, z_i, c_i, ghc_i) = (&s.r[so..so + h], &s.z[so..so + h], &s.c[so..so + h], &s.ghc[so..so + h]);
                    let (dgx_r, rest) = dgx[gxo..gxo + g3].split_at_mut(h);
                    let (dgx_z, dgx_c) = rest.split_at_mut(h);
                    let (dgh_r, rest) = dgh[i * g3..(i + 1) * g3].split_at_mut(h);
                    let (dgh_z, dgh_c) = rest.split_at_mut(h);
                    let dprev_i = &mut dprev[i * h..(i + 1) * h];
                    gates_backward([dh_i, dhs_i, hp, r_i, z_i, c_i, ghc_i], [dgx_r, dgx_z, dgx_c, dgh_r, dgh_z, dgh_c, dprev_i]);
                }
            },
        );
        // dWh += dgh^T @ h_prev  (3H x N) @ (N x H)
        mm(g3, h, n, &mut dwh, h, true, &dgh, 1, g3, &hprev, h, 1);
        // dh_prev = d*z + dgh @ Wh  (N x 3H) @ (3H x H)
        mm(n, h, g3, &mut dprev, h, true, &dgh, g3, 1, wh, h, 1);
        std::mem::swap(&mut dh, &mut dprev);
    }
    (dwh, dh)
}

/// How many blocks of samples to run in parallel. The samples of a batch never meet in the
/// recurrence (only dWh sums over them), so each block runs the whole sequence on its own
/// thread: one rayon hand-over per call, not one per step (~10 µs each on this VM).
fn nblocks(n: usize, t_len: usize, h: usize) -> usize {
    let macs = n * t_len * 3 * h * h;
    if matches!(crate::ops::matmul::gemm_par(macs), gemm::Parallelism::None) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `n` samples in `k` blocks `(first, count)` of near-equal size (none empty).
fn split(n: usize, k: usize) -> Vec<(usize, usize)> {
    let k = k.clamp(1, n.max(1));
    let (q, r) = (n / k, n % k);
    let mut start = 0;
    (0..k)
        .map(|b| {
            let len = q + usize::from(b < r);
            start += len;
            (start - len, len)
        })
        .collect()
}

/// `v` cut into consecutive chunks of `sizes[i]` elements.
fn carve<T>(mut v: &mut [T], sizes: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    sizes
        .map(|k| {
            let (a, b) = std::mem::take(&mut v).split_at_mut(k);
            v = b;
            a
        })
        .collect()
}

/// `f` over every block's item, in parallel when there is more than one.
fn each_block<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync + Send) -> Vec<R> {
    use rayon::prelude::*;
    if items.len() == 1 {
        items.into_iter().map(f).collect()
    } else {
        items.into_par_iter().map(f).collect()
    }
}

struct GruSeq<T> {
    saved: Vec<Saved<T>>, // one per block
    blocks: Vec<(usize, usize)>,
    dims: (usize, usize, usize),
}

impl<T: Elem> GruSeq<T> {
    fn backward_impl(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let (n, t_len, h) = self.dims;
        let g3 = 3 * h;
        let wh = inputs[1].to_vec::<T>()?;
        // without a third input the sequence started from zeros
        let h0 = match inputs.get(2) {
            Some(h0) => h0.to_vec::<T>()?,
            None => vec![T::ZERO; n * h],
        };
        let mut dgx = vec![T::ZERO; n * t_len * g3];
        let parts = out.with_slice::<T, _>(|hs| {
            g.with_slice::<T, _>(|dhs| {
                let chunks = carve(&mut dgx, self.blocks.iter().map(|&(_, len)| len * t_len * g3));
                let items: Vec<_> = self.blocks.iter().zip(&self.saved).zip(chunks).collect();
                each_block(items, |((&(s, len), saved), dgx_b)| {
                    let seq = s * t_len * h..(s + len) * t_len * h;
                    backward(saved, &wh, &h0[s * h..(s + len) * h], &hs[seq.clone()], &dhs[seq], dgx_b, len, t_len, h)
                })
            })
        })??;
        let mut parts = parts.into_iter();
        let (mut dwh, mut dh0) = parts.next().expect("at least one block");
        for (wh_b, h0_b) in parts {
            dwh.iter_mut().zip(&wh_b).for_each(|(a, &b)| *a += b);
            dh0.extend_from_slice(&h0_b);
        }
        Ok((dgx, dwh, dh0))
    }
}

impl<T: Elem> BackwardOp for GruSeq<T> {
    fn name(&self) -> &'static str {
        "gru_sequence"
    }
    replay!(|_, i, _| Tensor::gru_sequence(&i[0], &i[1], i.get(2)));
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if crate::backprop::is_recording() && crate::backprop::watch_depth() > 0 {
            return Err(Error::Autodiff(
                "second derivatives through the fused gru_sequence are not supported; \
                                        run the GRU step by step to differentiate it twice"
                    .into(),
            ));
        }
        let (dgx, dwh, dh0) = self.backward_impl(inputs, out, g)?;
        let mut grads = vec![
            if need[0] { Some(Tensor::from_vec(dgx, inputs[0].shape())?) } else { None },
            if need[1] { Some(Tensor::from_vec(dwh, inputs[1].shape())?) } else { None },
        ];
        if let Some(h0) = inputs.get(2) {
            grads.push(if need[2] { Some(Tensor::from_vec(dh0, h0.shape())?) } else { None });
        }
        Ok(grads)
    }
}

impl Tensor {
    /// All hidden states `(N, T, H)` of a GRU run over `gx = x Wi^T + b` `(N, T, 3H)` with
    /// recurrent weight `wh` `(3H, H)` from initial state `h0` `(N, H)`.
    /// No `h0` starts from zeros (made inside the op, so a recorded step replays it).
    pub fn gru_sequence(gx: &Tensor, wh: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
        Self::gru_sequence_in_blocks(gx, wh, h0, None)
    }

    /// `gru_sequence` with the batch split into `blocks` (default: by the work's size).
    fn gru_sequence_in_blocks(gx: &Tensor, wh: &Tensor, h0: Option<&Tensor>, blocks: Option<usize>) -> Result<Tensor> {
        check_same_dtype("gru_sequence", gx, wh)?;
        if let Some(h0) = h0 {
            check_same_dtype("gru_sequence", gx, h0)?;
        }
        if wh.ndim() != 2 || wh.shape()[0] != 3 * wh.shape()[1] {
            return shape_err("gru_sequence", format!("the recurrent weight must be (3H, H), got {:?}", wh.shape()));
        }
        let h = wh.shape()[1];
        if gx.ndim() != 3 || gx.shape()[2] != 3 * h {
            return shape_err("gru_sequence", format!("gx must be (N, T, {}), got {:?}", 3 * h, gx.shape()));
        }
        let (n, t_len) = (gx.shape()[0], gx.shape()[1]);
        if let Some(h0) = h0.filter(|h0| h0.shape() != [n, h]) {
            return shape_err("gru_sequence", format!("the initial state must be ({n}, {h}), got {:?}", h0.shape()));
        }
        let bl = split(n, blocks.unwrap_or_else(|| nblocks(n, t_len, h)));
        with_dtype!(gx.dtype(), T => {
            let whv = wh.to_vec::<T>()?;
            let h0v = match h0 {
                Some(h0) => h0.to_vec::<T>()?,
                None => vec![T::ZERO; n * h],
            };
            let g3 = 3 * h;
            let mut hs = vec![T::ZERO; n * t_len * h];
            let saved = gx.with_slice::<T, _>(|gxv| {
                let chunks = carve(&mut hs, bl.iter().map(|&(_, len)| len * t_len * h));
                let items: Vec<_> = bl.iter().zip(chunks).collect();
                each_block(items, |(&(s, len), hs_b)| {
                    forward::<T>(&gxv[s * t_len * g3..(s + len) * t_len * g3], &whv, &h0v[s * h..(s + len) * h], hs_b, len, t_len, h)
                })
            })?;
            let out = Tensor::from_vec(hs, &[n, t_len, h])?;
            let op = GruSeq::<T> { saved, blocks: bl, dims: (n, t_len, h) };
            Ok(match h0 {
                Some(h0) => record(out, op, &[gx, wh, h0]),
                None => record(out, op, &[gx, wh]),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    /// Random gx, Wh, h0 for `n` sequences of `t` steps and `h` units, and weights `w` to sum the outputs with.
    fn inputs(n: usize, t: usize, h: usize, seed: u64) -> [Tensor; 4] {
        [
            Tensor::from_vec(rand(n * t * 3 * h, seed), &[n, t, 3 * h]).unwrap(),
            Tensor::from_vec(rand(3 * h * h, seed + 1), &[3 * h, h]).unwrap(),
            Tensor::from_vec(rand(n * h, seed + 2), &[n, h]).unwrap(),
            Tensor::from_vec(rand(n * t * h, seed + 3), &[n, t, h]).unwrap(),
        ]
    }

    /// The same recurrence from ordinary ops, step by step.
    fn reference(gx: &Tensor, wh: &Tensor, h0: &Tensor) -> Tensor {
        let h = wh.shape()[1];
        let t_len = gx.shape()[1];
        let mut hp = h0.clone();
        let mut outs = vec![];
        for t in 0..t_len {
            let g = gx.select(1, t as isize).unwrap();
            let gh = hp.matmul(&wh.transpose(0, 1).unwrap()).unwrap();
            let r = g.slice(1, 0, h, 1).unwrap().add(&gh.slice(1, 0, h, 1).unwrap()).unwrap().sigmoid().unwrap();
            let z = g.slice(1, h, 2 * h, 1).unwrap().add(&gh.slice(1, h, 2 * h, 1).unwrap()).unwrap().sigmoid().unwrap();
            let c = g.slice(1, 2 * h, 3 * h, 1).unwrap().add(&r.mul(&gh.slice(1, 2 * h, 3 * h, 1).unwrap()).unwrap()).unwrap().tanh().unwrap();
            hp = c.add(&z.mul(&hp.sub(&c).unwrap()).unwrap()).unwrap();
            outs.push(hp.clone());
        }
        Tensor::stack(&outs, 1).unwrap()
    }

    #[test]
    fn fused_gru_matches_step_by_step_ops_in_value_and_gradient() {
        let [gx, wh, h0, w] = inputs(3, 5, 4, 1);
        let leaves = [gx.clone(), wh.clone(), h0.clone()];
        crate::push_watch(&leaves);
        let a = Tensor::gru_sequence(&gx, &wh, Some(&h0)).unwrap().mul(&w).unwrap().sum_all().unwrap();
        let b = reference(&gx, &wh, &h0).mul(&w).unwrap().sum_all().unwrap();
        crate::pop_watch();
        assert!((a.item().unwrap() - b.item().unwrap()).abs() < 1e-12);
        let ga = crate::grad(&a, &leaves, None).unwrap();
        let gb = crate::grad(&b, &leaves, None).unwrap();
        for (x, y) in ga.iter().zip(&gb) {
            let (x, y) = (x.as_ref().unwrap().to_vec_f64(), y.as_ref().unwrap().to_vec_f64());
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-12, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn batch_blocks_give_the_one_block_values_and_gradients() {
        assert_eq!(split(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1)]);
        assert_eq!(split(0, 2), vec![(0, 0)]);
        let [gx, wh, h0, w] = inputs(7, 4, 3, 5);
        let leaves = [gx.clone(), wh.clone(), h0.clone()];
        let run = |k| {
            crate::push_watch(&leaves);
            let y = Tensor::gru_sequence_in_blocks(&gx, &wh, Some(&h0), Some(k)).unwrap();
            let l = y.mul(&w).unwrap().sum_all().unwrap();
            crate::pop_watch();
            let g = crate::grad(&l, &leaves, None).unwrap();
            (y.to_vec_f64(), g.into_iter().map(|g| g.unwrap().to_vec_f64()).collect::<Vec<_>>())
        };
        let (y1, g1) = run(1);
        let (y3, g3) = run(3);
        assert_eq!(y1, y3, "the forward pass of a sample does not depend on its block");
        for (a, b) in g1.iter().zip(&g3) {
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-12, "{p} vs {q}");
            }
        }
    }

    #[test]
    fn no_initial_state_is_the_zero_state_in_value_and_gradient() {
        let [gx, wh, _, w] = inputs(3, 4, 2, 2);
        let zeros = Tensor::zeros(&[3, 2], gx.dtype());
        let leaves = [gx.clone(), wh.clone()];
        let run = |h0: Option<&Tensor>| {
            crate::push_watch(&leaves);
            let y = Tensor::gru_sequence(&gx, &wh, h0).unwrap();
            let l = y.mul(&w).unwrap().sum_all().unwrap();
            crate::pop_watch();
            let g = crate::grad(&l, &leaves, None).unwrap();
            (y.to_vec_f64(), g.into_iter().map(|g| g.unwrap().to_vec_f64()).collect::<Vec<_>>())
        };
        assert_eq!(run(None), run(Some(&zeros)));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let gx = Tensor::zeros(&[2, 3, 12], crate::DType::F32);
        let wh = Tensor::zeros(&[12, 4], crate::DType::F32);
        assert!(Tensor::gru_sequence(&gx, &wh, Some(&Tensor::zeros(&[2, 5], crate::DType::F32))).is_err());
        assert!(Tensor::gru_sequence(&gx, &Tensor::zeros(&[12, 3], crate::DType::F32), Some(&Tensor::zeros(&[2, 4], crate::DType::F32))).is_err());
    }
}
