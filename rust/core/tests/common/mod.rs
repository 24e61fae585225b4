//! Shared helpers for the integration tests: a tiny deterministic PRNG, tensor
//! constructors, closeness assertions and the finite-difference gradient checker.
#![allow(dead_code)]

use fluxrs_core::{grad, pop_watch, push_watch, DType, Tensor};

/// xorshift64*: deterministic, no dependencies, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
    }
    /// Uniform in [-1, 1) but at least `gap` away from every point of `kinks`
    /// (keeps finite differences off the non-differentiable points).
    pub fn vec_away(&mut self, n: usize, kinks: &[f64], gap: f64) -> Vec<f64> {
        (0..n)
            .map(|_| loop {
                let v = self.uniform(-1.0, 1.0);
                if kinks.iter().all(|k| (v - k).abs() > gap) {
                    break v;
                }
            })
            .collect()
    }
    /// `n` distinct values in [-1, 1) whose pairwise gaps are at least 1e-3 (no ties
    /// for max/min, even after a finite-difference nudge).
    pub fn vec_distinct(&mut self, n: usize) -> Vec<f64> {
        let mut out: Vec<f64> = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.uniform(-1.0, 1.0);
            if out.iter().all(|o| (o - v).abs() > 1e-3) {
                out.push(v);
            }
        }
        out
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn t(data: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

pub fn t32(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

/// Uniform in [-1, 1).
pub fn rand(rng: &mut Rng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(rng.vec(numel(shape)), shape).unwrap()
}

/// Uniform in [lo, hi).
pub fn rand_in(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let v = (0..numel(shape)).map(|_| rng.uniform(lo, hi)).collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// Uniform in [-1, 1), at least 0.01 away from each kink.
pub fn rand_away(rng: &mut Rng, shape: &[usize], kinks: &[f64]) -> Tensor {
    Tensor::from_vec(rng.vec_away(numel(shape), kinks, 0.01), shape).unwrap()
}

/// No two elements closer than 1e-3.
pub fn rand_distinct(rng: &mut Rng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(rng.vec_distinct(numel(shape)), shape).unwrap()
}

pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64()
}

pub fn close(a: f64, b: f64, atol: f64, rtol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    (a - b).abs() <= atol + rtol * a.abs().max(b.abs())
}

#[track_caller]
pub fn assert_close_tol(got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "length differs: got {got:?}, want {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w, atol, rtol), "element {i}: got {g}, want {w}\n got  {got:?}\n want {want:?}");
    }
}

#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64]) {
    assert_close_tol(got, want, 1e-12, 1e-12);
}

#[track_caller]
pub fn assert_tensor(t: &Tensor, shape: &[usize], want: &[f64]) {
    assert_eq!(t.shape(), shape, "shape");
    assert_close(&vals(t), want);
}

/// Gradients of the scalar `f(xs)` w.r.t. every `xs`, zeros where it does not depend
/// on one. Recorded (differentiable again) when an outer watch is open.
pub fn grads_of(f: impl Fn(&[Tensor]) -> Tensor, xs: &[Tensor]) -> Vec<Tensor> {
    push_watch(xs);
    let y = f(xs);
    pop_watch();
    grad(&y, xs, None).unwrap().into_iter().zip(xs).map(|(g, x)| g.unwrap_or_else(|| x.zeros_like())).collect()
}

/// A fixed pseudo-random weight tensor of `shape`, so that every output element
/// enters the checked scalar with its own (nonzero) coefficient.
fn weights(shape: &[usize]) -> Tensor {
    let mut rng = Rng::new(0xC0FFEE ^ numel(shape) as u64);
    let v = (0..numel(shape))
        .map(|_| {
            let m = rng.uniform(0.5, 1.5);
            if rng.unit() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

const EPS: f64 = 1e-6;
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-6;

/// Compare the reverse-mode gradient of `sum(w * f(inputs))` (w fixed and random) with
/// central finite differences, in float64. Panics with the offending element.
#[track_caller]
pub fn check_grad(f: impl Fn(&[Tensor]) -> Tensor, inputs: Vec<Tensor>) {
    for x in &inputs {
        assert_eq!(x.dtype(), DType::F64, "check_grad works in float64");
    }
    let out = f(&inputs);
    assert_eq!(out.dtype(), DType::F64);
    let w = weights(out.shape());
    let loss = |xs: &[Tensor]| -> Tensor {
        let y = f(xs);
        assert_eq!(y.shape(), w.shape(), "f changed its output shape");
        y.mul(&w).unwrap().sum_all().unwrap()
    };

    // Reverse mode.
    push_watch(&inputs);
    let l = loss(&inputs);
    pop_watch();
    let auto = grad(&l, &inputs, None).unwrap();

    // Central differences, one element at a time, on fresh (unwatched) tensors.
    let base: Vec<Vec<f64>> = inputs.iter().map(vals).collect();
    for (i, x) in inputs.iter().enumerate() {
        let g = match &auto[i] {
            Some(g) => {
                assert_eq!(g.shape(), x.shape(), "gradient {i} has the wrong shape");
                assert_eq!(g.dtype(), x.dtype(), "gradient {i} has the wrong dtype");
                vals(g)
            }
            None => vec![0.0; x.numel()],
        };
        for j in 0..x.numel() {
            let eval = |delta: f64| -> f64 {
                let xs: Vec<Tensor> = base
                    .iter()
                    .zip(&inputs)
                    .enumerate()
                    .map(|(k, (b, orig))| {
                        let mut b = b.clone();
                        if k == i {
                            b[j] += delta;
                        }
                        Tensor::from_vec(b, orig.shape()).unwrap()
                    })
                    .collect();
                loss(&xs).item().unwrap()
            };
            let num = (eval(EPS) - eval(-EPS)) / (2.0 * EPS);
            assert!(
                close(g[j], num, ATOL, RTOL),
                "input {i} (shape {:?}), element {j}: autodiff {} vs finite differences {} (diff {:e})",
                x.shape(),
                g[j],
                num,
                (g[j] - num).abs()
            );
        }
    }
}

/// Second order: check the gradient of `f`'s (recorded) gradient w.r.t. `inputs`
/// against finite differences of that first gradient.
#[track_caller]
pub fn check_grad2(f: impl Fn(&[Tensor]) -> Tensor, inputs: Vec<Tensor>) {
    let n = inputs.len();
    check_grad(
        move |xs| {
            let gs = grads_of(&f, xs);
            // All first gradients as one flat vector, so every one is checked.
            let flat: Vec<Tensor> = gs.iter().map(|g| g.reshape(&[g.numel()]).unwrap()).collect();
            if n == 1 {
                flat[0].clone()
            } else {
                Tensor::concat(&flat, 0).unwrap()
            }
        },
        inputs,
    );
}
