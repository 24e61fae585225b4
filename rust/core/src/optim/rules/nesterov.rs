use super::*;

hyper! {
    /// Nesterov momentum: `step = -ρ² v + (1 + ρ) η dx; v = ρ v - η dx`.
    pub struct Nesterov { eta: f64, rho: f64 }
}

impl OptRule for Nesterov {
    const WGSL: Option<&'static str> = Some(
        "let r = p(1);
        let v = s0[a];
        d[i] = -(r * r) * v + (1.0 + r) * p(0) * g;
        s0[a] = r * v - p(0) * g;",
    );

    fn init(&self) -> State {
        State { arrays: vec![("velocity", 0.0)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (e, r) = (T::from_f64(self.eta), T::from_f64(self.rho));
        for (d, v) in dx.iter_mut().zip(st[0].iter_mut()) {
            let new = -(r * r) * *v + (T::ONE + r) * e * *d;
            *v = r * *v - e * *d;
            *d = new;
        }
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.eta, self.rho]
    }
}
