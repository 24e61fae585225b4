use super::*;

hyper! {
    /// Gradient descent: `step = η dx`.
    pub struct Descent { eta: f64 }
}

impl OptRule for Descent {
    const WGSL: Option<&'static str> = Some("d[i] = g * p(0);");

    fn init(&self) -> State {
        State::none()
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], _st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let e = T::from_f64(self.eta);
        dx.iter_mut().for_each(|d| *d *= e);
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.eta]
    }
}
