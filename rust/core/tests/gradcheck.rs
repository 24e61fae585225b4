//! Reverse-mode gradients of every op against central finite differences (float64).

mod common;

use common::*;
use fluxrs_core::ops::UnaryOp;
use fluxrs_core::{grad, pop_watch, push_watch, Tensor};

// ---------------------------------------------------------------- helpers

type Bin = fn(&Tensor, &Tensor) -> fluxrs_core::Result<Tensor>;

/// Shape pairs covering equal shapes, numpy broadcasting both ways, rank promotion and
/// 0-d scalars.
const BROADCAST_PAIRS: &[(&[usize], &[usize])] = &[
    (&[3, 4], &[3, 4]),
    (&[3, 1, 4], &[2, 4]),
    (&[2, 4], &[3, 1, 4]),
    (&[], &[2, 3]),
    (&[2, 3], &[]),
    (&[], &[]),
    (&[4], &[3, 4]),
    (&[3, 1], &[1, 4]),
    (&[2, 1, 3], &[2, 4, 1]),
    (&[1], &[2, 3]),
];

fn check_binary(op: Bin, seed: u64, make_a: fn(&mut Rng, &[usize]) -> Tensor, make_b: fn(&mut Rng, &[usize]) -> Tensor) {
    let mut rng = Rng::new(seed);
    for (sa, sb) in BROADCAST_PAIRS {
        let a = make_a(&mut rng, sa);
        let b = make_b(&mut rng, sb);
        check_grad(move |x| op(&x[0], &x[1]).unwrap(), vec![a, b]);
    }
    // Non-contiguous operands: transposed and strided views of the inputs.
    let a = make_a(&mut rng, &[4, 3]);
    let b = make_b(&mut rng, &[3, 8]);
    check_grad(move |x| op(&x[0].transpose(0, 1).unwrap(), &x[1].slice(1, 1, 8, 2).unwrap()).unwrap(), vec![a, b]);
    // The same tensor on both sides.
    let a = make_a(&mut rng, &[2, 3]);
    check_grad(move |x| op(&x[0], &x[0]).unwrap(), vec![a]);
}

fn pos(rng: &mut Rng, s: &[usize]) -> Tensor {
    rand_in(rng, s, 0.5, 2.0)
}
fn any(rng: &mut Rng, s: &[usize]) -> Tensor {
    rand(rng, s)
}
fn distinct(rng: &mut Rng, s: &[usize]) -> Tensor {
    rand_distinct(rng, s)
}

// ---------------------------------------------------------------- binary

#[test]
fn grad_add() {
    check_binary(|a, b| a.add(b), 1, any, any);
}

#[test]
fn grad_sub() {
    check_binary(|a, b| a.sub(b), 2, any, any);
}

#[test]
fn grad_mul() {
    check_binary(|a, b| a.mul(b), 3, any, any);
}

#[test]
fn grad_div() {
    check_binary(|a, b| a.div(b), 4, any, pos);
}

#[test]
fn grad_pow_positive_bases() {
    check_binary(|a, b| a.pow(b), 5, pos, any);
    // Integer-like exponents too.
    let mut rng = Rng::new(55);
    let a = pos(&mut rng, &[3, 2]);
    check_grad(|x| x[0].pow(&t(&[3.0], &[])).unwrap(), vec![a.clone()]);
    check_grad(|x| x[0].pow(&t(&[-2.0, 0.5], &[2])).unwrap(), vec![a]);
}

#[test]
fn grad_maximum() {
    // Distinct values in both operands: with overlapping ranges there are no ties.
    check_binary(|a, b| a.maximum(b), 6, distinct, distinct);
}

#[test]
fn grad_minimum() {
    check_binary(|a, b| a.minimum(b), 7, distinct, distinct);
}

#[test]
fn grad_scale_and_add_scalar() {
    let mut rng = Rng::new(8);
    check_grad(|x| x[0].scale(-2.5).unwrap().add_scalar(3.0).unwrap(), vec![rand(&mut rng, &[2, 3])]);
}

