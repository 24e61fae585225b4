//! Whole recurrent sequences in one op each: Flux's RNN (`elman`), LSTM (`lstm`) and GRU
//! (`gru`). Run step by step from Python, a cell costs up to ~16 small ops per time step
//! forwards and as many backwards, each a Python->Rust crossing and a recorded node; here
//! the recurrence runs in one loop (a gemm for the recurrent product per step) and
//! backpropagation through time is written out by hand.
//!
//! This module holds what the three share: the shapes, the batch split into blocks over
//! rayon threads, the per-step products, and the op that records, replays and
//! differentiates. Each cell (`Cell`) supplies its gate loops, forwards and backwards, for
//! one block of samples.
//!
//! Layouts: the input projection `gx = x Wi^T + b` `(N, T, G·H)` for all steps comes from
//! one dense call before the op; the recurrent weight `wh` is `(G·H, H)` (G gates); the
//! output holds the sequence of each state `(N, T, H)` (the LSTM's h then c: `(2, N, T, H)`);
//! the initial state, one `(N, H)` tensor per state, defaults to zeros made inside the op,
//! so that a recorded step replays it. The backward pass is not built from differentiable
//! ops: a second derivative through it is refused with an error (the Python layers run the
//! cell step by step in that case).

mod elman;
mod gru;
mod lstm;

use crate::backprop::{record, replay, BackwardOp};
use crate::error::{shape_err, Error, Result};
use crate::ops::binary::check_same_dtype;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

/// The block of samples a cell works on: `n` samples, `t_len` steps, `h` units.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    t_len: usize,
    h: usize,
}

/// One recurrence: its gate loops over one block of samples. Slices cover just the block:
/// `gx` and `dgx` `(n, T, GATES·H)`, each state's sequence `(n, T, H)` and initial value
/// `(n, H)`, `wh` `(GATES·H, H)`.
trait Cell: Copy + Send + Sync + 'static {
    /// The op's name, in errors.
    const NAME: &'static str;
    /// The layer that runs the cell step by step instead, in errors.
    const LAYER: &'static str;
    const GATES: usize;
    /// How many state tensors the recurrence carries (h; or h and c).
    const STATES: usize;

    /// Writes each state's sequence into `seqs`; returns what the backward pass needs
    /// besides them.
    fn forward<T: Elem>(self, d: Dims, gx: &[T], wh: &[T], s0: &[&[T]], seqs: &mut [&mut [T]]) -> Vec<T>;

    /// Backpropagation through time from `dseqs`, the gradient of each state's sequence:
    /// writes d gx into `dgx`; returns the other gradients, dWh this block's part of it.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Elem>(self, d: Dims, saved: &[T], wh: &[T], s0: &[&[T]], seqs: &[&[T]], dseqs: &[&[T]], dgx: &mut [T]) -> Grads<T>;
}

/// The gradients of a recurrence besides d gx: dWh `(G·H, H)`, and one per initial state.
struct Grads<T> {
    dwh: Vec<T>,
    ds0: Vec<Vec<T>>,
}

/// dst (m x n) = [dst +] a (m x k) @ b (k x n), strides in elements (row, column).
#[allow(clippy::too_many_arguments)]
fn mm<T: Elem>(m: usize, n: usize, k: usize, dst: &mut [T], d_rs: usize, acc: bool, a: &[T], a_rs: usize, a_cs: usize, b: &[T], b_rs: usize, b_cs: usize) {
    if m > 0 && n > 0 {
        let need = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
        assert!(dst.len() >= need(d_rs, 1, m, n), "mm: destination too short");
        if k > 0 {
            assert!(a.len() >= need(a_rs, a_cs, m, k) && b.len() >= need(b_rs, b_cs, k, n), "mm: operand too short");
        }
    }
    // SAFETY: the asserts above: every (row, col) reached by these strides lies in its slice.
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

/// A matrix of `rows` rows read in place: its elements and its row stride.
type Rows<'a, T> = (&'a [T], usize);

/// Every sample's state at step `t - 1`, as rows: from its sequence `seq` `(n, T, H)` (rows
/// `T·H` apart), or the initial state `s0` `(n, H)` at step 0.
fn prev<'a, T>(seq: &'a [T], s0: &'a [T], d: Dims, t: usize) -> Rows<'a, T> {
    if t == 0 {
        (s0, d.h)
    } else {
        (&seq[(t - 1) * d.h..], d.t_len * d.h)
    }
}

/// Sample `i`'s state at step `t - 1` (as `prev`), read.
fn prev_row<'a, T>(seq: &'a [T], s0: &'a [T], d: Dims, i: usize, t: usize) -> &'a [T] {
    let (rows, rs) = prev(seq, s0, d, t);
    &rows[i * rs..i * rs + d.h]
}

