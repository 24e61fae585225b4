//! Gradients of gradients: `grad` called inside an outer watch records its own backward
//! pass, which can then be differentiated again.

mod common;

use common::*;
use fluxrs_core::ops::UnaryOp;
use fluxrs_core::{backprop, grad, pop_watch, push_watch, Tensor};

#[test]
fn second_derivative_of_cube() {
    let x = t(&[2.0], &[]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    let y = x.mul(&x).unwrap().mul(&x).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert!(g.has_node(), "the first gradient is recorded while the outer watch is open");
    pop_watch();
    assert_eq!(backprop::watch_depth(), 0);
    assert_close(&vals(&g), &[12.0]);
    let gg = grad(&g, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close(&vals(&gg), &[12.0]);
    assert!(!gg.has_node());
}

#[test]
fn third_derivative_of_cube() {
    // d^3/dx^3 x^3 = 6, with three nested contexts.
    let x = t(&[-1.5], &[]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    let y = x.mul(&x).unwrap().mul(&x).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    pop_watch();
    let gg = grad(&g, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    pop_watch();
    let ggg = grad(&gg, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close(&vals(&g), &[3.0 * 2.25]);
    assert_close(&vals(&gg), &[6.0 * -1.5]);
    assert_close(&vals(&ggg), &[6.0]);
}

#[test]
fn second_derivative_through_pow_and_div() {
    // f = x^3 via pow, and f = 1/x: f'' = 6x and 2/x^3.
    let x = t(&[2.0], &[]);
    let three = t(&[3.0], &[]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    let y = x.pow(&three).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    pop_watch();
    let gg = grad(&g, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close_tol(&vals(&gg), &[12.0], 1e-12, 1e-12);

    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    let y = t(&[1.0], &[]).div(&x).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    pop_watch();
    let gg = grad(&g, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close(&vals(&g), &[-0.25]);
    assert_close(&vals(&gg), &[0.25]);
}

#[test]
fn mixed_second_derivative() {
    // d/dx (d/dy (x*y)) = 1, and d/dx (d/dy (x^2 y^3)) = 6 x y^2.
    let x = t(&[3.0], &[]);
    let y = t(&[-2.0], &[]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&y));
    let z = x.mul(&y).unwrap();
    pop_watch();
    let gy = grad(&z, std::slice::from_ref(&y), None).unwrap().remove(0).unwrap();
    pop_watch();
    assert_close(&vals(&gy), &[3.0]);
    let gxy = grad(&gy, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close(&vals(&gxy), &[1.0]);

    push_watch(&[x.clone(), y.clone()]);
    push_watch(std::slice::from_ref(&y));
    let z = x.mul(&x).unwrap().mul(&y.mul(&y).unwrap().mul(&y).unwrap()).unwrap();
    pop_watch();
    let gy = grad(&z, std::slice::from_ref(&y), None).unwrap().remove(0).unwrap();
    pop_watch();
    assert_close(&vals(&gy), &[9.0 * 3.0 * 4.0]);
    let g = grad(&gy, &[x.clone(), y.clone()], None).unwrap();
    assert_close(&vals(g[0].as_ref().unwrap()), &[6.0 * 3.0 * 4.0]);
    assert_close(&vals(g[1].as_ref().unwrap()), &[9.0 * 6.0 * -2.0]);
}

#[test]
fn first_gradient_is_plain_without_outer_context() {
    let x = t(&[2.0], &[]);
    push_watch(std::slice::from_ref(&x));
    let y = x.mul(&x).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert!(!g.has_node());
    assert_eq!(backprop::watch_depth(), 0);
}

#[test]
fn second_order_unary_ops_by_finite_differences() {
    let mut rng = Rng::new(200);
    let cases: Vec<(UnaryOp, Tensor)> = vec![
        (UnaryOp::Tanh, rand_in(&mut rng, &[5], -2.0, 2.0)),
        (UnaryOp::Sigmoid, rand_in(&mut rng, &[5], -3.0, 3.0)),
        (UnaryOp::Exp, rand(&mut rng, &[5])),
        (UnaryOp::Log, rand_in(&mut rng, &[5], 0.5, 2.0)),
        (UnaryOp::Log1p, rand_in(&mut rng, &[5], 0.0, 2.0)),
        (UnaryOp::Sqrt, rand_in(&mut rng, &[5], 0.5, 2.0)),
        (UnaryOp::Sin, rand_in(&mut rng, &[5], -3.0, 3.0)),
        (UnaryOp::Cos, rand_in(&mut rng, &[5], -3.0, 3.0)),
        (UnaryOp::Softplus, rand_in(&mut rng, &[5], -3.0, 3.0)),
        (UnaryOp::Elu(1.0), rand_away(&mut rng, &[5], &[0.0])),
        (UnaryOp::Neg, rand(&mut rng, &[5])),
        // Piecewise-linear: second derivative zero, first still flows through.
        (UnaryOp::Relu, rand_away(&mut rng, &[5], &[0.0])),
        (UnaryOp::Abs, rand_away(&mut rng, &[5], &[0.0])),
        (UnaryOp::LeakyRelu(0.1), rand_away(&mut rng, &[5], &[0.0])),
        (UnaryOp::Clamp(-0.5, 0.5), rand_away(&mut rng, &[5], &[-0.5, 0.5])),
    ];
    for (op, x) in cases {
        // sum(op(x) * x) so even linear pieces have a nonzero Hessian.
        let f = move |xs: &[Tensor]| xs[0].unary(op).unwrap().mul(&xs[0]).unwrap().sum_all().unwrap();
        check_grad2(f, vec![x]);
    }
}

#[test]
fn second_order_closed_forms() {
    // tanh'' = -2 tanh (1 - tanh^2), sigmoid'' = s (1-s) (1-2s).
    let xs = [-1.3, -0.2, 0.0, 0.7, 2.1];
    let x = t(&xs, &[5]);
    for (op, want) in [
        (UnaryOp::Tanh, xs.iter().map(|&v: &f64| -2.0 * v.tanh() * (1.0 - v.tanh().powi(2))).collect::<Vec<_>>()),
        (
            UnaryOp::Sigmoid,
            xs.iter()
                .map(|&v: &f64| {
                    let s = 1.0 / (1.0 + (-v).exp());
                    s * (1.0 - s) * (1.0 - 2.0 * s)
                })
                .collect(),
        ),
    ] {
        push_watch(std::slice::from_ref(&x));
        push_watch(std::slice::from_ref(&x));
        let y = x.unary(op).unwrap().sum_all().unwrap();
        pop_watch();
        let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
        let s = g.sum_all().unwrap();
        pop_watch();
        // The Hessian is diagonal, so the gradient of sum(g) is its diagonal.
        let h = grad(&s, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
        assert_close_tol(&vals(&h), &want, 1e-14, 1e-12);
    }
}

#[test]
fn second_order_binary_and_reductions() {
    let mut rng = Rng::new(201);
    let (a, b) = (rand(&mut rng, &[2, 3]), rand_in(&mut rng, &[3], 0.5, 2.0));
    check_grad2(|x| x[0].mul(&x[1]).unwrap().mul(&x[0]).unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    check_grad2(|x| x[0].div(&x[1]).unwrap().exp().unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    check_grad2(|x| x[1].pow(&x[0]).unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    check_grad2(|x| x[0].sub(&x[1]).unwrap().tanh().unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    let d = rand_distinct(&mut rng, &[3, 4]);
    check_grad2(|x| x[0].max_axes(Some(&[1]), false).unwrap().exp().unwrap().sum_all().unwrap(), vec![d.clone()]);
    check_grad2(|x| x[0].min_axes(Some(&[0]), true).unwrap().mul(&x[0]).unwrap().sum_all().unwrap(), vec![d.clone()]);
    check_grad2(
        |x| x[0].maximum(&x[0].scale(-0.5).unwrap()).unwrap().pow(&t(&[3.0], &[])).unwrap().sum_all().unwrap(),
        vec![rand_away(&mut rng, &[6], &[0.0])],
    );
    check_grad2(|x| x[0].logsumexp(Some(&[1]), false).unwrap().sin().unwrap().sum_all().unwrap(), vec![d.clone()]);
    check_grad2(|x| x[0].mean_axes(Some(&[0]), false).unwrap().exp().unwrap().sum_all().unwrap(), vec![d.clone()]);
    check_grad2(|x| x[0].sum_axes(Some(&[1]), true).unwrap().mul(&x[0]).unwrap().sum_all().unwrap().tanh().unwrap(), vec![d]);
}

#[test]
fn second_order_shape_ops_and_matmul() {
    let mut rng = Rng::new(202);
    let (a, b) = (rand(&mut rng, &[3, 4]), rand(&mut rng, &[4, 2]));
    check_grad2(|x| x[0].matmul(&x[1]).unwrap().tanh().unwrap().sum_all().unwrap(), vec![a.clone(), b.clone()]);
    check_grad2(|x| x[0].transpose(0, 1).unwrap().matmul(&x[0]).unwrap().sin().unwrap().sum_all().unwrap(), vec![a.clone()]);
    let (p, q) = (rand(&mut rng, &[2, 3, 4]), rand(&mut rng, &[1, 4, 2]));
    check_grad2(|x| x[0].matmul(&x[1]).unwrap().exp().unwrap().sum_all().unwrap(), vec![p.clone(), q]);
    check_grad2(|x| x[0].slice(2, 1, 4, 2).unwrap().exp().unwrap().sum_all().unwrap(), vec![p.clone()]);
    check_grad2(|x| x[0].select(1, -1).unwrap().exp().unwrap().sum_all().unwrap(), vec![p.clone()]);
    check_grad2(|x| x[0].index_select(2, &[3, 0, 3]).unwrap().exp().unwrap().sum_all().unwrap(), vec![p.clone()]);
    check_grad2(|x| x[0].permute(&[2, 0, 1]).unwrap().softmax(0).unwrap().mul(&x[0].permute(&[2, 0, 1]).unwrap()).unwrap().sum_all().unwrap(), vec![p.clone()]);
    check_grad2(
        |x| Tensor::concat(&[x[0].exp().unwrap(), x[0].clone()], 1).unwrap().mul(&x[0].sum_axes(Some(&[1]), true).unwrap()).unwrap().sum_all().unwrap(),
        vec![p.clone()],
    );
    check_grad2(|x| Tensor::stack(&[x[0].exp().unwrap(), x[0].clone()], 0).unwrap().pow(&t(&[2.0], &[])).unwrap().sum_all().unwrap(), vec![a.clone()]);
    check_grad2(|x| x[0].broadcast_to(&[2, 3, 4]).unwrap().transpose(0, 2).unwrap().contiguous().unwrap().exp().unwrap().sum_all().unwrap(), vec![a.clone()]);
    let c = rand(&mut rng, &[3, 4]).gt(&t(&[0.0], &[])).unwrap();
    check_grad2(move |x| Tensor::where_(&c, &x[0].exp().unwrap(), &x[0].mul(&x[0]).unwrap().mul(&x[0]).unwrap()).unwrap().sum_all().unwrap(), vec![a]);
}

#[test]
fn second_order_softmax_cross_entropy() {
    let mut rng = Rng::new(203);
    let logits = rand_in(&mut rng, &[3, 4], -2.0, 2.0);
    let mut oh = vec![0.0; 12];
    for (i, l) in [2usize, 0, 3].into_iter().enumerate() {
        oh[i * 4 + l] = 1.0;
    }
    let onehot = t(&oh, &[3, 4]);
    let ce = |x: &[Tensor], oh: &Tensor| x[0].logsoftmax(1).unwrap().mul(oh).unwrap().sum_all().unwrap().neg().unwrap();
    let oh1 = onehot.clone();
    check_grad2(move |x| ce(x, &oh1), vec![logits.clone()]);
    // The same loss through softmax + log, and a small MLP's loss w.r.t. all its weights.
    let oh2 = onehot.clone();
    check_grad2(move |x| x[0].softmax(-1).unwrap().log().unwrap().mul(&oh2).unwrap().sum_all().unwrap().neg().unwrap(), vec![logits.clone()]);
    let (inp, w, bias) = (rand(&mut rng, &[3, 2]), rand(&mut rng, &[2, 4]), rand(&mut rng, &[4]));
    let oh3 = onehot.clone();
    check_grad2(
        move |x| {
            let h = x[0].matmul(&x[1]).unwrap().add(&x[2]).unwrap().tanh().unwrap();
            h.logsoftmax(1).unwrap().mul(&oh3).unwrap().mean_axes(None, false).unwrap().neg().unwrap()
        },
        vec![inp, w, bias],
    );
    // Closed form: the Hessian-vector product of CE w.r.t. logits for v = e_{0,0}.
    push_watch(std::slice::from_ref(&logits));
    push_watch(std::slice::from_ref(&logits));
    let l = ce(std::slice::from_ref(&logits), &onehot);
    pop_watch();
    let g = grad(&l, std::slice::from_ref(&logits), None).unwrap().remove(0).unwrap();
    let g00 = g.select(0, 0).unwrap().select(0, 0).unwrap();
    pop_watch();
    let h = vals(&grad(&g00, std::slice::from_ref(&logits), None).unwrap().remove(0).unwrap());
    let p = vals(&logits.softmax(1).unwrap());
    let mut want = vec![0.0; 12];
    for j in 0..4 {
        want[j] = if j == 0 { p[0] * (1.0 - p[0]) } else { -p[0] * p[j] };
    }
    assert_close_tol(&h, &want, 1e-14, 1e-12);
}

#[test]
fn gradient_penalty_style() {
    // ||d f / d x||^2 differentiated w.r.t. parameters that x's gradient depends on.
    let mut rng = Rng::new(204);
    let (x, w) = (rand(&mut rng, &[2, 3]), rand(&mut rng, &[3, 2]));
    check_grad(
        |p| {
            let (x, w) = (&p[0], &p[1]);
            push_watch(std::slice::from_ref(x));
            let y = x.matmul(w).unwrap().tanh().unwrap().sum_all().unwrap();
            pop_watch();
            let gx = grad(&y, std::slice::from_ref(x), None).unwrap().remove(0).unwrap();
            gx.mul(&gx).unwrap().sum_all().unwrap()
        },
        vec![x, w],
    );
}

#[test]
fn second_order_through_an_empty_slice() {
    // The slice's backward (a scatter) is differentiated again with nothing selected.
    let x = t(&[0.5, -1.0, 2.0], &[3]);
    push_watch(std::slice::from_ref(&x));
    push_watch(std::slice::from_ref(&x));
    // sum(e * e) with e empty: the gradient flowing into the slice depends on x.
    let e = x.slice(0, 2, 2, 1).unwrap();
    let y = e.mul(&e).unwrap().sum_all().unwrap().add(&x.mul(&x).unwrap().sum_all().unwrap()).unwrap();
    pop_watch();
    let g = grad(&y, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    let s = g.mul(&g).unwrap().sum_all().unwrap();
    pop_watch();
    let gg = grad(&s, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
    assert_close(&vals(&g), &[1.0, -2.0, 4.0]);
    assert_close(&vals(&gg), &[4.0, -8.0, 16.0]);
}

#[test]
fn a_record_watch_records_ops_without_opening_a_differentiation_context() {
    let (w, x) = (t(&[3.0], &[]), t(&[2.0], &[]));
    push_watch(std::slice::from_ref(&w));
    backprop::push_record_watch(std::slice::from_ref(&x));
    assert_eq!(backprop::watch_depth(), 1, "only the gradient's context counts");
    let y = x.mul(&x).unwrap();
    assert!(y.has_node(), "ops on the watched data record");
    pop_watch();
    assert_eq!(backprop::watch_depth(), 1);
    let l = y.mul(&w).unwrap();
    let g = grad(&l, &[w.clone(), x.clone()], None).unwrap();
    assert!(g[0].as_ref().unwrap().has_node(), "inside the gradient's context the backward pass records");
    pop_watch();
    assert_eq!(backprop::watch_depth(), 0);
    assert_close(&vals(g[0].as_ref().unwrap()), &[4.0]);
    assert_close(&vals(g[1].as_ref().unwrap()), &[12.0]);
}