// ---------------------------------------------------------------- unary

fn check_unary(op: UnaryOp, seed: u64, make: impl Fn(&mut Rng, &[usize]) -> Tensor) {
    let mut rng = Rng::new(seed);
    for shape in [&[][..], &[5][..], &[2, 3][..], &[2, 3, 2][..]] {
        let x = make(&mut rng, shape);
        check_grad(move |x| x[0].unary(op).unwrap(), vec![x]);
    }
    // A non-contiguous input.
    let x = make(&mut rng, &[3, 4]);
    check_grad(move |x| x[0].transpose(0, 1).unwrap().unary(op).unwrap(), vec![x]);
    // Composed with itself (the backward rule's use of the output must be right).
    let x = make(&mut rng, &[4]);
    check_grad(move |x| x[0].unary(op).unwrap().mul(&x[0]).unwrap(), vec![x]);
}

#[test]
fn grad_neg() {
    check_unary(UnaryOp::Neg, 10, any);
}
#[test]
fn grad_exp() {
    check_unary(UnaryOp::Exp, 11, any);
}
#[test]
fn grad_log() {
    check_unary(UnaryOp::Log, 12, pos);
}
#[test]
fn grad_log1p() {
    check_unary(UnaryOp::Log1p, 13, |r, s| rand_in(r, s, -0.5, 2.0));
}
#[test]
fn grad_sqrt() {
    check_unary(UnaryOp::Sqrt, 14, pos);
}
#[test]
fn grad_abs() {
    check_unary(UnaryOp::Abs, 15, |r, s| rand_away(r, s, &[0.0]));
}
#[test]
fn grad_tanh() {
    check_unary(UnaryOp::Tanh, 16, |r, s| rand_in(r, s, -3.0, 3.0));
}
#[test]
fn grad_sigmoid() {
    check_unary(UnaryOp::Sigmoid, 17, |r, s| rand_in(r, s, -5.0, 5.0));
}
#[test]
fn grad_relu() {
    check_unary(UnaryOp::Relu, 18, |r, s| rand_away(r, s, &[0.0]));
}
#[test]
fn grad_sin() {
    check_unary(UnaryOp::Sin, 19, |r, s| rand_in(r, s, -3.0, 3.0));
}
#[test]
fn grad_cos() {
    check_unary(UnaryOp::Cos, 20, |r, s| rand_in(r, s, -3.0, 3.0));
}
#[test]
fn grad_softplus() {
    check_unary(UnaryOp::Softplus, 21, |r, s| rand_in(r, s, -5.0, 5.0));
}
#[test]
fn grad_leaky_relu() {
    check_unary(UnaryOp::LeakyRelu(0.1), 22, |r, s| rand_away(r, s, &[0.0]));
    check_unary(UnaryOp::LeakyRelu(0.3), 23, |r, s| rand_away(r, s, &[0.0]));
}
#[test]
fn grad_elu() {
    check_unary(UnaryOp::Elu(1.0), 24, |r, s| rand_away(r, s, &[0.0]));
    check_unary(UnaryOp::Elu(0.5), 25, |r, s| rand_away(r, s, &[0.0]));
}
#[test]
fn grad_clamp() {
    check_unary(UnaryOp::Clamp(-0.5, 0.5), 26, |r, s| rand_away(r, s, &[-0.5, 0.5]));
    let mut rng = Rng::new(27);
    let x = rand_away(&mut rng, &[3, 4], &[-0.2, 0.3]);
    check_grad(|x| x[0].clamp(-0.2, 0.3).unwrap(), vec![x]);
}

// ---------------------------------------------------------------- reductions

type Red = fn(&Tensor, Option<&[isize]>, bool) -> fluxrs_core::Result<Tensor>;

