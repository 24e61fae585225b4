use super::*;

hyper! {
    /// Rectified Adam: Adam's step times the rectification `r(ρₜ)` once
    /// `ρₜ = ρ∞ - 2t β₂ᵗ/(1-β₂ᵗ) > 4` (`ρ∞ = 2/(1-β₂) - 1`); before that, momentum alone.
    pub struct RAdam { eta: f64, beta: (f64, f64), epsilon: f64 }
}

impl OptRule for RAdam {
    fn init(&self) -> State {
        let mut scalars = beta_powers(self.beta);
        scalars.push(("t", 1.0));
        State { arrays: vec![("mt", 0.0), ("vt", 0.0)], scalars }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (beta, eta) = (self.beta, self.eta);
        let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(self.epsilon), c(eta));
        let (bt1, bt2, t) = (sc[0], sc[1], sc[2]);
        let rho_inf = 2.0 / (1.0 - beta.1) - 1.0;
        let rho = rho_inf - 2.0 * t * bt2 / (1.0 - bt2);
        let (mt, vt) = two(st);
        let r = if rho > 4.0 { Some(c(((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)).sqrt())) } else { None };
        for i in 0..dx.len() {
            let d = dx[i];
            mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
            vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
            dx[i] = match r {
                Some(r) => mt[i] / (T::ONE - c(bt1)) / ((vt[i] / (T::ONE - c(bt2))).sqrt() + ep) * e * r,
                None => mt[i] / (T::ONE - c(bt1)) * e,
            };
        }
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
        sc[2] += 1.0;
    }
}
