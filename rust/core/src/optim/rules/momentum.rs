use super::*;

hyper! {
    /// Momentum: `v = ρ v + η dx; step = v`.
    pub struct Momentum { eta: f64, rho: f64 }
}

impl OptRule for Momentum {
    const WGSL: Option<&'static str> = Some(
        "let v = p(1) * s0[a] + p(0) * g;
        s0[a] = v;
        d[i] = v;",
    );

    fn init(&self) -> State {
        State { arrays: vec![("velocity", 0.0)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (e, r) = (T::from_f64(self.eta), T::from_f64(self.rho));
        for (d, v) in dx.iter_mut().zip(st[0].iter_mut()) {
            *v = r * *v + e * *d;
            *d = *v;
        }
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.eta, self.rho]
    }
}