/// Sample `i`'s state at step `t - 1` (as `prev`), read, and its slot at step `t`, written.
fn step_rows<'a, T>(seq: &'a mut [T], s0: &'a [T], d: Dims, i: usize, t: usize) -> (&'a [T], &'a mut [T]) {
    let h = d.h;
    let (before, now) = seq[i * d.t_len * h..(i + 1) * d.t_len * h].split_at_mut(t * h);
    let p = if t == 0 { &s0[i * h..(i + 1) * h] } else { &before[(t - 1) * h..] };
    (p, &mut now[..h])
}

/// The gate pre-activations from the state: `dst` `(n, G·H)` (rows `d_rs` apart) = h_prev @ Wh^T.
fn recurrent_product<T: Elem>(d: Dims, gates: usize, dst: &mut [T], d_rs: usize, hprev: Rows<T>, wh: &[T]) {
    // Wh is (G·H, H) row-major, so Wh^T(k, j) = wh[j*H + k].
    mm(d.n, gates * d.h, d.h, dst, d_rs, false, hprev.0, hprev.1, 1, wh, 1, d.h);
}

/// The recurrent product's backward: dWh += dg^T @ h_prev, and d h_prev = [d h_prev +] dg @ Wh,
/// for the gate gradients `dg` `(n, G·H)`.
#[allow(clippy::too_many_arguments)]
fn recurrent_product_backward<T: Elem>(d: Dims, gates: usize, dg: Rows<T>, hprev: Rows<T>, wh: &[T], dwh: &mut [T], dprev: &mut [T], acc: bool) {
    let gh = gates * d.h;
    mm(gh, d.h, d.n, dwh, d.h, true, dg.0, 1, dg.1, hprev.0, hprev.1, 1);
    mm(d.n, d.h, gh, dprev, d.h, acc, dg.0, dg.1, 1, wh, d.h, 1);
}

/// `v`'s first `K` consecutive pieces of `h` elements.
fn pieces<const K: usize, T>(v: &[T], h: usize) -> [&[T]; K] {
    std::array::from_fn(|k| &v[k * h..(k + 1) * h])
}

/// `v`'s first `K` consecutive pieces of `h` elements, writable.
fn pieces_mut<const K: usize, T>(v: &mut [T], h: usize) -> [&mut [T]; K] {
    let mut rest = v;
    std::array::from_fn(|_| {
        let (piece, after) = std::mem::take(&mut rest).split_at_mut(h);
        rest = after;
        piece
    })
}

/// How many blocks of samples to run in parallel. The samples of a batch never meet in the
/// recurrence (only dWh sums over them), so each block runs the whole sequence on its own
/// thread: one rayon hand-over per call, not one per step (~10 µs each on this VM).
fn nblocks(n: usize, t_len: usize, gh: usize, h: usize) -> usize {
    let macs = n * t_len * gh * h;
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

/// Each block's rows of each of the `k` sections of `v` (sections `(N, row)` one after
/// the other, as the states' sequences in the output): per block, one slice per section.
fn block_rows<'a, T>(v: &'a [T], k: usize, blocks: &[(usize, usize)], row: usize) -> Vec<Vec<&'a [T]>> {
    let sec: usize = blocks.iter().map(|b| b.1).sum::<usize>() * row;
    blocks.iter().map(|&(s, len)| (0..k).map(|j| &v[j * sec + s * row..j * sec + (s + len) * row]).collect()).collect()
}

/// `block_rows`, writable.
fn block_rows_mut<'a, T>(v: &'a mut [T], k: usize, blocks: &[(usize, usize)], row: usize) -> Vec<Vec<&'a mut [T]>> {
    let sec: usize = blocks.iter().map(|b| b.1).sum::<usize>() * row;
    let mut per: Vec<Vec<&mut [T]>> = blocks.iter().map(|_| Vec::with_capacity(k)).collect();
    for section in carve(v, std::iter::repeat_n(sec, k)) {
        for (b, rows) in per.iter_mut().zip(carve(section, blocks.iter().map(|&(_, len)| len * row))) {
            b.push(rows);
        }
    }
    per
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

/// The initial states' values, `k` of `len` elements each: zeros where none were given.
fn initial_states<T: Elem>(s0: &[&Tensor], k: usize, len: usize) -> Result<Vec<Vec<T>>> {
    (0..k).map(|j| s0.get(j).map_or_else(|| Ok(vec![T::ZERO; len]), |t| t.to_vec::<T>())).collect()
}

struct SeqOp<C, T> {
    cell: C,
    saved: Vec<Vec<T>>, // one per block
    blocks: Vec<(usize, usize)>,
    dims: Dims, // the whole batch
}

