//! Flux's LSTM, gates i, f, c̃, o (in that order in gx and Wh):
//!   g = gx + h Wh^T,  i, f, c̃, o = σ(g_i), σ(g_f), tanh(g_c), σ(g_o)
//!   c' = f ⊙ c + i ⊙ c̃,  h' = o ⊙ tanh(c')
//! Its two states' sequences make the output `(2, N, T, H)`: h, then c.

use super::{pieces, pieces_mut, prev, prev_row, recurrent_product, recurrent_product_backward, sequence, step_rows, Cell, Dims, Grads};
use crate::error::Result;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;

#[derive(Clone, Copy)]
struct Lstm;

// One function per direction and sample, so that its slices are known not to alias (see gru.rs).

/// One sample's step. Inputs: gx (i, f, c̃, o), c_prev; in place: the recurrent product
/// (i, f, c̃, o) becomes the activated gates, and tanh(c') is written after them; outputs:
/// c', h'. All slices have length H.
#[inline(always)]
fn gates_forward<T: Elem>(i: [&[T]; 5], s: [&mut [T]; 5], o: [&mut [T]; 2]) {
    let h = o[0].len();
    let [gxi, gxf, gxc, gxo, cp] = i.map(|v| &v[..h]);
    let [gi, gf, gc, go, tc] = s.map(|v| &mut v[..h]);
    let [c_o, h_o] = o.map(|v| &mut v[..h]);
    for (g, &x) in gi.iter_mut().zip(gxi) {
        *g = (x + *g).fast_sigmoid();
    }
    for (g, &x) in gf.iter_mut().zip(gxf) {
        *g = (x + *g).fast_sigmoid();
    }
    for (g, &x) in gc.iter_mut().zip(gxc) {
        *g = (x + *g).fast_tanh();
    }
    for (g, &x) in go.iter_mut().zip(gxo) {
        *g = (x + *g).fast_sigmoid();
    }
    for ((((c, &f), &p), &i), &cc) in c_o.iter_mut().zip(gf.iter()).zip(cp).zip(gi.iter()).zip(gc.iter()) {
        *c = f * p + i * cc;
    }
    for (t, &c) in tc.iter_mut().zip(c_o.iter()) {
        *t = c.fast_tanh();
    }
    for ((hn, &o), &t) in h_o.iter_mut().zip(go.iter()).zip(tc.iter()) {
        *hn = o * t;
    }
}

/// One sample's gate gradients at one step. Inputs: the output's gradients dh_t, dc_t,
/// c_prev, and the saved i, f, c̃, o, tanh(c'); in place: dh and dc from later steps, dc
/// becoming d c_prev (dh is left as the total at this step); outputs: d gx (i, f, c̃, o).
/// All slices have length H.
#[inline(always)]
fn gates_backward<T: Elem>(i: [&[T]; 8], d: [&mut [T]; 2], o: [&mut [T]; 4]) {
    let h = o[0].len();
    let [dht, dct, cp, si, sf, sc, so, tc] = i.map(|v| &v[..h]);
    let [dh, dc] = d.map(|v| &mut v[..h]);
    let [dgi, dgf, dgc, dgo] = o.map(|v| &mut v[..h]);
    for (a, &b) in dh.iter_mut().zip(dht) {
        *a += b;
    }
    for ((((a, &b), &d), &o), &t) in dc.iter_mut().zip(dct).zip(dh.iter()).zip(so).zip(tc) {
        *a += b + d * o * (T::ONE - t * t);
    }
    for (((g, &d), &t), &o) in dgo.iter_mut().zip(dh.iter()).zip(tc).zip(so) {
        *g = d * t * o * (T::ONE - o);
    }
    for (((g, &d), &cc), &i) in dgi.iter_mut().zip(dc.iter()).zip(sc).zip(si) {
        *g = d * cc * i * (T::ONE - i);
    }
    for (((g, &d), &p), &f) in dgf.iter_mut().zip(dc.iter()).zip(cp).zip(sf) {
        *g = d * p * f * (T::ONE - f);
    }
    for (((g, &d), &i), &cc) in dgc.iter_mut().zip(dc.iter()).zip(si).zip(sc) {
        *g = d * i * (T::ONE - cc * cc);
    }
    for (a, &f) in dc.iter_mut().zip(sf) {
        *a *= f;
    }
}

