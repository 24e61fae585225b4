use super::*;

hyper! {
    /// AdaDelta, without a learning rate: `acc = ρ acc + (1-ρ) dx²;
    /// step = dx √(Δacc + ϵ) / √(acc + ϵ); Δacc = ρ Δacc + (1-ρ) step²`.
    pub struct AdaDelta { rho: f64, epsilon: f64 }
}

impl OptRule for AdaDelta {
    fn init(&self) -> State {
        State { arrays: vec![("acc", 0.0), ("dacc", 0.0)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (r, ep) = (T::from_f64(self.rho), T::from_f64(self.epsilon));
        let (acc, dacc) = two(st);
        for i in 0..dx.len() {
            let d = dx[i];
            acc[i] = r * acc[i] + (T::ONE - r) * d * d;
            let step = d * (dacc[i] + ep).sqrt() / (acc[i] + ep).sqrt();
            dacc[i] = r * dacc[i] + (T::ONE - r) * step * step;
            dx[i] = step;
        }
        Ok(Step::Apply)
    }
}