/// Every single axis (positive and negative), pairs of axes, all axes, and the empty
/// axis list, each with and without keepdim, on a (2, 3, 4) input.
fn axis_sets() -> Vec<Option<Vec<isize>>> {
    vec![
        Some(vec![0]),
        Some(vec![1]),
        Some(vec![2]),
        Some(vec![-1]),
        Some(vec![-3]),
        Some(vec![0, 2]),
        Some(vec![2, 0]),
        Some(vec![-1, 1]),
        Some(vec![0, 1]),
        Some(vec![0, 1, 2]),
        None,
    ]
}

fn check_reduction(op: Red, seed: u64) {
    let mut rng = Rng::new(seed);
    for axes in axis_sets() {
        for keepdim in [false, true] {
            let x = rand_distinct(&mut rng, &[2, 3, 4]);
            let ax = axes.clone();
            let out = op(&x, ax.as_deref(), keepdim).unwrap();
            // Output shape follows numpy.
            let norm: Vec<usize> = match &axes {
                None => vec![0, 1, 2],
                Some(a) => a.iter().map(|&a| if a < 0 { (a + 3) as usize } else { a as usize }).collect(),
            };
            let want: Vec<usize> =
                [2usize, 3, 4].iter().enumerate().filter_map(|(i, &d)| if norm.contains(&i) { keepdim.then_some(1) } else { Some(d) }).collect();
            assert_eq!(out.shape(), &want[..], "axes {axes:?} keepdim {keepdim}");
            check_grad(move |x| op(&x[0], ax.as_deref(), keepdim).unwrap(), vec![x]);
        }
    }
    // 1-D, 0-d and non-contiguous inputs.
    let x = rand_distinct(&mut rng, &[5]);
    check_grad(move |x| op(&x[0], None, false).unwrap(), vec![x]);
    let x = rand_distinct(&mut rng, &[]);
    check_grad(move |x| op(&x[0], None, false).unwrap(), vec![x]);
    let x = rand_distinct(&mut rng, &[4, 3]);
    check_grad(move |x| op(&x[0].transpose(0, 1).unwrap(), Some(&[1]), false).unwrap(), vec![x]);
}

#[test]
fn grad_sum() {
    check_reduction(|x, a, k| x.sum_axes(a, k), 30);
}
#[test]
fn grad_mean() {
    check_reduction(|x, a, k| x.mean_axes(a, k), 31);
}
#[test]
fn grad_max() {
    check_reduction(|x, a, k| x.max_axes(a, k), 32);
}
#[test]
fn grad_min() {
    check_reduction(|x, a, k| x.min_axes(a, k), 33);
}
#[test]
fn grad_logsumexp() {
    check_reduction(|x, a, k| x.logsumexp(a, k), 34);
    // Large values: the max shift must not upset the gradient.
    let x = t(&[100.0, 101.0, 99.5, -3.0, 0.0, 2.0], &[2, 3]);
    check_grad(|x| x[0].logsumexp(Some(&[1]), false).unwrap(), vec![x]);
}

