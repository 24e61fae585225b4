use super::*;

hyper! {
    /// Adds `λ x` to the gradient (L2 regularisation).
    pub struct WeightDecay { lambd: f64 }
}

impl OptRule for WeightDecay {
    const WGSL: Option<&'static str> = Some("d[i] = g + p(0) * x[xi];");

    fn init(&self) -> State {
        State::none()
    }

    #[inline(always)]
    fn apply<T: Float>(&self, x: &[T], dx: &mut [T], _st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let l = T::from_f64(self.lambd);
        dx.iter_mut().zip(x).for_each(|(d, &xi)| *d += l * xi);
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.lambd]
    }
}
