use super::*;

hyper! {
    /// Lion (Chen et al. 2023), in Optimisers.jl's form:
    /// `s = β₂ dx + (1-β₂) s; step = η sign((β₂-β₁) dx + β₁ s)`.
    pub struct Lion { eta: f64, beta: (f64, f64) }
}

impl OptRule for Lion {
    const WGSL: Option<&'static str> = Some(
        "let s = p(2) * g + (1.0 - p(2)) * s0[a];
        s0[a] = s;
        d[i] = p(0) * sign((p(2) - p(1)) * g + p(1) * s);",
    );

    fn init(&self) -> State {
        State { arrays: vec![("momentum", 0.0)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        let (e, b1, b2) = (c(self.eta), c(self.beta.0), c(self.beta.1));
        for (d, s) in dx.iter_mut().zip(st[0].iter_mut()) {
            *s = b2 * *d + (T::ONE - b2) * *s;
            *d = e * ((b2 - b1) * *d + b1 * *s).signum();
        }
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.eta, self.beta.0, self.beta.1]
    }
}