#[test]
fn grad_sum_all_plain() {
    // Plain sums (no weights): the incoming gradient is a zero-stride broadcast view.
    let mut rng = Rng::new(35);
    let a = rand(&mut rng, &[3, 4]);
    let b = rand(&mut rng, &[4, 2]);
    push_watch(&[a.clone(), b.clone()]);
    let l = a.matmul(&b).unwrap().tanh().unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, &[a.clone(), b.clone()], None).unwrap();
    // d/da sum(tanh(a@b)) = (1 - tanh^2) @ b^T
    let y = a.matmul(&b).unwrap().tanh().unwrap();
    let d = y.mul(&y).unwrap().scale(-1.0).unwrap().add_scalar(1.0).unwrap();
    let ga = d.matmul(&b.transpose(0, 1).unwrap()).unwrap();
    let gb = a.transpose(0, 1).unwrap().matmul(&d).unwrap();
    assert_close_tol(&vals(g[0].as_ref().unwrap()), &vals(&ga), 1e-14, 1e-12);
    assert_close_tol(&vals(g[1].as_ref().unwrap()), &vals(&gb), 1e-14, 1e-12);
    // And a sum straight into a matmul.
    check_grad(|x| x[0].matmul(&x[1]).unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    check_grad(|x| x[0].sum_axes(Some(&[0]), true).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
}

#[test]
fn grad_sum_to() {
    let mut rng = Rng::new(36);
    for target in [&[3, 1][..], &[1, 4], &[4], &[2, 1, 4], &[2, 3, 4], &[1, 1, 1], &[]] {
        let x = rand(&mut rng, &[2, 3, 4]);
        let target = target.to_vec();
        check_grad(move |x| x[0].sum_to(&target).unwrap(), vec![x]);
    }
}

// ---------------------------------------------------------------- matmul

fn check_matmul(sa: &[usize], sb: &[usize], want: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let a = rand(&mut rng, sa);
    let b = rand(&mut rng, sb);
    assert_eq!(a.matmul(&b).unwrap().shape(), want, "{sa:?} @ {sb:?}");
    check_grad(|x| x[0].matmul(&x[1]).unwrap(), vec![a, b]);
}

#[test]
fn grad_matmul_2d() {
    check_matmul(&[3, 4], &[4, 5], &[3, 5], 40);
    check_matmul(&[1, 4], &[4, 1], &[1, 1], 41);
}
#[test]
fn grad_matmul_1d() {
    check_matmul(&[4], &[4, 5], &[5], 42);
    check_matmul(&[3, 4], &[4], &[3], 43);
    check_matmul(&[4], &[4], &[], 44);
    check_matmul(&[4], &[2, 4, 3], &[2, 3], 45);
    check_matmul(&[2, 3, 4], &[4], &[2, 3], 46);
}
#[test]
fn grad_matmul_batched() {
    check_matmul(&[2, 3, 4], &[2, 4, 5], &[2, 3, 5], 47);
    check_matmul(&[2, 3, 4], &[4, 5], &[2, 3, 5], 48);
    check_matmul(&[3, 4], &[2, 4, 5], &[2, 3, 5], 49);
    check_matmul(&[1, 3, 4], &[2, 4, 5], &[2, 3, 5], 50);
    check_matmul(&[2, 3, 4], &[1, 4, 5], &[2, 3, 5], 51);
    check_matmul(&[2, 1, 3, 4], &[1, 3, 4, 2], &[2, 3, 3, 2], 52);
    check_matmul(&[2, 2, 3, 4], &[4, 5], &[2, 2, 3, 5], 53);
}
#[test]
fn grad_matmul_non_contiguous() {
    let mut rng = Rng::new(54);
    // a^T @ b with a stored (4, 3).
    let a = rand(&mut rng, &[4, 3]);
    let b = rand(&mut rng, &[4, 5]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
    // a @ b^T, b^T @ a^T.
    let a = rand(&mut rng, &[3, 4]);
    let b = rand(&mut rng, &[5, 4]);
    check_grad(|x| x[0].matmul(&x[1].transpose(0, 1).unwrap()).unwrap(), vec![a.clone(), b.clone()]);
    check_grad(|x| x[1].matmul(&x[0].transpose(0, 1).unwrap()).unwrap(), vec![a, b]);
    // Strided slices, a batched transposed view and a permuted 3-D operand.
    let a = rand(&mut rng, &[3, 8]);
    let b = rand(&mut rng, &[4, 5]);
    check_grad(|x| x[0].slice(1, 0, 8, 2).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
    let a = rand(&mut rng, &[2, 4, 3]);
    let b = rand(&mut rng, &[2, 4, 5]);
    check_grad(|x| x[0].transpose(-1, -2).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
    let a = rand(&mut rng, &[3, 2, 4]);
    let b = rand(&mut rng, &[4, 5]);
    check_grad(|x| x[0].permute(&[1, 0, 2]).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
    // Operands starting at an offset into their buffer (select / slice from 1).
    let a = rand(&mut rng, &[3, 2, 4]);
    let b = rand(&mut rng, &[6, 2]);
    check_grad(|x| x[0].select(0, 2).unwrap().transpose(0, 1).unwrap().matmul(&x[1].slice(0, 1, 6, 2).unwrap().transpose(0, 1).unwrap()).unwrap(), vec![a, b]);
    // A broadcast (zero-stride) operand.
    let a = rand(&mut rng, &[1, 4]);
    let b = rand(&mut rng, &[4, 2]);
    check_grad(|x| x[0].broadcast_to(&[3, 4]).unwrap().matmul(&x[1]).unwrap(), vec![a, b]);
}
#[test]
fn grad_matmul_chain() {
    let mut rng = Rng::new(56);
    let (x, w1, b1, w2) = (rand(&mut rng, &[5, 3]), rand(&mut rng, &[3, 4]), rand(&mut rng, &[4]), rand(&mut rng, &[4, 2]));
    check_grad(|p| p[0].matmul(&p[1]).unwrap().add(&p[2]).unwrap().tanh().unwrap().matmul(&p[3]).unwrap(), vec![x, w1, b1, w2]);
}

// ---------------------------------------------------------------- shape ops

#[test]
fn grad_reshape() {
    let mut rng = Rng::new(60);
    check_grad(|x| x[0].reshape(&[3, 2, 2]).unwrap(), vec![rand(&mut rng, &[2, 6])]);
    check_grad(|x| x[0].reshape(&[12]).unwrap(), vec![rand(&mut rng, &[2, 6])]);
    check_grad(|x| x[0].reshape(&[]).unwrap(), vec![rand(&mut rng, &[1, 1])]);
    // Reshape of a non-contiguous view copies.
    check_grad(|x| x[0].transpose(0, 1).unwrap().reshape(&[4, 3]).unwrap(), vec![rand(&mut rng, &[2, 6])]);
}

#[test]
fn grad_permute_3d() {
    let mut rng = Rng::new(61);
    let perms: [[isize; 3]; 7] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0], [-1, 0, -2]];
    for p in perms {
        let x = rand(&mut rng, &[2, 3, 4]);
        check_grad(move |x| x[0].permute(&p).unwrap(), vec![x]);
        // Permute then a shape-sensitive op.
        let x = rand(&mut rng, &[2, 3, 4]);
        check_grad(move |x| x[0].permute(&p).unwrap().softmax(1).unwrap(), vec![x]);
    }
}

#[test]
fn grad_transpose() {
    let mut rng = Rng::new(62);
    check_grad(|x| x[0].transpose(0, 1).unwrap(), vec![rand(&mut rng, &[3, 4])]);
    check_grad(|x| x[0].transpose(0, -1).unwrap(), vec![rand(&mut rng, &[2, 3, 4])]);
    check_grad(|x| x[0].transpose(1, 1).unwrap(), vec![rand(&mut rng, &[2, 3])]);
}

#[test]
fn grad_broadcast_to() {
    let mut rng = Rng::new(63);
    check_grad(|x| x[0].broadcast_to(&[2, 3, 4]).unwrap(), vec![rand(&mut rng, &[3, 1])]);
    check_grad(|x| x[0].broadcast_to(&[2, 3]).unwrap(), vec![rand(&mut rng, &[])]);
    check_grad(|x| x[0].broadcast_to(&[5, 4]).unwrap(), vec![rand(&mut rng, &[4])]);
    check_grad(|x| x[0].broadcast_to(&[2, 3]).unwrap(), vec![rand(&mut rng, &[2, 3])]);
}

#[test]
fn grad_slice() {
    let mut rng = Rng::new(64);
    for (axis, start, stop, step) in [(0, 0, 5, 1), (0, 1, 5, 2), (1, 0, 7, 3), (1, 2, 100, 2), (-1, 6, 7, 1), (1, 5, 3, 1), (0, 1, 4, 4)] {
        let x = rand(&mut rng, &[5, 7]);
        check_grad(move |x| x[0].slice(axis, start, stop, step).unwrap(), vec![x]);
    }
    // Slicing a non-contiguous view, slicing twice and slicing a 3-D middle axis.
    let x = rand(&mut rng, &[5, 7]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().slice(0, 1, 7, 2).unwrap(), vec![x]);
    let x = rand(&mut rng, &[9, 3]);
    check_grad(|x| x[0].slice(0, 1, 9, 2).unwrap().slice(0, 1, 4, 2).unwrap(), vec![x]);
    let x = rand(&mut rng, &[2, 7, 3]);
    check_grad(|x| x[0].slice(1, 1, 7, 3).unwrap().exp().unwrap(), vec![x]);
}

#[test]
fn grad_select() {
    let mut rng = Rng::new(65);
    for (axis, index) in [(0, 0), (0, -1), (1, 2), (1, -3), (-1, -2), (2, 1)] {
        let x = rand(&mut rng, &[2, 3, 4]);
        check_grad(move |x| x[0].select(axis, index).unwrap(), vec![x]);
    }
    let x = rand(&mut rng, &[3]);
    check_grad(|x| x[0].select(0, -1).unwrap(), vec![x]);
}

#[test]
fn grad_index_select() {
    let mut rng = Rng::new(66);
    let x = rand(&mut rng, &[4, 3]);
    check_grad(|x| x[0].index_select(0, &[2, 0, 2, 2]).unwrap(), vec![x]);
    let x = rand(&mut rng, &[2, 3, 4]);
    check_grad(|x| x[0].index_select(1, &[1, 1, 0]).unwrap(), vec![x]);
    let x = rand(&mut rng, &[2, 3, 4]);
    check_grad(|x| x[0].index_select(-1, &[3, 0, 3, 1, 3]).unwrap(), vec![x]);
    let x = rand(&mut rng, &[4, 3]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().index_select(1, &[3, 3, 1]).unwrap(), vec![x]);
}

#[test]
fn grad_concat() {
    let mut rng = Rng::new(67);
    let (a, b, c) = (rand(&mut rng, &[2, 1, 3]), rand(&mut rng, &[2, 4, 3]), rand(&mut rng, &[2, 2, 3]));
    check_grad(|x| Tensor::concat(x, 1).unwrap(), vec![a, b, c]);
    let (a, b) = (rand(&mut rng, &[2, 3]), rand(&mut rng, &[4, 3]));
    check_grad(|x| Tensor::concat(x, 0).unwrap(), vec![a, b]);
    let (a, b) = (rand(&mut rng, &[2, 3]), rand(&mut rng, &[2, 1]));
    check_grad(|x| Tensor::concat(x, -1).unwrap(), vec![a, b]);
    // The same tensor twice, and a non-contiguous part.
    let a = rand(&mut rng, &[3, 2]);
    check_grad(|x| Tensor::concat(&[x[0].clone(), x[0].transpose(0, 1).unwrap().reshape(&[3, 2]).unwrap(), x[0].clone()], 1).unwrap(), vec![a]);
    let a = rand(&mut rng, &[2, 3]);
    let b = rand(&mut rng, &[3, 3]);
    check_grad(|x| Tensor::concat(&[x[0].transpose(0, 1).unwrap(), x[1].clone()], 1).unwrap(), vec![a, b]);
}

#[test]
fn grad_stack() {
    let mut rng = Rng::new(68);
    for axis in [0, 1, 2, -1, -3] {
        let (a, b, c) = (rand(&mut rng, &[2, 3]), rand(&mut rng, &[2, 3]), rand(&mut rng, &[2, 3]));
        check_grad(move |x| Tensor::stack(x, axis).unwrap(), vec![a, b, c]);
    }
    let a = rand(&mut rng, &[3]);
    check_grad(|x| Tensor::stack(&[x[0].clone(), x[0].exp().unwrap()], 1).unwrap(), vec![a]);
}

#[test]
fn grad_contiguous() {
    let mut rng = Rng::new(69);
    let x = rand(&mut rng, &[3, 4]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().contiguous().unwrap(), vec![x.clone()]);
    check_grad(|x| x[0].contiguous().unwrap(), vec![x]);
}

// ---------------------------------------------------------------- softmax & where

#[test]
fn grad_softmax_each_axis() {
    let mut rng = Rng::new(70);
    for axis in [0, 1, 2, -1, -2, -3] {
        let x = rand_in(&mut rng, &[2, 3, 4], -2.0, 2.0);
        check_grad(move |x| x[0].softmax(axis).unwrap(), vec![x]);
        let x = rand_in(&mut rng, &[2, 3, 4], -2.0, 2.0);
        check_grad(move |x| x[0].logsoftmax(axis).unwrap(), vec![x]);
    }
    let x = rand(&mut rng, &[5]);
    check_grad(|x| x[0].softmax(0).unwrap(), vec![x.clone()]);
    check_grad(|x| x[0].logsoftmax(0).unwrap(), vec![x]);
    // Non-contiguous input and large logits.
    let x = rand(&mut rng, &[4, 3]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().softmax(1).unwrap(), vec![x.clone()]);
    check_grad(|x| x[0].transpose(0, 1).unwrap().logsoftmax(1).unwrap(), vec![x]);
    let x = t(&[500.0, 501.0, 499.0, -2.0, 0.0, 1.0], &[2, 3]);
    check_grad(|x| x[0].softmax(1).unwrap(), vec![x.clone()]);
    check_grad(|x| x[0].logsoftmax(1).unwrap(), vec![x]);
}

#[test]
fn grad_where() {
    let mut rng = Rng::new(71);
    let c = rand(&mut rng, &[3, 4]).gt(&t(&[0.0], &[])).unwrap();
    let (a, b) = (rand(&mut rng, &[3, 4]), rand(&mut rng, &[3, 4]));
    let c1 = c.clone();
    check_grad(move |x| Tensor::where_(&c1, &x[0], &x[1]).unwrap(), vec![a, b]);
    // Broadcasting between condition and both branches.
    let (a, b) = (rand(&mut rng, &[3, 1]), rand(&mut rng, &[4]));
    let c2 = c.clone();
    check_grad(move |x| Tensor::where_(&c2, &x[0], &x[1]).unwrap(), vec![a, b]);
    let cond = rand(&mut rng, &[2, 1, 4]).gt(&t(&[0.0], &[])).unwrap();
    let (a, b) = (rand(&mut rng, &[3, 1]), rand(&mut rng, &[]));
    check_grad(move |x| Tensor::where_(&cond, &x[0], &x[1]).unwrap(), vec![a, b]);
    // A condition computed from the differentiated input (piecewise function).
    let x = rand_away(&mut rng, &[3, 4], &[0.0]);
    check_grad(
        |x| {
            let c = x[0].gt(&t(&[0.0], &[])).unwrap();
            Tensor::where_(&c, &x[0].exp().unwrap(), &x[0].mul(&x[0]).unwrap()).unwrap()
        },
        vec![x],
    );
}

// ---------------------------------------------------------------- composites

#[test]
fn grad_cross_entropy() {
    let mut rng = Rng::new(80);
    let logits = rand_in(&mut rng, &[4, 5], -3.0, 3.0);
    let labels = [1usize, 4, 0, 2];
    let mut onehot = vec![0.0; 20];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * 5 + l] = 1.0;
    }
    let onehot = t(&onehot, &[4, 5]);
    check_grad(
        move |x| x[0].logsoftmax(-1).unwrap().mul(&onehot).unwrap().sum_axes(Some(&[1]), false).unwrap().mean_axes(None, false).unwrap().neg().unwrap(),
        vec![logits],
    );
}

#[test]
fn grad_layer_norm_like() {
    let mut rng = Rng::new(81);
    let x = rand(&mut rng, &[3, 5]);
    check_grad(
        |x| {
            let mu = x[0].mean_axes(Some(&[-1]), true).unwrap();
            let d = x[0].sub(&mu).unwrap();
            let var = d.mul(&d).unwrap().mean_axes(Some(&[-1]), true).unwrap();
            d.div(&var.add_scalar(1e-5).unwrap().sqrt().unwrap()).unwrap()
        },
        vec![x],
    );
}

#[test]
fn grad_shared_subexpressions() {
    // One tensor feeding many paths: gradients must accumulate, not overwrite.
    let mut rng = Rng::new(82);
    let x = rand(&mut rng, &[2, 3]);
    let y = rand(&mut rng, &[3]);
    check_grad(
        |p| {
            let a = p[0].mul(&p[1]).unwrap();
            let b = a.exp().unwrap().add(&a).unwrap();
            let c = b.mul(&p[0]).unwrap().sub(&a.sin().unwrap()).unwrap();
            c.add(&p[1].broadcast_to(&[2, 3]).unwrap()).unwrap()
        },
        vec![x, y],
    );
}

#[test]
fn grad_of_unused_input_is_none() {
    let x = t(&[1.0, 2.0], &[2]);
    let y = t(&[3.0], &[]);
    push_watch(&[x.clone(), y.clone()]);
    let l = x.mul(&x).unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, &[x.clone(), y], None).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[2.0, 4.0]);
    assert!(g[1].is_none());
    // Without a surrounding context the gradients are plain values.
    assert!(!g[0].as_ref().unwrap().has_node());
}