impl Cell for Lstm {
    const NAME: &'static str = "lstm_sequence";
    const LAYER: &'static str = "LSTM";
    const GATES: usize = 4;
    const STATES: usize = 2;

    /// Saves i, f, c̃, o and tanh(c') per (step, sample), time-major: the recurrent product
    /// is written straight into the step's block and activated in place.
    fn forward<T: Elem>(self, d: Dims, gx: &[T], wh: &[T], s0: &[&[T]], seqs: &mut [&mut [T]]) -> Vec<T> {
        let (Dims { n, t_len, h }, g4, k) = (d, 4 * d.h, 5 * d.h);
        let ([h0, c0], [hs, cs]) = (s0, seqs) else { unreachable!("an LSTM has two states") };
        let mut saved = vec![T::ZERO; t_len * n * k];
        for t in 0..t_len {
            let step = &mut saved[t * n * k..(t + 1) * n * k];
            recurrent_product(d, 4, step, k, prev(hs, h0, d, t), wh);
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let [gxi, gxf, gxc, gxo] = pieces(&gx[(i * t_len + t) * g4..], h);
                        let (cp, c_o) = step_rows(cs, c0, d, i, t);
                        let (_, h_o) = step_rows(hs, h0, d, i, t);
                        gates_forward([gxi, gxf, gxc, gxo, cp], pieces_mut(&mut step[i * k..], h), [c_o, h_o]);
                    }
                },
            );
        }
        saved
    }

    fn backward<T: Elem>(self, d: Dims, saved: &[T], wh: &[T], s0: &[&[T]], seqs: &[&[T]], dseqs: &[&[T]], dgx: &mut [T]) -> Grads<T> {
        let (Dims { n, t_len, h }, g4, k) = (d, 4 * d.h, 5 * d.h);
        let ([h0, c0], [hs, cs], [dhs, dcs]) = (s0, seqs, dseqs) else { unreachable!("an LSTM has two states") };
        let mut dwh = vec![T::ZERO; g4 * h];
        // gradients flowing into h_t and c_t from later steps
        let (mut dh, mut dc) = (vec![T::ZERO; n * h], vec![T::ZERO; n * h]);
        for t in (0..t_len).rev() {
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let o = (i * t_len + t) * h;
                        let [si, sf, sc, so, tc] = pieces(&saved[(t * n + i) * k..], h);
                        let ins = [&dhs[o..o + h], &dcs[o..o + h], prev_row(cs, c0, d, i, t), si, sf, sc, so, tc];
                        let state = [&mut dh[i * h..(i + 1) * h], &mut dc[i * h..(i + 1) * h]];
                        gates_backward(ins, state, pieces_mut(&mut dgx[(i * t_len + t) * g4..], h));
                    }
                },
            );
            // d gx is the gate gradient: read in place, its rows T·4H apart; dh_prev = dg @ Wh
            recurrent_product_backward(d, 4, (&dgx[t * g4..], t_len * g4), prev(hs, h0, d, t), wh, &mut dwh, &mut dh, false);
        }
        Grads { dwh, ds0: vec![dh, dc] }
    }
}

