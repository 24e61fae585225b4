//! Slices accumulate their gradient in place during first-order backward passes (the
//! recurrent-layer pattern: read step t of a tracked sequence, for every t).

use fluxrs_core::{grad, pop_watch, push_watch, Tensor};

#[test]
fn many_slices_of_a_tracked_intermediate_sum_correctly() {
    let (t, h) = (300usize, 8usize);
    let x = Tensor::from_vec((0..t * h).map(|i| i as f64 * 1e-3).collect(), &[t, h]).unwrap();
    push_watch(std::slice::from_ref(&x));
    let y = x.scale(2.0).unwrap(); // tracked, not a leaf
    let mut loss = y.select(0, 0).unwrap().sum_all().unwrap();
    for s in 1..t {
        // step s weighs its row by s, and reads row s twice (two slices, one target)
        let row = y.select(0, s as isize).unwrap();
        let again = y.slice(0, s, s + 1, 1).unwrap().reshape(&[h]).unwrap();
        loss = loss.add(&row.add(&again).unwrap().scale(s as f64).unwrap().sum_all().unwrap()).unwrap();
    }
    // and the whole of y once more, so slice gradients land on a shared accumulator
    loss = loss.add(&y.sum_all().unwrap()).unwrap();
    pop_watch();
    let g = grad(&loss, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap().to_vec::<f64>().unwrap();
    for s in 0..t {
        let expect = 2.0 * (if s == 0 { 1.0 } else { 2.0 * s as f64 } + 1.0);
        for k in 0..h {
            assert_eq!(g[s * h + k], expect, "row {s}");
        }
    }
}

#[test]
fn strided_slices_accumulate_into_the_right_elements() {
    let x = Tensor::from_vec((0..12).map(|i| i as f64).collect(), &[3, 4]).unwrap();
    push_watch(std::slice::from_ref(&x));
    let y = x.exp().unwrap();
    let a = y.slice(1, 0, 4, 2).unwrap().sum_all().unwrap(); // columns 0, 2
    let b = y.slice(1, 1, 4, 2).unwrap().scale(3.0).unwrap().sum_all().unwrap(); // columns 1, 3
    let c = y.slice(0, 1, 3, 1).unwrap().sum_all().unwrap(); // rows 1, 2
    let loss = a.add(&b).unwrap().add(&c).unwrap();
    pop_watch();
    let g = grad(&loss, std::slice::from_ref(&x), None).unwrap()[0].clone().unwrap().to_vec::<f64>().unwrap();
    for r in 0..3 {
        for col in 0..4 {
            let w = if col % 2 == 0 { 1.0 } else { 3.0 } + if r >= 1 { 1.0 } else { 0.0 };
            let e = (4 * r + col) as f64;
            assert!((g[4 * r + col] - w * e.exp()).abs() < 1e-9 * e.exp().max(1.0));
        }
    }
}