impl<C: Cell, T: Elem> SeqOp<C, T> {
    /// d gx, and the other gradients.
    fn backward_impl(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor) -> Result<(Vec<T>, Grads<T>)> {
        let Dims { n, t_len, h } = self.dims;
        let gh = C::GATES * h;
        let wh = inputs[1].to_vec::<T>()?;
        let s0_in: Vec<&Tensor> = inputs[2..].iter().collect();
        let s0 = initial_states::<T>(&s0_in, C::STATES, n * h)?;
        let mut dgx = vec![T::ZERO; n * t_len * gh];
        let parts = out.with_slice::<T, _>(|seqs| {
            g.with_slice::<T, _>(|dseqs| {
                let chunks = carve(&mut dgx, self.blocks.iter().map(|&(_, len)| len * t_len * gh));
                let seqs = block_rows(seqs, C::STATES, &self.blocks, t_len * h);
                let dseqs = block_rows(dseqs, C::STATES, &self.blocks, t_len * h);
                let items: Vec<_> = self.blocks.iter().zip(&self.saved).zip(seqs).zip(dseqs).zip(chunks).collect();
                each_block(items, |((((&(s, len), saved), seqs), dseqs), dgx_b)| {
                    let s0b: Vec<&[T]> = s0.iter().map(|v| &v[s * h..(s + len) * h]).collect();
                    self.cell.backward(Dims { n: len, t_len, h }, saved, &wh, &s0b, &seqs, &dseqs, dgx_b)
                })
            })
        })??;
        let mut parts = parts.into_iter();
        let mut all = parts.next().expect("at least one block");
        for b in parts {
            all.dwh.iter_mut().zip(&b.dwh).for_each(|(a, &b)| *a += b);
            all.ds0.iter_mut().zip(&b.ds0).for_each(|(a, b)| a.extend_from_slice(b));
        }
        Ok((dgx, all))
    }
}

impl<C: Cell, T: Elem> BackwardOp for SeqOp<C, T> {
    fn name(&self) -> &'static str {
        C::NAME
    }
    replay!(|op, i, _| sequence(op.cell, &i[0], &i[1], &i[2..].iter().collect::<Vec<_>>(), None));
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if crate::backprop::is_recording() && crate::backprop::watch_depth() > 0 {
            return Err(Error::Autodiff(format!(
                "second derivatives through the fused {} are not supported; run the {} step by step to differentiate it twice",
                C::NAME,
                C::LAYER
            )));
        }
        let (dgx, Grads { dwh, ds0 }) = self.backward_impl(inputs, out, g)?;
        let grad = |i: usize, v: Vec<T>| if need[i] { Tensor::from_vec(v, inputs[i].shape()).map(Some) } else { Ok(None) };
        let mut grads = vec![grad(0, dgx)?, grad(1, dwh)?];
        // without initial states the sequence started from zeros, made inside the op
        for (j, v) in ds0.into_iter().enumerate().take(inputs.len() - 2) {
            grads.push(grad(2 + j, v)?);
        }
        Ok(grads)
    }
}

