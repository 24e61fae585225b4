//! Flux's RNN (the Elman cell): h' = act(gx + h Wh^T), for the activations whose derivative
//! follows from their output (`Act`), so that the output is all the backward pass needs.

use super::{prev, recurrent_product, recurrent_product_backward, sequence, Cell, Dims, Grads};
use crate::error::Result;
use crate::ops::nn::{apply_act, Act};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;

#[derive(Clone, Copy)]
struct Elman(Act);

/// One sample's pre-activation gradient at one step, from its output `y` and the gradients
/// flowing into it from later steps (`dh`) and from the output (`dht`). All slices have length H.
#[inline(always)]
fn pre_activation_grad<T: Elem>(act: Act, dz: &mut [T], y: &[T], dh: &[T], dht: &[T]) {
    for (((g, &y), &a), &b) in dz.iter_mut().zip(y).zip(dh).zip(dht) {
        *g = (a + b) * act.derivative(y);
    }
}

impl Cell for Elman {
    const NAME: &'static str = "rnn_sequence";
    const LAYER: &'static str = "RNN";
    const GATES: usize = 1;
    const STATES: usize = 1;

    /// Saves nothing: the activation's derivative comes from its output, the sequence.
    fn forward<T: Elem>(self, d: Dims, gx: &[T], wh: &[T], s0: &[&[T]], seqs: &mut [&mut [T]]) -> Vec<T> {
        let Dims { n, t_len, h } = d;
        let ([h0], [hs]) = (s0, seqs) else { unreachable!("an RNN has one state") };
        let mut z = vec![T::ZERO; n * h];
        for t in 0..t_len {
            recurrent_product(d, 1, &mut z, h, prev(hs, h0, d, t), wh);
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let o = (i * t_len + t) * h;
                        for (a, &x) in z[i * h..(i + 1) * h].iter_mut().zip(&gx[o..o + h]) {
                            *a = x + *a;
                        }
                    }
                },
            );
            apply_act(&mut z, self.0);
            for i in 0..n {
                let o = (i * t_len + t) * h;
                hs[o..o + h].copy_from_slice(&z[i * h..(i + 1) * h]);
            }
        }
        Vec::new()
    }

    fn backward<T: Elem>(self, d: Dims, _saved: &[T], wh: &[T], s0: &[&[T]], seqs: &[&[T]], dseqs: &[&[T]], dgx: &mut [T]) -> Grads<T> {
        let Dims { n, t_len, h } = d;
        let ([h0], [hs], [dhs]) = (s0, seqs, dseqs) else { unreachable!("an RNN has one state") };
        let mut dwh = vec![T::ZERO; h * h];
        let mut dh = vec![T::ZERO; n * h]; // gradient flowing into h_t from later steps
        for t in (0..t_len).rev() {
            simd(
                #[inline(always)]
                || {
                    for i in 0..n {
                        let o = (i * t_len + t) * h;
                        pre_activation_grad(self.0, &mut dgx[o..o + h], &hs[o..o + h], &dh[i * h..(i + 1) * h], &dhs[o..o + h]);
                    }
                },
            );
            // d gx is the pre-activation gradient: read in place, its rows T·H apart
            recurrent_product_backward(d, 1, (&dgx[t * h..], t_len * h), prev(hs, h0, d, t), wh, &mut dwh, &mut dh, false);
        }
        Grads { dwh, ds0: vec![dh] }
    }
}

impl Tensor {
    /// All hidden states `(N, T, H)` of an RNN `h' = act(gx + h Wh^T)` run over
    /// `gx = x Wi^T + b` `(N, T, H)` with recurrent weight `wh` `(H, H)` from initial state
    /// `h0` `(N, H)`. No `h0` starts from zeros (made inside the op, so a recorded step replays it).
    pub fn rnn_sequence(gx: &Tensor, wh: &Tensor, h0: Option<&Tensor>, act: Act) -> Result<Tensor> {
        sequence(Elman(act), gx, wh, h0.as_slice(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_blocks_agree, assert_close, gradcheck, inputs, value_and_grads, weighted_sum};
    use super::*;

    const ACTS: [Act; 4] = [Act::Tanh, Act::Relu, Act::Identity, Act::Sigmoid];

    /// The same recurrence from ordinary ops, step by step.
    fn reference(gx: &Tensor, wh: &Tensor, h0: &Tensor, act: Act) -> Tensor {
        let mut hp = h0.clone();
        let mut outs = vec![];
        for t in 0..gx.shape()[1] {
            let z = gx.select(1, t as isize).unwrap().add(&hp.matmul(&wh.transpose(0, 1).unwrap()).unwrap()).unwrap();
            hp = match act {
                Act::Tanh => z.tanh(),
                Act::Relu => z.relu(),
                Act::Sigmoid => z.sigmoid(),
                Act::Identity => Ok(z),
            }
            .unwrap();
            outs.push(hp.clone());
        }
        Tensor::stack(&outs, 1).unwrap()
    }

    #[test]
    fn fused_rnn_matches_step_by_step_ops_in_value_and_gradient() {
        for act in ACTS {
            let leaves = inputs(3, 5, 4, 1, 1, 61);
            let a = value_and_grads(&leaves, &|t| Tensor::rnn_sequence(&t[0], &t[1], Some(&t[2]), act).unwrap());
            let b = value_and_grads(&leaves, &|t| reference(&t[0], &t[1], &t[2], act));
            assert_close(&a.0, &b.0, 1e-12);
            for (x, y) in a.1.iter().zip(&b.1) {
                assert_close(x, y, 1e-12);
            }
        }
    }

    #[test]
    fn rnn_gradients_match_finite_differences() {
        // relu is left out: its kink makes finite differences unreliable near zero
        for act in [Act::Tanh, Act::Identity, Act::Sigmoid] {
            gradcheck(&inputs(2, 4, 3, 1, 1, 71), &|t| weighted_sum(&Tensor::rnn_sequence(&t[0], &t[1], Some(&t[2]), act).unwrap(), 7));
        }
    }

    #[test]
    fn rnn_batch_blocks_give_the_one_block_values_and_gradients() {
        let leaves = inputs(7, 4, 3, 1, 1, 81);
        assert_blocks_agree(&leaves, &|t, k| sequence(Elman(Act::Tanh), &t[0], &t[1], &[&t[2]], Some(k)).unwrap());
    }

    #[test]
    fn rnn_without_initial_state_starts_from_zeros_in_value_and_gradient() {
        let leaves = inputs(3, 4, 2, 1, 0, 91);
        let zeros = Tensor::zeros(&[3, 2], leaves[0].dtype());
        let a = value_and_grads(&leaves, &|t| Tensor::rnn_sequence(&t[0], &t[1], None, Act::Relu).unwrap());
        let b = value_and_grads(&leaves, &|t| Tensor::rnn_sequence(&t[0], &t[1], Some(&zeros), Act::Relu).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn rnn_bad_shapes_are_errors() {
        let f32z = |s: &[usize]| Tensor::zeros(s, crate::DType::F32);
        let (gx, wh) = (f32z(&[2, 3, 4]), f32z(&[4, 4]));
        assert!(Tensor::rnn_sequence(&gx, &wh, None, Act::Tanh).is_ok());
        assert!(Tensor::rnn_sequence(&gx, &wh, Some(&f32z(&[3, 4])), Act::Tanh).is_err());
        assert!(Tensor::rnn_sequence(&gx, &f32z(&[4, 3]), None, Act::Tanh).is_err());
        assert!(Tensor::rnn_sequence(&f32z(&[2, 3, 5]), &wh, None, Act::Tanh).is_err());
    }
}
