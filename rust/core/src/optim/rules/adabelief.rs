use super::*;

hyper! {
    /// AdaBelief: `m = β₁ m + (1-β₁) dx; s = β₂ s + (1-β₂)(dx - m)² + ϵ;
    /// step = η m/(1-β₁ᵗ) / (√(s/(1-β₂ᵗ)) + ϵ)`.
    pub struct AdaBelief { eta: f64, beta: (f64, f64), epsilon: f64 }
}

impl OptRule for AdaBelief {
    fn init(&self) -> State {
        State { arrays: vec![("mt", 0.0), ("st", 0.0)], scalars: beta_powers(self.beta) }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (b1, b2, ep, e) = (c(self.beta.0), c(self.beta.1), c(self.epsilon), c(self.eta));
        let (bt1, bt2) = (c(sc[0]), c(sc[1]));
        let (mt, s) = two(st);
        for i in 0..dx.len() {
            let d = dx[i];
            mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
            let dev = d - mt[i];
            s[i] = b2 * s[i] + (T::ONE - b2) * dev * dev + ep;
            dx[i] = e * mt[i] / (T::ONE - bt1) / ((s[i] / (T::ONE - bt2)).sqrt() + ep);
        }
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
    }
}