impl Tensor {
    /// The sequences of both states of an LSTM run over `gx = x Wi^T + b` `(N, T, 4H)` with
    /// recurrent weight `wh` `(4H, H)` from initial state `(h0, c0)` (`(N, H)` each), as one
    /// tensor `(2, N, T, H)`: h, then c. No state starts from zeros (made inside the op, so
    /// a recorded step replays it).
    pub fn lstm_sequence(gx: &Tensor, wh: &Tensor, state: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        match state {
            Some((h0, c0)) => sequence(Lstm, gx, wh, &[h0, c0], None),
            None => sequence(Lstm, gx, wh, &[], None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_blocks_agree, assert_close, gradcheck, inputs, value_and_grads, weighted_sum};
    use super::*;

    /// The same recurrence from ordinary ops, step by step: (2, N, T, H) as the fused op.
    fn reference(gx: &Tensor, wh: &Tensor, h0: &Tensor, c0: &Tensor) -> Tensor {
        let h = wh.shape()[1];
        let (mut hp, mut cp) = (h0.clone(), c0.clone());
        let (mut hs, mut cs) = (vec![], vec![]);
        for t in 0..gx.shape()[1] {
            let g = gx.select(1, t as isize).unwrap().add(&hp.matmul(&wh.transpose(0, 1).unwrap()).unwrap()).unwrap();
            let gate = |k: usize| g.slice(1, k * h, (k + 1) * h, 1).unwrap();
            let (i, f, cc, o) = (gate(0).sigmoid().unwrap(), gate(1).sigmoid().unwrap(), gate(2).tanh().unwrap(), gate(3).sigmoid().unwrap());
            cp = f.mul(&cp).unwrap().add(&i.mul(&cc).unwrap()).unwrap();
            hp = o.mul(&cp.tanh().unwrap()).unwrap();
            hs.push(hp.clone());
            cs.push(cp.clone());
        }
        Tensor::stack(&[Tensor::stack(&hs, 1).unwrap(), Tensor::stack(&cs, 1).unwrap()], 0).unwrap()
    }

    #[test]
    fn fused_lstm_matches_step_by_step_ops_in_value_and_gradient() {
        let leaves = inputs(3, 5, 4, 4, 2, 21);
        let a = value_and_grads(&leaves, &|t| Tensor::lstm_sequence(&t[0], &t[1], Some((&t[2], &t[3]))).unwrap());
        let b = value_and_grads(&leaves, &|t| reference(&t[0], &t[1], &t[2], &t[3]));
        assert_close(&a.0, &b.0, 1e-12);
        for (x, y) in a.1.iter().zip(&b.1) {
            assert_close(x, y, 1e-12);
        }
    }

    #[test]
    fn lstm_gradients_match_finite_differences() {
        // gx, Wh, h0, c0; the weighted sum reaches both states' sequences
        gradcheck(&inputs(2, 4, 3, 4, 2, 31), &|t| weighted_sum(&Tensor::lstm_sequence(&t[0], &t[1], Some((&t[2], &t[3]))).unwrap(), 6));
    }

    #[test]
    fn lstm_batch_blocks_give_the_one_block_values_and_gradients() {
        let leaves = inputs(7, 4, 3, 4, 2, 41);
        assert_blocks_agree(&leaves, &|t, k| sequence(Lstm, &t[0], &t[1], &[&t[2], &t[3]], Some(k)).unwrap());
    }

    #[test]
    fn lstm_without_initial_state_starts_from_zeros_in_value_and_gradient() {
        let leaves = inputs(3, 4, 2, 4, 0, 51);
        let zeros = Tensor::zeros(&[3, 2], leaves[0].dtype());
        let a = value_and_grads(&leaves, &|t| Tensor::lstm_sequence(&t[0], &t[1], None).unwrap());
        let b = value_and_grads(&leaves, &|t| Tensor::lstm_sequence(&t[0], &t[1], Some((&zeros, &zeros))).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn lstm_bad_shapes_are_errors() {
        let f32z = |s: &[usize]| Tensor::zeros(s, crate::DType::F32);
        let (gx, wh, s) = (f32z(&[2, 3, 16]), f32z(&[16, 4]), f32z(&[2, 4]));
        assert!(Tensor::lstm_sequence(&gx, &wh, Some((&s, &s))).is_ok());
        assert!(Tensor::lstm_sequence(&gx, &wh, Some((&s, &f32z(&[2, 3])))).is_err());
        assert!(Tensor::lstm_sequence(&gx, &f32z(&[12, 4]), None).is_err());
        assert!(Tensor::lstm_sequence(&f32z(&[2, 3, 12]), &wh, None).is_err());
    }
}