#[test]
fn grad_of_leaf_itself_and_seed() {
    let x = t(&[1.0, -2.0, 3.0], &[3]);
    push_watch(std::slice::from_ref(&x));
    let y = x.exp().unwrap();
    pop_watch();
    let seed = t(&[1.0, 10.0, 100.0], &[3]);
    let g = grad(&y, std::slice::from_ref(&x), Some(&seed)).unwrap();
    let want: Vec<f64> = [1.0f64, -2.0, 3.0].iter().zip([1.0, 10.0, 100.0]).map(|(v, s)| v.exp() * s).collect();
    assert_close(&vals(g[0].as_ref().unwrap()), &want);
    // d x / d x = 1.
    let s = t(&[2.0], &[]);
    let g = grad(&s, std::slice::from_ref(&s), None).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[1.0]);
}

#[test]
fn grad_float32() {
    // float32 gradients flow and keep their dtype.
    let x = t32(&[0.5, -1.0, 2.0], &[3]);
    push_watch(std::slice::from_ref(&x));
    let l = x.mul(&x).unwrap().tanh().unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_eq!(g.dtype(), fluxrs_core::DType::F32);
    let want: Vec<f64> = [0.5f64, -1.0, 2.0].iter().map(|&v| 2.0 * v * (1.0 - (v * v).tanh().powi(2))).collect();
    assert_close_tol(&vals(&g), &want, 1e-6, 1e-5);
}

