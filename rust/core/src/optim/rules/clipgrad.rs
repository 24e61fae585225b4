use super::*;

hyper! {
    /// Clips every gradient component to `[-δ, δ]`; NaN stays NaN.
    pub struct ClipGrad { delta: f64 }
}

impl OptRule for ClipGrad {
    const WGSL: Option<&'static str> = Some("if (g == g) { d[i] = clamp(g, -p(0), p(0)); }");

    fn init(&self) -> State {
        State::none()
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], _st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let dl = T::from_f64(self.delta);
        dx.iter_mut().for_each(|d| {
            if !d.is_nan() {
                *d = d.max(-dl).min(dl)
            }
        });
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.delta]
    }
}
