//! Long graphs (a recurrent model unrolled over many steps): differentiating them and
//! dropping them must not recurse once per node.

mod common;

use std::thread;

use common::*;
use fluxrs_core::{grad, pop_watch, push_watch};

/// `steps` of h = tanh(h * w + x), the gradient w.r.t. w, then everything dropped.
fn unrolled(steps: usize) -> (f64, f64) {
    let w = t(&[0.5], &[1]);
    let x = t(&[0.1], &[1]);
    push_watch(std::slice::from_ref(&w));
    let mut h = t(&[0.0], &[1]);
    for _ in 0..steps {
        h = h.mul(&w).unwrap().add(&x).unwrap().tanh().unwrap();
    }
    pop_watch();
    let l = h.sum_all().unwrap();
    let g = grad(&l, std::slice::from_ref(&w), None).unwrap().remove(0).unwrap();
    let out = (l.item().unwrap(), g.item().unwrap());
    drop((h, l, g));
    out
}

#[test]
fn deep_chain_gradient_and_drop() {
    // 3 ops per step: 300k nodes deep.
    let (l, g) = unrolled(100_000);
    // The recurrence converges to the fixed point h* = tanh(0.5 h* + 0.1), and the
    // gradient to dh*/dw = h* (1 - h*^2) / (1 - 0.5 (1 - h*^2)).
    let mut hs = 0.0f64;
    for _ in 0..200 {
        hs = (0.5 * hs + 0.1).tanh();
    }
    let d = 1.0 - hs * hs;
    assert_close_tol(&[l, g], &[hs, hs * d / (1.0 - 0.5 * d)], 1e-12, 1e-10);
}

#[test]
fn deep_chain_on_a_small_stack() {
    // 256 KiB of stack is far less than a recursive drop of 60k nodes needs.
    let r = thread::Builder::new().stack_size(256 * 1024).spawn(|| unrolled(20_000)).unwrap().join();
    assert!(r.is_ok());
}

#[test]
fn deep_second_order_graph() {
    // The recorded first gradient of a long chain is itself a long graph.
    let x = t(&[0.3], &[]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    let mut y = x.clone();
    for _ in 0..20_000 {
        y = y.sin().unwrap().add(&x).unwrap().scale(0.5).unwrap();
    }
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    pop_watch();
    let gg = grad(&g, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert!(g.item().unwrap().is_finite() && gg.item().unwrap().is_finite());
    drop((y, g, gg));
    assert!(!x.sin().unwrap().has_node());
}
