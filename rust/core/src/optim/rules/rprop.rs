use super::*;

hyper! {
    /// Rprop: each element's step size starts at η, grows by `ell.1` (up to `gamma.1`) while
    /// the gradient keeps its sign and shrinks by `ell.0` (down to `gamma.0`) when it flips.
    pub struct Rprop { eta: f64, ell: (f64, f64), gamma: (f64, f64) }
}

impl OptRule for Rprop {
    fn init(&self) -> State {
        State { arrays: vec![("grad", 0.0), ("etas", self.eta)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (l0, l1, g0, g1) = (c(self.ell.0), c(self.ell.1), c(self.gamma.0), c(self.gamma.1));
        let (gs, etas) = two(st);
        for i in 0..dx.len() {
            let (g, d) = (gs[i], dx[i]);
            let s = g * d;
            etas[i] = if s > T::ZERO {
                (etas[i] * l1).min(g1)
            } else if s < T::ZERO {
                (etas[i] * l0).max(g0)
            } else {
                etas[i]
            };
            gs[i] = if s < T::ZERO { T::ZERO } else { d };
            dx[i] = etas[i] * gs[i].signum();
        }
        Ok(Step::Apply)
    }
}
