//! `grad_with` reports each leaf's gradient once it is final: the value reported equals the
//! value returned, leaves are reported in backward order, and a callback error stops the pass.

mod common;

use common::*;
use fluxrs_core::{grad, grad_with, pop_watch, push_watch, Error, Tensor};

/// (leaf index, gradient values at the time of the call), in the order of the calls.
type Reports = Vec<(usize, Vec<f64>)>;

/// What `grad_with` reported, and what it returned.
fn reported(y: &Tensor, leaves: &[Tensor]) -> (Reports, Vec<Option<Tensor>>) {
    let mut seen = vec![];
    let gs = grad_with(
        y,
        leaves,
        None,
        Some(&mut |i, g: &Tensor| {
            seen.push((i, g.to_vec_f64()));
            Ok(())
        }),
    )
    .unwrap();
    (seen, gs)
}

#[test]
fn two_layers_report_the_last_layer_first_with_final_values() {
    let mut rng = Rng::new(3);
    let x = t(&rng.vec(8), &[4, 2]);
    let w1 = t(&rng.vec(6), &[2, 3]);
    let b1 = t(&rng.vec(3), &[3]);
    let w2 = t(&rng.vec(6), &[3, 2]);
    let b2 = t(&rng.vec(2), &[2]);
    let leaves = [w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    push_watch(&leaves);
    let h = x.matmul(&w1).unwrap().add(&b1).unwrap().tanh().unwrap();
    let y = h.matmul(&w2).unwrap().add(&b2).unwrap().tanh().unwrap().sum_all().unwrap();
    pop_watch();
    let (seen, gs) = reported(&y, &leaves);
    let order: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3], "each leaf once: {order:?}");
    let pos = |i: usize| order.iter().position(|&j| j == i).unwrap();
    assert!(pos(2) < pos(0) && pos(3) < pos(0) && pos(2) < pos(1) && pos(3) < pos(1), "second layer first: {order:?}");
    let plain = grad(&y, &leaves, None).unwrap();
    for (i, v) in &seen {
        assert_eq!(v, &gs[*i].as_ref().unwrap().to_vec_f64());
        assert_eq!(v, &plain[*i].as_ref().unwrap().to_vec_f64());
    }
}

#[test]
fn a_weight_used_twice_is_reported_after_its_first_use() {
    // w is read by the first and the last op of the forward pass: its gradient is complete
    // only at the end of the backward pass, after v's.
    let mut rng = Rng::new(5);
    let x = t(&rng.vec(6), &[2, 3]);
    let w = t(&rng.vec(9), &[3, 3]);
    let v = t(&rng.vec(9), &[3, 3]);
    let leaves = [w.clone(), v.clone()];
    push_watch(&leaves);
    let h = x.matmul(&w).unwrap().tanh().unwrap().matmul(&v).unwrap().tanh().unwrap();
    let y = h.matmul(&w).unwrap().sum_all().unwrap();
    pop_watch();
    let (seen, gs) = reported(&y, &leaves);
    assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 0]);
    assert_eq!(seen[1].1, gs[0].as_ref().unwrap().to_vec_f64());
}

#[test]
fn unreached_leaves_are_not_reported_and_a_watched_root_is() {
    let a = t(&[1.0, 2.0], &[2]);
    let unused = t(&[3.0], &[1]);
    push_watch(&[a.clone(), unused.clone()]);
    let y = a.mul(&a).unwrap().sum_all().unwrap();
    pop_watch();
    let (seen, gs) = reported(&y, &[a.clone(), unused.clone(), a.clone()]);
    assert!(gs[1].is_none());
    assert_eq!(seen, vec![(0, vec![2.0, 4.0]), (2, vec![2.0, 4.0])]); // a leaf given twice: both places

    let s = t(&[2.0], &[]);
    push_watch(std::slice::from_ref(&s));
    let (seen, _) = reported(&s, std::slice::from_ref(&s));
    pop_watch();
    assert_eq!(seen, vec![(0, vec![1.0])]);
}

#[test]
fn a_callback_error_stops_the_backward_pass() {
    let a = t(&[1.0, 2.0], &[2]);
    let b = t(&[3.0, 4.0], &[2]);
    push_watch(&[a.clone(), b.clone()]);
    let y = a.tanh().unwrap().mul(&b).unwrap().sum_all().unwrap();
    pop_watch();
    let mut calls = 0;
    let r = grad_with(
        &y,
        &[a, b],
        None,
        Some(&mut |_, _: &Tensor| {
            calls += 1;
            Err(Error::Value { op: "test", msg: "stop".into() })
        }),
    );
    assert!(matches!(r, Err(Error::Value { op: "test", .. })));
    assert_eq!(calls, 1);
}
