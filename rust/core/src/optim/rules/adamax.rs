use super::*;

hyper! {
    /// AdaMax, Adam with the ∞-norm: `m = β₁ m + (1-β₁) dx; u = max(β₂ u, |dx|);
    /// step = η/(1-β₁ᵗ) · m/(u + ϵ)`.
    pub struct AdaMax { eta: f64, beta: (f64, f64), epsilon: f64 }
}

impl OptRule for AdaMax {
    fn init(&self) -> State {
        State { arrays: vec![("mt", 0.0), ("ut", 0.0)], scalars: beta_powers(self.beta) }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (b1, b2, ep) = (c(self.beta.0), c(self.beta.1), c(self.epsilon));
        let k = c(self.eta) / (T::ONE - c(sc[0]));
        let (mt, ut) = two(st);
        for i in 0..dx.len() {
            let d = dx[i];
            mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
            ut[i] = nanmax(b2 * ut[i], d.abs());
            dx[i] = k * mt[i] / (ut[i] + ep);
        }
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
    }
}
