//! The finite-difference check the ops' unit tests share (test builds only).

use crate::tensor::Tensor;

/// Central finite differences of `f` (a scalar function of `leaves`, float64) against `grad`,
/// for every element of every leaf.
pub(crate) fn gradcheck(leaves: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
    crate::push_watch(leaves);
    let l = f(leaves);
    crate::pop_watch();
    let gs = crate::grad(&l, leaves, None).unwrap();
    let eps = 1e-6;
    for (li, leaf) in leaves.iter().enumerate() {
        let base = leaf.to_vec_f64();
        let g = gs[li].as_ref().expect("a gradient for every leaf").to_vec_f64();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut ls = leaves.to_vec();
                ls[li] = Tensor::from_vec(v, leaf.shape()).unwrap();
                f(&ls).item().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "leaf {li} element {i}: fd {fd} vs grad {}", g[i]);
        }
    }
}
