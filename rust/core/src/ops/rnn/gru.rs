//! Flux's GRU (reset gate applied after the recurrent product), gates r, z, c:
//!   r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), gh = h Wh^T
//!   c = tanh(gx_c + r ⊙ gh_c),  h' = (1 - z) ⊙ c + z ⊙ h

use super::{pieces, pieces_mut, prev, prev_row, recurrent_product, recurrent_product_backward, sequence, step_rows, Cell, Dims, Grads};
use crate::error::Result;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;

#[derive(Clone, Copy)]
struct Gru;

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

impl Cell for Gru {
    const NAME: &'static str = "gru_sequence";
    const LAYER: &'static str = "GRU";
    const GATES: usize = 3;
    const STATES: usize = 1;

    /// Saves r, z, c and gh_c per (step, sample): time-major, so that each step of the
    /// backward sweep reads one contiguous block.
    fn forward<T: Elem>(self, d: Dims, gx: &[T], wh: &[T], s0: &[&[T]], seqs: &mut [&mut [T]]) -> Vec<T> {
        let (Dims { n, t_len, h }, g3) = (d, 3 * d.h);
        let ([h0], [hs]) = (s0, seqs) else { unreachable!("a GRU has one state") };
        let mut saved = vec![T::ZERO; t_len * n * 4 * h];
        let mut gh = vec![T::ZERO; n * g3];
        for t in 0..t_len {
            recurrent_product(d, 3, &mut gh, g3, prev(hs, h0, d, t), wh);
            // Gates for every unit at once, vectorised: slices of length h let the bounds checks go.
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let [gxr, gxz, gxc] = pieces(&gx[(i * t_len + t) * g3..], h);
                        let [ghr, ghz, ghc] = pieces(&gh[i * g3..], h);
                        let (hp, h_o) = step_rows(hs, h0, d, i, t);
                        let [r, z, c, ghc_o] = pieces_mut(&mut saved[(t * n + i) * 4 * h..], h);
                        gates_forward([gxr, gxz, gxc, ghr, ghz, ghc, hp], [h_o, r, z, c, ghc_o]);
                    }
                },
            );
        }
        saved
    }

    fn backward<T: Elem>(self, d: Dims, saved: &[T], wh: &[T], s0: &[&[T]], seqs: &[&[T]], dseqs: &[&[T]], dgx: &mut [T]) -> Grads<T> {
        let (Dims { n, t_len, h }, g3) = (d, 3 * d.h);
        let ([h0], [hs], [dhs]) = (s0, seqs, dseqs) else { unreachable!("a GRU has one state") };
        let mut dwh = vec![T::ZERO; g3 * h];
        let mut dh = vec![T::ZERO; n * h]; // gradient flowing into h_t from later steps
        let mut dgh = vec![T::ZERO; n * g3];
        let mut dprev = vec![T::ZERO; n * h];
        for t in (0..t_len).rev() {
            // Vectorised like the forward gates: per sample, slices of length h.
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let o = (i * t_len + t) * h;
                        let (dh_i, dhs_i, hp) = (&dh[i * h..(i + 1) * h], &dhs[o..o + h], prev_row(hs, h0, d, i, t));
                        let [r, z, c, ghc] = pieces(&saved[(t * n + i) * 4 * h..], h);
                        let [dgx_r, dgx_z, dgx_c] = pieces_mut(&mut dgx[(i * t_len + t) * g3..], h);
                        let [dgh_r, dgh_z, dgh_c] = pieces_mut(&mut dgh[i * g3..], h);
                        let dprev_i = &mut dprev[i * h..(i + 1) * h];
                        gates_backward([dh_i, dhs_i, hp, r, z, c, ghc], [dgx_r, dgx_z, dgx_c, dgh_r, dgh_z, dgh_c, dprev_i]);
                    }
                },
            );
            // dh_prev = d*z (in dprev) + dgh @ Wh
            recurrent_product_backward(d, 3, (&dgh, g3), prev(hs, h0, d, t), wh, &mut dwh, &mut dprev, true);
            std::mem::swap(&mut dh, &mut dprev);
        }
        Grads { dwh, ds0: vec![dh] }
    }
}

impl Tensor {
    /// All hidden states `(N, T, H)` of a GRU run over `gx = x Wi^T + b` `(N, T, 3H)` with
    /// recurrent weight `wh` `(3H, H)` from initial state `h0` `(N, H)`.
    /// No `h0` starts from zeros (made inside the op, so a recorded step replays it).
    pub fn gru_sequence(gx: &Tensor, wh: &Tensor, h0: Option<&Tensor>) -> Result<Tensor> {
        sequence(Gru, gx, wh, h0.as_slice(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_blocks_agree, assert_close, gradcheck, inputs, value_and_grads, weighted_sum};
    use super::*;

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
        let leaves = inputs(3, 5, 4, 3, 1, 1);
        let a = value_and_grads(&leaves, &|t| Tensor::gru_sequence(&t[0], &t[1], Some(&t[2])).unwrap());
        let b = value_and_grads(&leaves, &|t| reference(&t[0], &t[1], &t[2]));
        assert_close(&a.0, &b.0, 1e-12);
        for (x, y) in a.1.iter().zip(&b.1) {
            assert_close(x, y, 1e-12);
        }
    }

    #[test]
    fn gru_gradients_match_finite_differences() {
        gradcheck(&inputs(2, 4, 3, 3, 1, 11), &|t| weighted_sum(&Tensor::gru_sequence(&t[0], &t[1], Some(&t[2])).unwrap(), 5));
    }

    #[test]
    fn gru_batch_blocks_give_the_one_block_values_and_gradients() {
        let leaves = inputs(7, 4, 3, 3, 1, 5);
        assert_blocks_agree(&leaves, &|t, k| sequence(Gru, &t[0], &t[1], &[&t[2]], Some(k)).unwrap());
    }

    #[test]
    fn gru_without_initial_state_starts_from_zeros_in_value_and_gradient() {
        let leaves = inputs(3, 4, 2, 3, 0, 2);
        let zeros = Tensor::zeros(&[3, 2], leaves[0].dtype());
        let a = value_and_grads(&leaves, &|t| Tensor::gru_sequence(&t[0], &t[1], None).unwrap());
        let b = value_and_grads(&leaves, &|t| Tensor::gru_sequence(&t[0], &t[1], Some(&zeros)).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn gru_bad_shapes_are_errors() {
        let f32z = |s: &[usize]| Tensor::zeros(s, crate::DType::F32);
        let (gx, wh) = (f32z(&[2, 3, 12]), f32z(&[12, 4]));
        assert!(Tensor::gru_sequence(&gx, &wh, Some(&f32z(&[2, 5]))).is_err());
        assert!(Tensor::gru_sequence(&gx, &f32z(&[12, 3]), Some(&f32z(&[2, 4]))).is_err());
        assert!(Tensor::gru_sequence(&f32z(&[2, 3, 8]), &wh, None).is_err());
        assert!(Tensor::gru_sequence(&gx, &Tensor::zeros(&[12, 4], crate::DType::F64), None).is_err());
    }
}