#[test]
fn grad_through_cast() {
    // Forward through f32 and back: the gradient reaches the f64 leaf, in f64.
    let x = t(&[0.25, -1.5], &[2]);
    push_watch(std::slice::from_ref(&x));
    let l = x.cast(fluxrs_core::DType::F32).unwrap().scale(3.0).unwrap().cast(fluxrs_core::DType::F64).unwrap().sum_all().unwrap();
    pop_watch();
    let g = grad(&l, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_eq!(g.dtype(), fluxrs_core::DType::F64);
    assert_close(&vals(&g), &[3.0, 3.0]);
}

// ---------------------------------------------------------------- the checker itself

#[test]
#[should_panic(expected = "finite differences")]
fn check_grad_catches_a_wrong_gradient() {
    // detach() hides one factor from autodiff: it sees d(c*x)/dx = c but the function is x^2.
    check_grad(|x| x[0].detach().mul(&x[0]).unwrap(), vec![t(&[0.7, -1.2], &[2])]);
}

#[test]
#[should_panic(expected = "finite differences")]
fn check_grad_catches_a_wrong_second_derivative() {
    check_grad2(|x| x[0].detach().mul(&x[0]).unwrap().mul(&x[0]).unwrap().sum_all().unwrap(), vec![t(&[0.7], &[1])]);
}
