use super::*;

hyper! {
    /// AMSGrad: Adam's moments (no bias correction, all state starting at ϵ) with
    /// `v̂ = max(v̂, v); step = η m / (√v̂ + ϵ)`.
    pub struct AMSGrad { eta: f64, beta: (f64, f64), epsilon: f64 }
}

impl OptRule for AMSGrad {
    fn init(&self) -> State {
        let e = self.epsilon;
        State { arrays: vec![("mt", e), ("vt", e), ("vhat", e)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (b1, b2, ep, e) = (c(self.beta.0), c(self.beta.1), c(self.epsilon), c(self.eta));
        let [mt, vt, vhat] = st else { unreachable!("AMSGrad has three state arrays") };
        for i in 0..dx.len() {
            let d = dx[i];
            mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
            vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
            vhat[i] = nanmax(vhat[i], vt[i]);
            dx[i] = e * mt[i] / (vhat[i].sqrt() + ep);
        }
        Ok(Step::Apply)
    }
}
