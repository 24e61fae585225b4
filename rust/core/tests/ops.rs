//! Forward values against hand-computed results, numerical stability at the extremes,
//! and errors (never panics) for bad arguments.

mod common;

use common::*;
use fluxrs_core::ops::UnaryOp;
use fluxrs_core::{grad, pop_watch, push_watch, DType, Error, Tensor};

const LN2: f64 = std::f64::consts::LN_2;

fn arange(n: usize, shape: &[usize]) -> Tensor {
    Tensor::from_vec((0..n).map(|i| i as f64).collect::<Vec<f64>>(), shape).unwrap()
}

// ---------------------------------------------------------------- elementwise values

#[test]
fn binary_values_and_broadcasting() {
    let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = t(&[10.0, 20.0, 30.0], &[3]);
    assert_tensor(&a.add(&b).unwrap(), &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    assert_tensor(&a.sub(&b).unwrap(), &[2, 3], &[-9.0, -18.0, -27.0, -6.0, -15.0, -24.0]);
    assert_tensor(&a.mul(&b).unwrap(), &[2, 3], &[10.0, 40.0, 90.0, 40.0, 100.0, 180.0]);
    assert_tensor(&b.div(&a).unwrap(), &[2, 3], &[10.0, 10.0, 10.0, 2.5, 4.0, 5.0]);
    assert_tensor(&a.pow(&t(&[2.0], &[])).unwrap(), &[2, 3], &[1.0, 4.0, 9.0, 16.0, 25.0, 36.0]);
    let c = t(&[3.5, 1.5], &[2, 1]);
    assert_tensor(&a.maximum(&c).unwrap(), &[2, 3], &[3.5, 3.5, 3.5, 4.0, 5.0, 6.0]);
    assert_tensor(&a.minimum(&c).unwrap(), &[2, 3], &[1.0, 2.0, 3.0, 1.5, 1.5, 1.5]);
    // (3,1,4) with (2,4) -> (3,2,4).
    let x = arange(12, &[3, 1, 4]);
    let y = arange(8, &[2, 4]).scale(100.0).unwrap();
    let z = x.add(&y).unwrap();
    assert_eq!(z.shape(), &[3, 2, 4]);
    let mut want = vec![];
    for i in 0..3 {
        for j in 0..2 {
            for k in 0..4 {
                want.push((i * 4 + k) as f64 + 100.0 * (j * 4 + k) as f64);
            }
        }
    }
    assert_close(&vals(&z), &want);
    // 0-d with a matrix, both ways, and 0-d with 0-d.
    let s = t(&[2.0], &[]);
    assert_tensor(&s.sub(&a).unwrap(), &[2, 3], &[1.0, 0.0, -1.0, -2.0, -3.0, -4.0]);
    assert_tensor(&a.div(&s).unwrap(), &[2, 3], &[0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    assert_tensor(&s.mul(&s).unwrap(), &[], &[4.0]);
    // Non-contiguous operands.
    let at = a.transpose(0, 1).unwrap();
    assert!(!at.is_contiguous());
    assert_tensor(&at.add(&t(&[0.0, 100.0], &[2])).unwrap(), &[3, 2], &[1.0, 104.0, 2.0, 105.0, 3.0, 106.0]);
    assert_tensor(&at.mul(&at).unwrap(), &[3, 2], &[1.0, 16.0, 4.0, 25.0, 9.0, 36.0]);
}

#[test]
fn nan_propagation_in_maximum_minimum() {
    let a = t(&[f64::NAN, 1.0, 2.0], &[3]);
    let b = t(&[0.0, f64::NAN, 1.0], &[3]);
    let mx = vals(&a.maximum(&b).unwrap());
    let mn = vals(&a.minimum(&b).unwrap());
    assert!(mx[0].is_nan() && mx[1].is_nan() && mx[2] == 2.0, "{mx:?}");
    assert!(mn[0].is_nan() && mn[1].is_nan() && mn[2] == 1.0, "{mn:?}");
}

#[test]
fn unary_values() {
    let x = t(&[-2.0, -0.5, 0.0, 0.5, 2.0], &[5]);
    let f = |op: UnaryOp, g: fn(f64) -> f64| {
        let want: Vec<f64> = vals(&x).into_iter().map(g).collect();
        assert_close_tol(&vals(&x.unary(op).unwrap()), &want, 1e-15, 1e-14);
    };
    f(UnaryOp::Neg, |v| -v);
    f(UnaryOp::Exp, f64::exp);
    f(UnaryOp::Abs, f64::abs);
    f(UnaryOp::Tanh, f64::tanh);
    f(UnaryOp::Sigmoid, |v| 1.0 / (1.0 + (-v).exp()));
    f(UnaryOp::Relu, |v| v.max(0.0));
    f(UnaryOp::Sin, f64::sin);
    f(UnaryOp::Cos, f64::cos);
    f(UnaryOp::Softplus, |v| (1.0 + v.exp()).ln());
    f(UnaryOp::LeakyRelu(0.1), |v| if v > 0.0 { v } else { 0.1 * v });
    f(UnaryOp::Elu(1.5), |v| if v > 0.0 { v } else { 1.5 * (v.exp() - 1.0) });
    f(UnaryOp::Clamp(-1.0, 0.25), |v| v.clamp(-1.0, 0.25));
    f(UnaryOp::Sign, f64::signum_zero);
    let p = t(&[0.25, 1.0, 4.0], &[3]);
    assert_close(&vals(&p.sqrt().unwrap()), &[0.5, 1.0, 2.0]);
    assert_close(&vals(&p.log().unwrap()), &[0.25f64.ln(), 0.0, 4.0f64.ln()]);
    assert_close(&vals(&t(&[1e-20, 0.0], &[2]).log1p().unwrap()), &[1e-20, 0.0]);
    // clamp keeps NaN.
    assert!(vals(&t(&[f64::NAN], &[1]).clamp(0.0, 1.0).unwrap())[0].is_nan());
}

trait SignumZero {
    fn signum_zero(self) -> f64;
}
impl SignumZero for f64 {
    fn signum_zero(self) -> f64 {
        if self > 0.0 {
            1.0
        } else if self < 0.0 {
            -1.0
        } else {
            0.0
        }
    }
}

#[test]
fn extreme_values_are_stable() {
    // sigmoid saturates to exact 0 / 1, never NaN, in both dtypes.
    let x = t(&[-1000.0, -50.0, 0.0, 50.0, 1000.0], &[5]);
    let s = vals(&x.sigmoid().unwrap());
    assert_eq!(s[0], 0.0);
    assert_eq!(s[2], 0.5);
    assert_eq!(s[4], 1.0);
    assert!(s.iter().all(|v| v.is_finite()));
    let s32 = vals(&t32(&[-1000.0, 0.0, 1000.0], &[3]).sigmoid().unwrap());
    assert_eq!(s32, vec![0.0, 0.5, 1.0]);
    // softplus(1000) = 1000, softplus(-1000) = 0, softplus(0) = ln 2.
    let sp = vals(&t(&[1000.0, -1000.0, 0.0], &[3]).softplus().unwrap());
    assert_eq!(sp[0], 1000.0);
    assert_eq!(sp[1], 0.0);
    assert_close(&sp[2..], &[LN2]);
    assert_eq!(vals(&t32(&[1000.0], &[1]).softplus().unwrap()), vec![1000.0]);
    // tanh saturates.
    assert_eq!(vals(&t(&[-1000.0, 1000.0], &[2]).tanh().unwrap()), vec![-1.0, 1.0]);
    // Gradients at the extremes are finite too.
    let x = t(&[-1000.0, 1000.0], &[2]);
    for op in [UnaryOp::Sigmoid, UnaryOp::Softplus, UnaryOp::Tanh] {
        push_watch(std::slice::from_ref(&x));
        let l = x.unary(op).unwrap().sum_all().unwrap();
        pop_watch();
        let g = vals(&grad(&l, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap());
        assert!(g.iter().all(|v| v.is_finite()), "{op:?}: {g:?}");
    }
}

#[test]
fn logsumexp_values() {
    let x = t(&[1000.0, 1000.0], &[2]);
    assert_tensor(&x.logsumexp(None, false).unwrap(), &[], &[1000.0 + LN2]);
    let x = t(&[-1000.0, -1000.0], &[2]);
    assert_tensor(&x.logsumexp(None, false).unwrap(), &[], &[-1000.0 + LN2]);
    let x = t32(&[1000.0, 1000.0], &[2]);
    assert_close_tol(&vals(&x.logsumexp(None, false).unwrap()), &[1000.0 + LN2], 1e-3, 1e-6);
    // Per row, keepdim, and a row of -inf gives -inf (not NaN).
    let x = t(&[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, f64::NEG_INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY], &[3, 3]);
    let l = x.logsumexp(Some(&[1]), true).unwrap();
    assert_eq!(l.shape(), &[3, 1]);
    let lv = vals(&l);
    assert_close(&lv[..2], &[3f64.ln(), (1.0 + 1f64.exp() + 2f64.exp()).ln()]);
    assert_eq!(lv[2], f64::NEG_INFINITY);
    // Gradient of logsumexp of huge equal values is 1/n each.
    let x = t(&[1000.0, 1000.0], &[2]);
    push_watch(std::slice::from_ref(&x));
    let l = x.logsumexp(None, false).unwrap();
    pop_watch();
    assert_close(&vals(&grad(&l, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap()), &[0.5, 0.5]);
}

#[test]
fn softmax_values() {
    let mut rng = Rng::new(100);
    let x = rand_in(&mut rng, &[3, 4, 5], -3.0, 3.0);
    for axis in [0isize, 1, 2, -1] {
        let s = x.softmax(axis).unwrap();
        let sums = vals(&s.sum_axes(Some(&[axis]), false).unwrap());
        assert_close_tol(&sums, &vec![1.0; sums.len()], 1e-14, 0.0);
        assert!(vals(&s).iter().all(|&v| v > 0.0 && v < 1.0));
        // logsoftmax == log(softmax), and exp(logsoftmax) sums to one.
        let ls = x.logsoftmax(axis).unwrap();
        assert_close_tol(&vals(&ls), &vals(&s.log().unwrap()), 1e-14, 1e-13);
    }
    // Hand-computed values; large logits do not overflow.
    let x = t(&[1.0, 2.0, 3.0, 1000.0, 1000.0, 0.0], &[2, 3]);
    let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
    let z: f64 = e.iter().sum();
    let s = vals(&x.softmax(1).unwrap());
    assert_close_tol(&s, &[e[0] / z, e[1] / z, e[2] / z, 0.5, 0.5, 0.0], 1e-15, 1e-14);
    let ls = vals(&x.logsoftmax(1).unwrap());
    assert_close_tol(&ls, &[1.0 - z.ln(), 2.0 - z.ln(), 3.0 - z.ln(), -LN2, -LN2, -1000.0 - LN2], 1e-13, 1e-14);
    // Along axis 0 of the same matrix.
    let s0 = vals(&x.softmax(0).unwrap());
    assert_close_tol(&s0[..3], &[0.0, 0.0, 3f64.exp() / (3f64.exp() + 1.0)], 1e-15, 1e-14);
    let x = t32(&[1000.0, 0.0], &[2]);
    assert_eq!(vals(&x.softmax(0).unwrap()), vec![1.0, 0.0]);
    assert_eq!(vals(&x.logsoftmax(0).unwrap()), vec![0.0, -1000.0]);
}

#[test]
fn reduction_values() {
    let x = t(&[1.0, 5.0, 3.0, 4.0, 2.0, 6.0], &[2, 3]);
    assert_tensor(&x.sum_axes(None, false).unwrap(), &[], &[21.0]);
    assert_tensor(&x.sum_axes(Some(&[0]), false).unwrap(), &[3], &[5.0, 7.0, 9.0]);
    assert_tensor(&x.sum_axes(Some(&[1]), true).unwrap(), &[2, 1], &[9.0, 12.0]);
    assert_tensor(&x.sum_axes(Some(&[]), false).unwrap(), &[2, 3], &[1.0, 5.0, 3.0, 4.0, 2.0, 6.0]);
    assert_tensor(&x.mean_axes(Some(&[-1]), false).unwrap(), &[2], &[3.0, 4.0]);
    assert_tensor(&x.mean_axes(None, true).unwrap(), &[1, 1], &[3.5]);
    assert_tensor(&x.max_axes(Some(&[1]), false).unwrap(), &[2], &[5.0, 6.0]);
    assert_tensor(&x.max_axes(Some(&[0]), true).unwrap(), &[1, 3], &[4.0, 5.0, 6.0]);
    assert_tensor(&x.min_axes(None, false).unwrap(), &[], &[1.0]);
    assert_tensor(&x.min_axes(Some(&[0, 1]), true).unwrap(), &[1, 1], &[1.0]);
    // 3-D over several axes and on a permuted view.
    let y = arange(24, &[2, 3, 4]);
    assert_tensor(&y.sum_axes(Some(&[0, 2]), false).unwrap(), &[3], &[60.0, 92.0, 124.0]);
    assert_tensor(&y.sum_axes(Some(&[2, 0]), true).unwrap(), &[1, 3, 1], &[60.0, 92.0, 124.0]);
    assert_tensor(&y.max_axes(Some(&[1, 2]), false).unwrap(), &[2], &[11.0, 23.0]);
    let yp = y.permute(&[2, 0, 1]).unwrap();
    assert_tensor(&yp.sum_axes(Some(&[1, 2]), false).unwrap(), &[4], &[60.0, 66.0, 72.0, 78.0]);
    // 0-d.
    let s = t(&[7.0], &[]);
    assert_tensor(&s.sum_all().unwrap(), &[], &[7.0]);
    assert_tensor(&s.max_axes(None, true).unwrap(), &[], &[7.0]);
    // sum_to.
    assert_tensor(&y.sum_to(&[3, 1]).unwrap(), &[3, 1], &[60.0, 92.0, 124.0]);
    assert_tensor(&y.sum_to(&[]).unwrap(), &[], &[276.0]);
}

#[test]
fn max_ties_split_the_gradient() {
    let x = t(&[1.0, 3.0, 3.0, 0.0], &[4]);
    push_watch(std::slice::from_ref(&x));
    let l = x.max_axes(None, false).unwrap();
    pop_watch();
    assert_close(&vals(&grad(&l, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap()), &[0.0, 0.5, 0.5, 0.0]);
    // maximum(a, b) with a tie sends the whole gradient to a.
    let (a, b) = (t(&[2.0], &[1]), t(&[2.0], &[1]));
    push_watch(&[a.clone(), b.clone()]);
    let l = a.maximum(&b).unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, &[a.clone(), b.clone()], None).unwrap();
    assert_eq!(vals(g[0].as_ref().unwrap()), vec![1.0]);
    assert_eq!(vals(g[1].as_ref().unwrap()), vec![0.0]);
}

#[test]
fn kinks_have_conventional_subgradients() {
    let x = t(&[0.0], &[1]);
    for (op, want) in [(UnaryOp::Relu, 0.0), (UnaryOp::Abs, 0.0), (UnaryOp::LeakyRelu(0.2), 0.2), (UnaryOp::Clamp(0.0, 1.0), 1.0)] {
        push_watch(std::slice::from_ref(&x));
        let l = x.unary(op).unwrap().sum_all().unwrap();
        pop_watch();
        assert_eq!(vals(&grad(&l, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap()), vec![want], "{op:?}");
    }
}

#[test]
fn matmul_values() {
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = t(&[5.0, 6.0, 7.0, 8.0], &[2, 2]);
    assert_tensor(&a.matmul(&b).unwrap(), &[2, 2], &[19.0, 22.0, 43.0, 50.0]);
    // a^T @ b on a transposed view.
    assert_tensor(&a.transpose(0, 1).unwrap().matmul(&b).unwrap(), &[2, 2], &[26.0, 30.0, 38.0, 44.0]);
    let u = t(&[1.0, 2.0, 3.0], &[3]);
    let v = t(&[4.0, 5.0, 6.0], &[3]);
    assert_tensor(&u.matmul(&v).unwrap(), &[], &[32.0]);
    let m = arange(6, &[2, 3]);
    assert_tensor(&m.matmul(&u).unwrap(), &[2], &[8.0, 26.0]);
    assert_tensor(&t(&[1.0, -1.0], &[2]).matmul(&m).unwrap(), &[3], &[-3.0, -3.0, -3.0]);
    // Batched with broadcasting: (2,1,2,3) @ (3,3,1)... -> (2,3,2,1).
    let a = arange(12, &[2, 1, 2, 3]);
    let b = arange(9, &[3, 3, 1]);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[2, 3, 2, 1]);
    let (av, bv) = (vals(&a), vals(&b));
    let mut want = vec![];
    for i in 0..2 {
        for j in 0..3 {
            for r in 0..2 {
                want.push((0..3).map(|k| av[i * 6 + r * 3 + k] * bv[j * 3 + k]).sum::<f64>());
            }
        }
    }
    assert_close(&vals(&c), &want);
    // (1,m,k) x (b,k,n) matches per-batch 2-D products.
    let mut rng = Rng::new(101);
    let a = rand(&mut rng, &[1, 3, 4]);
    let b = rand(&mut rng, &[2, 4, 5]);
    let c = a.matmul(&b).unwrap();
    for i in 0..2 {
        let ci = a.select(0, 0).unwrap().matmul(&b.select(0, i).unwrap()).unwrap();
        assert_close_tol(&vals(&c.select(0, i).unwrap()), &vals(&ci), 1e-15, 1e-14);
    }
    // Empty inner dimension gives zeros.
    let z = Tensor::zeros(&[2, 0], DType::F64).matmul(&Tensor::zeros(&[0, 3], DType::F64)).unwrap();
    assert_tensor(&z, &[2, 3], &[0.0; 6]);
    // float32.
    let a32 = t32(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let c32 = a32.matmul(&a32).unwrap();
    assert_eq!(c32.dtype(), DType::F32);
    assert_eq!(vals(&c32), vec![7.0, 10.0, 15.0, 22.0]);
}

/// Row-major reference product of `a` (m x k) and `b` (k x n), from their values.
fn naive_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    (0..m * n).map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum()).collect()
}

#[test]
fn products_with_a_transposed_right_operand_at_cache_aliasing_strides() {
    // A right operand read as w^T (a Dense weight, k^T in attention) with rows a multiple of
    // 512 bytes apart is copied to a padded stride before gemm packs it (ops::matmul::gemm_rm);
    // the products must not change, for either dtype, for views with an offset and for batches.
    let mut rng = Rng::new(7);
    for (dtype, k) in [(DType::F32, 128usize), (DType::F32, 256), (DType::F64, 64), (DType::F64, 130)] {
        let (m, n) = (40usize, 70usize);
        let x = rand(&mut rng, &[m, k]).cast(dtype).unwrap();
        // w (n x k) as columns 3..3+k of a wider matrix: row stride 2k (an aliasing one), offset 3
        let wide = rand(&mut rng, &[n, 2 * k]).cast(dtype).unwrap();
        let w = wide.slice(1, 3, 3 + k, 1).unwrap();
        let wt = w.transpose(0, 1).unwrap();
        let want = naive_matmul(&vals(&x), &vals(&wt), m, k, n);
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-12 };
        assert_close_tol(&vals(&x.matmul(&wt).unwrap()), &want, tol, tol);
        let dense = Tensor::dense(&x, &w, None, fluxrs_core::ops::nn::Act::Identity).unwrap();
        assert_close_tol(&vals(&dense), &want, tol, tol);
        let b = rand(&mut rng, &[n]).cast(dtype).unwrap();
        let bv = vals(&b);
        let with_bias: Vec<f64> = want.iter().enumerate().map(|(i, v)| v + bv[i % n]).collect();
        assert_close_tol(&vals(&Tensor::dense(&x, &w, Some(&b), fluxrs_core::ops::nn::Act::Identity).unwrap()), &with_bias, tol, tol);
        // batched: (2, m, k) @ (2, k, n) with the second operand a transposed view
        let xs = Tensor::stack(&[x.clone(), x.clone()], 0).unwrap();
        // stack copies w into (2, n, k), rows k apart; its transpose is a (2, k, n) view
        let ws = Tensor::stack(&[w.clone(), w.clone()], 0).unwrap().transpose(1, 2).unwrap();
        let got = vals(&xs.matmul(&ws).unwrap());
        assert_close_tol(&got[..m * n], &want, tol, tol);
        assert_close_tol(&got[m * n..], &want, tol, tol);
    }
}

#[test]
fn shape_op_values() {
    let x = arange(10, &[10]);
    assert_tensor(&x.slice(0, 1, 8, 3).unwrap(), &[3], &[1.0, 4.0, 7.0]);
    assert_tensor(&x.slice(0, 7, 100, 1).unwrap(), &[3], &[7.0, 8.0, 9.0]);
    assert_tensor(&x.slice(0, 5, 2, 1).unwrap(), &[0], &[]);
    let m = arange(12, &[3, 4]);
    assert_tensor(&m.slice(1, 0, 4, 2).unwrap(), &[3, 2], &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    assert_tensor(&m.slice(1, 1, 4, 2).unwrap().slice(0, 1, 3, 1).unwrap(), &[2, 2], &[5.0, 7.0, 9.0, 11.0]);
    assert!(m.slice(1, 0, 4, 2).unwrap().same_storage(&m), "slice is a view");
    assert_tensor(&m.select(0, -1).unwrap(), &[4], &[8.0, 9.0, 10.0, 11.0]);
    assert_tensor(&m.select(1, -4).unwrap(), &[3], &[0.0, 4.0, 8.0]);
    assert_tensor(&m.select(-1, 2).unwrap(), &[3], &[2.0, 6.0, 10.0]);
    assert_tensor(&m.index_select(0, &[2, 0, 2]).unwrap(), &[3, 4], &[8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]);
    assert_tensor(&m.index_select(1, &[3, 3]).unwrap(), &[3, 2], &[3.0, 3.0, 7.0, 7.0, 11.0, 11.0]);
    let mt = m.transpose(0, 1).unwrap();
    assert_tensor(&mt, &[4, 3], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
    assert!(mt.same_storage(&m) && !mt.is_contiguous());
    let mc = mt.contiguous().unwrap();
    assert!(mc.is_contiguous() && !mc.same_storage(&m));
    assert_eq!(vals(&mc), vals(&mt));
    assert_tensor(&mt.reshape(&[2, 6]).unwrap(), &[2, 6], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
    let y = arange(24, &[2, 3, 4]);
    let p = y.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    let (yv, pv) = (vals(&y), vals(&p));
    for i in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                assert_eq!(pv[i * 6 + j * 3 + k], yv[j * 12 + k * 4 + i]);
            }
        }
    }
    let b = t(&[1.0, 2.0, 3.0], &[3, 1]).broadcast_to(&[2, 3, 2]).unwrap();
    assert_tensor(&b, &[2, 3, 2], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    // concat / stack.
    let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let c = t(&[5.0, 6.0], &[2, 1]);
    assert_tensor(&Tensor::concat(&[a.clone(), c.clone()], 1).unwrap(), &[2, 3], &[1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
    assert_tensor(&Tensor::concat(&[a.clone(), a.clone()], 0).unwrap(), &[4, 2], &[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]);
    let d = t(&[10.0, 20.0, 30.0, 40.0], &[2, 2]);
    assert_tensor(&Tensor::stack(&[a.clone(), d.clone()], 0).unwrap(), &[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0]);
    assert_tensor(&Tensor::stack(&[a.clone(), d.clone()], 1).unwrap(), &[2, 2, 2], &[1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0]);
    assert_tensor(&Tensor::stack(&[a.clone(), d.clone()], -1).unwrap(), &[2, 2, 2], &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
}

#[test]
fn cast_round_trip() {
    let x = t(&[0.5, -2.0, 1e10, 0.1], &[2, 2]);
    let y = x.cast(DType::F32).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_eq!(y.shape(), &[2, 2]);
    let z = y.cast(DType::F64).unwrap();
    assert_eq!(z.dtype(), DType::F64);
    let zv = vals(&z);
    assert_eq!(&zv[..3], &[0.5, -2.0, 1e10]);
    assert_eq!(zv[3], 0.1f32 as f64);
    assert_ne!(zv[3], 0.1);
    // Casting to the same dtype is a no-op; a cast of a view casts the view.
    assert_eq!(x.cast(DType::F64).unwrap().id(), x.id());
    assert_eq!(vals(&x.transpose(0, 1).unwrap().cast(DType::F32).unwrap()), vec![0.5, 1e10, -2.0, 0.1f32 as f64]);
}

#[test]
fn compare_and_where() {
    let a = t(&[1.0, 2.0, 3.0], &[3]);
    let b = t(&[2.0], &[]);
    assert_eq!(vals(&a.eq(&b).unwrap()), vec![0.0, 1.0, 0.0]);
    assert_eq!(vals(&a.ne(&b).unwrap()), vec![1.0, 0.0, 1.0]);
    assert_eq!(vals(&a.lt(&b).unwrap()), vec![1.0, 0.0, 0.0]);
    assert_eq!(vals(&a.le(&b).unwrap()), vec![1.0, 1.0, 0.0]);
    assert_eq!(vals(&a.gt(&b).unwrap()), vec![0.0, 0.0, 1.0]);
    assert_eq!(vals(&a.ge(&b).unwrap()), vec![0.0, 1.0, 1.0]);
    // where_ with broadcasting; the branch not taken may hold inf/NaN.
    let cond = t(&[1.0, 0.0, 1.0], &[3]);
    let x = t(&[1.0, f64::INFINITY, 3.0], &[3]);
    let y = t(&[f64::NAN, 20.0, f64::NAN], &[3]);
    assert_eq!(vals(&Tensor::where_(&cond, &x, &y).unwrap()), vec![1.0, 20.0, 3.0]);
    let w = Tensor::where_(&t(&[1.0, 0.0], &[2, 1]), &a, &t(&[-1.0], &[])).unwrap();
    assert_tensor(&w, &[2, 3], &[1.0, 2.0, 3.0, -1.0, -1.0, -1.0]);
    // The gradient goes only to the branch taken, exactly (0, not a tiny number, elsewhere).
    // (As in PyTorch and JAX, a branch whose own backward is NaN where not taken, such as
    // sqrt of a negative, still yields NaN: 0 * NaN. Guard the input, not the output.)
    let x = t(&[-1.0, 4.0], &[2]);
    let y = t(&[5.0, 7.0], &[2]);
    push_watch(&[x.clone(), y.clone()]);
    let c = x.gt(&t(&[0.0], &[])).unwrap();
    let safe = Tensor::where_(&c, &x, &t(&[1.0], &[])).unwrap();
    let l = Tensor::where_(&c, &safe.sqrt().unwrap(), &y.scale(1e300).unwrap()).unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, &[x.clone(), y.clone()], None).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[0.0, 0.25]);
    assert_eq!(vals(g[1].as_ref().unwrap()), vec![1e300, 0.0]);
}

// ---------------------------------------------------------------- errors

#[track_caller]
fn shape_error<T: std::fmt::Debug>(r: fluxrs_core::Result<T>) {
    match r {
        Err(Error::Shape { .. }) => {}
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn shape_errors() {
    let a3 = Tensor::zeros(&[3], DType::F64);
    let a4 = Tensor::zeros(&[4], DType::F64);
    shape_error(a3.add(&a4));
    shape_error(a3.sub(&a4));
    shape_error(a3.mul(&a4));
    shape_error(a3.maximum(&a4));
    shape_error(a3.eq(&a4));
    shape_error(Tensor::zeros(&[2, 3], DType::F64).add(&Tensor::zeros(&[3, 2], DType::F64)));
    // matmul misaligned, including 1-D and batched cases.
    let m23 = Tensor::zeros(&[2, 3], DType::F64);
    shape_error(m23.matmul(&m23));
    shape_error(m23.matmul(&a4));
    shape_error(a4.matmul(&m23));
    shape_error(a3.matmul(&a4));
    shape_error(Tensor::zeros(&[2, 2, 3], DType::F64).matmul(&Tensor::zeros(&[3, 3, 4], DType::F64)));
    shape_error(Tensor::zeros(&[], DType::F64).matmul(&m23));
    // reshape to the wrong size.
    shape_error(m23.reshape(&[4, 2]));
    shape_error(m23.transpose(0, 1).unwrap().reshape(&[7]));
    shape_error(Tensor::from_vec(vec![1.0f64, 2.0], &[3]));
    // broadcast_to / concat / stack / where_ / sum_to.
    shape_error(m23.broadcast_to(&[3, 3]));
    shape_error(m23.broadcast_to(&[3]));
    shape_error(Tensor::concat(&[m23.clone(), Tensor::zeros(&[3, 3], DType::F64)], 1));
    shape_error(Tensor::concat(&[m23.clone(), a3.clone()], 0));
    shape_error(Tensor::stack(&[m23.clone(), Tensor::zeros(&[3, 2], DType::F64)], 0));
    shape_error(Tensor::where_(&a3, &a4, &a3));
    shape_error(m23.sum_to(&[4]));
    shape_error(a3.sum_to(&[2, 3]));
    shape_error(m23.permute(&[0]));
}

#[test]
fn axis_errors() {
    let x = Tensor::zeros(&[2, 3], DType::F64);
    let is_axis = |r: fluxrs_core::Result<Tensor>, want: isize| match r {
        Err(Error::Axis { axis, ndim, .. }) => {
            assert_eq!(axis, want);
            assert_eq!(ndim, 2);
        }
        other => panic!("expected an axis error, got {other:?}"),
    };
    is_axis(x.sum_axes(Some(&[2]), false), 2);
    is_axis(x.sum_axes(Some(&[-3]), true), -3);
    is_axis(x.mean_axes(Some(&[5]), false), 5);
    is_axis(x.max_axes(Some(&[0, 2]), false), 2);
    is_axis(x.min_axes(Some(&[-4]), false), -4);
    is_axis(x.logsumexp(Some(&[2]), false), 2);
    is_axis(x.softmax(2), 2);
    is_axis(x.logsoftmax(-3), -3);
    is_axis(x.transpose(0, 2), 2);
    is_axis(x.permute(&[0, 2]), 2);
    is_axis(x.slice(2, 0, 1, 1), 2);
    is_axis(x.select(-3, 0), -3);
    is_axis(x.index_select(2, &[0]), 2);
    is_axis(Tensor::concat(std::slice::from_ref(&x), 2), 2);
    // stack accepts ndim+1 positions.
    assert!(matches!(Tensor::stack(std::slice::from_ref(&x), 4), Err(Error::Axis { axis: 4, ndim: 3, .. })));
    assert!(matches!(Tensor::zeros(&[], DType::F64).softmax(0), Err(Error::Axis { .. })));
    // Repeated axes are a value error.
    assert!(matches!(x.sum_axes(Some(&[1, -1]), false), Err(Error::Value { .. })));
}

#[test]
fn dtype_errors() {
    let a = Tensor::zeros(&[3], DType::F32);
    let b = Tensor::zeros(&[3], DType::F64);
    for r in [a.add(&b), b.sub(&a), a.mul(&b), a.div(&b), a.pow(&b), a.maximum(&b), a.minimum(&b), a.lt(&b), b.eq(&a)] {
        assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    }
    assert!(matches!(a.matmul(&b), Err(Error::DType { .. })));
    assert!(matches!(Tensor::concat(&[a.clone(), b.clone()], 0), Err(Error::DType { .. })));
    assert!(matches!(Tensor::stack(&[a.clone(), b.clone()], 0), Err(Error::DType { .. })));
    assert!(matches!(Tensor::where_(&a, &b, &b), Err(Error::DType { .. })));
    assert!(matches!(Tensor::where_(&b, &a, &b), Err(Error::DType { .. })));
    assert!(matches!(a.to_vec::<f64>(), Err(Error::DType { .. })));
    assert!(matches!(a.assign(&b), Err(Error::DType { .. })));
}

#[test]
fn index_errors() {
    let x = Tensor::zeros(&[2, 3], DType::F64);
    assert!(matches!(x.select(0, 2), Err(Error::Index { index: 2, dim: 0, size: 2, .. })));
    assert!(matches!(x.select(1, -4), Err(Error::Index { index: -4, dim: 1, size: 3, .. })));
    assert!(matches!(x.index_select(1, &[0, 3]), Err(Error::Index { index: 3, dim: 1, size: 3, .. })));
    assert!(matches!(x.index_select(-2, &[5]), Err(Error::Index { index: 5, dim: 0, .. })));
}

#[test]
fn value_errors() {
    let x = Tensor::zeros(&[2, 3], DType::F64);
    assert!(matches!(x.slice(0, 0, 2, 0), Err(Error::Value { .. })));
    assert!(matches!(x.permute(&[0, 0]), Err(Error::Value { .. })));
    assert!(matches!(x.item(), Err(Error::Value { .. })));
    assert!(matches!(Tensor::concat(&[], 0), Err(Error::Value { .. })));
    assert!(matches!(Tensor::stack(&[], 0), Err(Error::Value { .. })));
    let e = Tensor::zeros(&[2, 0], DType::F64);
    assert!(matches!(e.max_axes(Some(&[1]), false), Err(Error::Value { .. })));
    assert!(matches!(e.min_axes(None, false), Err(Error::Value { .. })));
    assert!(matches!(e.logsumexp(Some(&[1]), false), Err(Error::Value { .. })));
    assert_tensor(&e.sum_axes(Some(&[1]), false).unwrap(), &[2], &[0.0, 0.0]);
    assert!(matches!(x.transpose(0, 1).unwrap().with_slice_mut::<f64, _>(|_| ()), Err(Error::Value { .. })));
}

#[test]
fn grad_errors() {
    let x = t(&[1.0, 2.0], &[2]);
    push_watch(std::slice::from_ref(&x));
    let y = x.mul(&x).unwrap();
    pop_watch();
    // A non-scalar root needs a seed.
    assert!(matches!(grad(&y, std::slice::from_ref(&x), None), Err(Error::Autodiff(_))));
    // A seed of the wrong shape.
    assert!(matches!(grad(&y, std::slice::from_ref(&x), Some(&t(&[1.0], &[1]))), Err(Error::Autodiff(_))));
    // With a proper seed it works.
    let g = grad(&y, std::slice::from_ref(&x), Some(&t(&[1.0, 1.0], &[2]))).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[2.0, 4.0]);
    // A one-element non-0-d root is fine without a seed.
    push_watch(std::slice::from_ref(&x));
    let z = x.sum_axes(None, true).unwrap();
    pop_watch();
    assert_eq!(z.shape(), &[1]);
    assert_close(&vals(grad(&z, std::slice::from_ref(&x), None).unwrap()[0].as_ref().unwrap()), &[1.0, 1.0]);
    // An f32 seed for an f64 root is cast.
    let g = grad(&y, std::slice::from_ref(&x), Some(&t32(&[1.0, 2.0], &[2]))).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[2.0, 8.0]);
}

#[test]
fn no_grad_records_nothing() {
    let x = t(&[1.0], &[1]);
    push_watch(std::slice::from_ref(&x));
    let y = fluxrs_core::no_grad(|| x.exp().unwrap());
    let z = x.exp().unwrap();
    pop_watch();
    assert!(!y.has_node());
    assert!(z.has_node());
    assert_eq!(z.op_name(), Some("exp"));
    // Outside any context nothing records either.
    assert!(!x.exp().unwrap().has_node());
    assert!(!z.detach().has_node());
}

#[test]
fn softmax_with_masked_entries() {
    let ninf = f64::NEG_INFINITY;
    let x = t(&[0.0, ninf, 1.0, ninf, ninf, 2.0], &[2, 3]);
    let s = vals(&x.softmax(1).unwrap());
    let e = 1f64.exp();
    assert_close(&s, &[1.0 / (1.0 + e), 0.0, e / (1.0 + e), 0.0, 0.0, 1.0]);
    let ls = vals(&x.logsoftmax(1).unwrap());
    assert_eq!(ls[1], ninf);
    assert_eq!(ls[5], 0.0);
    // Gradients stay finite and masked entries get exactly zero.
    push_watch(std::slice::from_ref(&x));
    let l = x.softmax(1).unwrap().mul(&t(&[1.0, 2.0, 3.0], &[3])).unwrap().sum_all().unwrap();
    pop_watch();
    let g = vals(&grad(&l, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert_eq!((g[1], g[3], g[4]), (0.0, 0.0, 0.0));
}

#[test]
fn large_tensors_take_the_parallel_paths() {
    // Above PAR_THRESHOLD (65536 elements) elementwise kernels use rayon, and above
    // 2^20 multiply-adds gemm does: results must equal a plain serial computation.
    let mut rng = Rng::new(300);
    let (r, c) = (300usize, 256usize);
    let a = rand(&mut rng, &[r, c]);
    let b = rand(&mut rng, &[c]);
    let (av, bv) = (vals(&a), vals(&b));
    let sum = a.add(&b).unwrap();
    let want: Vec<f64> = (0..r * c).map(|i| av[i] + bv[i % c]).collect();
    assert_eq!(vals(&sum), want);
    let want: Vec<f64> = av.iter().map(|v| v.exp()).collect();
    assert_eq!(vals(&a.exp().unwrap()), want);
    // Transposed (non-contiguous) large operand through the broadcasting path.
    let at = a.transpose(0, 1).unwrap();
    let prod = at.mul(&at).unwrap();
    let pv = vals(&prod);
    for i in (0..c).step_by(17) {
        for j in (0..r).step_by(13) {
            assert_eq!(pv[i * r + j], av[j * c + i] * av[j * c + i]);
        }
    }
    // Row sums.
    let rs = vals(&a.sum_axes(Some(&[1]), false).unwrap());
    for i in 0..r {
        let s: f64 = av[i * c..(i + 1) * c].iter().sum();
        assert!((rs[i] - s).abs() < 1e-12);
    }
    // A large matmul, also with a transposed operand.
    let (m, k, n) = (96usize, 160usize, 80usize);
    let p = rand(&mut rng, &[m, k]);
    let q = rand(&mut rng, &[n, k]);
    let (pv, qv) = (vals(&p), vals(&q));
    let out = vals(&p.matmul(&q.transpose(0, 1).unwrap()).unwrap());
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|l| pv[i * k + l] * qv[j * k + l]).sum();
            assert!((out[i * n + j] - s).abs() < 1e-12, "({i},{j}): {} vs {s}", out[i * n + j]);
        }
    }
    // And its gradient: d sum(P Q^T) / dP = 1 Q (column sums of Q broadcast over rows).
    push_watch(std::slice::from_ref(&p));
    let l = p.matmul(&q.transpose(0, 1).unwrap()).unwrap().sum_all().unwrap();
    pop_watch();
    let g = vals(&grad(&l, std::slice::from_ref(&p), None).unwrap()[0].clone().unwrap());
    for i in 0..m {
        for l in 0..k {
            let s: f64 = (0..n).map(|j| qv[j * k + l]).sum();
            assert!((g[i * k + l] - s).abs() < 1e-12);
        }
    }
}

#[test]
fn empty_tensors() {
    let x = Tensor::zeros(&[3, 0], DType::F64);
    assert_eq!(x.exp().unwrap().shape(), &[3, 0]);
    assert_eq!(x.add(&t(&[1.0], &[])).unwrap().shape(), &[3, 0]);
    assert_eq!(x.index_select(0, &[]).unwrap().shape(), &[0, 0]);
    assert_eq!(Tensor::concat(&[x.clone(), t(&[1.0, 2.0, 3.0], &[3, 1])], 1).unwrap().shape(), &[3, 1]);
    assert_eq!(x.transpose(0, 1).unwrap().matmul(&t(&[1.0, 2.0, 3.0], &[3])).unwrap().shape(), &[0]);
    // Gradients through an empty slice are zeros of the input's shape.
    let y = t(&[1.0, 2.0, 3.0], &[3]);
    push_watch(std::slice::from_ref(&y));
    let l = y.slice(0, 2, 1, 1).unwrap().sum_all().unwrap().add(&y.sum_all().unwrap()).unwrap();
    pop_watch();
    assert_close(&vals(&grad(&l, std::slice::from_ref(&y), None).unwrap()[0].clone().unwrap()), &[1.0, 1.0, 1.0]);
}

#[test]
fn relu_propagates_nan() {
    let x = Tensor::from_vec(vec![f32::NAN, -1.0, 2.0], &[3]).unwrap();
    let y = x.relu().unwrap().to_vec::<f32>().unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
}
