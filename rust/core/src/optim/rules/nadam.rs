use super::*;

hyper! {
    /// NAdam, Nesterov's Adam:
    /// `step = (β₁ m/(1-β₁β₁ᵗ) + (1-β₁) dx/(1-β₁ᵗ)) / (√(β₂ v/(1-β₂ᵗ)) + ϵ) η`.
    pub struct NAdam { eta: f64, beta: (f64, f64), epsilon: f64 }
}

impl OptRule for NAdam {
    fn init(&self) -> State {
        State { arrays: vec![("mt", 0.0), ("vt", 0.0)], scalars: beta_powers(self.beta) }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (b1, b2, ep, e) = (c(self.beta.0), c(self.beta.1), c(self.epsilon), c(self.eta));
        let (bt1, bt2) = (c(sc[0]), c(sc[1]));
        let (mt, vt) = two(st);
        for i in 0..dx.len() {
            let d = dx[i];
            mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
            vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
            dx[i] = (b1 * mt[i] / (T::ONE - b1 * bt1) + (T::ONE - b1) * d / (T::ONE - bt1)) / ((vt[i] * b2 / (T::ONE - bt2)).sqrt() + ep) * e;
        }
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
    }
}