/// The whole recurrence of `cell` over `gx` from the initial states `s0` (none: zeros),
/// the batch split into `blocks` (default: by the work's size).
fn sequence<C: Cell>(cell: C, gx: &Tensor, wh: &Tensor, s0: &[&Tensor], blocks: Option<usize>) -> Result<Tensor> {
    let name = C::NAME;
    for t in [wh].into_iter().chain(s0.iter().copied()) {
        check_same_dtype(name, gx, t)?;
    }
    if [gx, wh].into_iter().chain(s0.iter().copied()).any(|t| t.is_gpu()) {
        return Err(Error::Device { op: name, msg: "the fused recurrence runs on the CPU only".into() });
    }
    let gates = if C::GATES == 1 { "H".to_string() } else { format!("{}H", C::GATES) };
    if wh.ndim() != 2 || wh.shape()[0] != C::GATES * wh.shape()[1] {
        return shape_err(name, format!("the recurrent weight must be ({gates}, H), got {:?}", wh.shape()));
    }
    let h = wh.shape()[1];
    let gh = C::GATES * h;
    if gx.ndim() != 3 || gx.shape()[2] != gh {
        return shape_err(name, format!("gx must be (N, T, {gh}) for H = {h}, got {:?}", gx.shape()));
    }
    let (n, t_len) = (gx.shape()[0], gx.shape()[1]);
    if !s0.is_empty() && s0.len() != C::STATES {
        return Err(Error::Value { op: name, msg: format!("give all {} initial states or none, got {}", C::STATES, s0.len()) });
    }
    if let Some(bad) = s0.iter().find(|s| s.shape() != [n, h]) {
        return shape_err(name, format!("the initial state must be ({n}, {h}), got {:?}", bad.shape()));
    }
    let bl = split(n, blocks.unwrap_or_else(|| nblocks(n, t_len, gh, h)));
    with_dtype!(gx.dtype(), T => {
        let whv = wh.to_vec::<T>()?;
        let s0v = initial_states::<T>(s0, C::STATES, n * h)?;
        let mut out = vec![T::ZERO; C::STATES * n * t_len * h];
        let saved = gx.with_slice::<T, _>(|gxv| {
            let items: Vec<_> = bl.iter().zip(block_rows_mut(&mut out, C::STATES, &bl, t_len * h)).collect();
            each_block(items, |(&(s, len), mut seqs)| {
                let s0b: Vec<&[T]> = s0v.iter().map(|v| &v[s * h..(s + len) * h]).collect();
                cell.forward::<T>(Dims { n: len, t_len, h }, &gxv[s * t_len * gh..(s + len) * t_len * gh], &whv, &s0b, &mut seqs)
            })
        })?;
        let shape = if C::STATES == 1 { vec![n, t_len, h] } else { vec![C::STATES, n, t_len, h] };
        let out = Tensor::from_vec(out, &shape)?;
        let op = SeqOp::<C, T> { cell, saved, blocks: bl, dims: Dims { n, t_len, h } };
        let inputs: Vec<&Tensor> = [gx, wh].into_iter().chain(s0.iter().copied()).collect();
        Ok(record(out, op, &inputs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    pub(super) fn rand_t(shape: &[usize], seed: u64) -> Tensor {
        Tensor::from_vec(rand(shape.iter().product(), seed), shape).unwrap()
    }

    /// Random gx `(n, t, gates·h)`, Wh `(gates·h, h)` and `states` initial states `(n, h)`.
    pub(super) fn inputs(n: usize, t: usize, h: usize, gates: usize, states: usize, seed: u64) -> Vec<Tensor> {
        let mut v = vec![rand_t(&[n, t, gates * h], seed), rand_t(&[gates * h, h], seed + 1)];
        v.extend((0..states).map(|j| rand_t(&[n, h], seed + 2 + j as u64)));
        v
    }

    /// `y` summed with fixed random weights: a scalar every element of `y` reaches.
    pub(super) fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
        y.mul(&rand_t(y.shape(), seed)).unwrap().sum_all().unwrap()
    }

    pub(super) use crate::ops::gradcheck::gradcheck;

    /// Value and gradients (w.r.t. every input) of a weighted sum of `run(inputs)`.
    pub(super) fn value_and_grads(leaves: &[Tensor], run: &dyn Fn(&[Tensor]) -> Tensor) -> (Vec<f64>, Vec<Vec<f64>>) {
        crate::push_watch(leaves);
        let y = run(leaves);
        let l = weighted_sum(&y, 77);
        crate::pop_watch();
        let g = crate::grad(&l, leaves, None).unwrap();
        (y.to_vec_f64(), g.into_iter().map(|g| g.unwrap().to_vec_f64()).collect())
    }

    /// `run(leaves, blocks)` split over 1 and over 3 batch blocks: the same forward values
    /// (a sample never meets another) and, up to the order dWh sums blocks in, the same gradients.
    pub(super) fn assert_blocks_agree(leaves: &[Tensor], run: &dyn Fn(&[Tensor], usize) -> Tensor) {
        let (y1, g1) = value_and_grads(leaves, &|t| run(t, 1));
        let (y3, g3) = value_and_grads(leaves, &|t| run(t, 3));
        assert_eq!(y1, y3, "the forward pass of a sample does not depend on its block");
        for (a, b) in g1.iter().zip(&g3) {
            assert_close(a, b, 1e-12);
        }
    }

    pub(super) fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < tol, "{p} vs {q}");
        }
    }

    #[test]
    fn batches_split_into_near_equal_blocks() {
        assert_eq!(split(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1)]);
        assert_eq!(split(0, 2), vec![(0, 0)]);
    }

    #[test]
    fn block_rows_follow_each_section() {
        let v: Vec<usize> = (0..12).collect(); // two sections of 3 samples, rows of 2
        let b = block_rows(&v, 2, &[(0, 2), (2, 1)], 2);
        assert_eq!(b[0], vec![&[0, 1, 2, 3][..], &[6, 7, 8, 9][..]]);
        assert_eq!(b[1], vec![&[4, 5][..], &[10, 11][..]]);
        let mut w = v.clone();
        let bm = block_rows_mut(&mut w, 2, &[(0, 2), (2, 1)], 2);
        assert_eq!(bm[1].iter().map(|s| s.to_vec()).collect::<Vec<_>>(), vec![vec![4, 5], vec![10, 11]]);
    }
}
