use super::*;

hyper! {
    /// AdaGrad: `acc += dx²; step = η dx / (√acc + ϵ)`, with `acc` starting at ϵ.
    pub struct AdaGrad { eta: f64, epsilon: f64 }
}

impl OptRule for AdaGrad {
    fn init(&self) -> State {
        State { arrays: vec![("acc", self.epsilon)], scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (e, ep) = (T::from_f64(self.eta), T::from_f64(self.epsilon));
        for (d, acc) in dx.iter_mut().zip(st[0].iter_mut()) {
            *acc += *d * *d;
            *d = *d * e / (acc.sqrt() + ep);
        }
        Ok(Step::Apply)
    }
}
