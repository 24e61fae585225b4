use super::*;

hyper! {
    /// Accumulates `n` gradients and passes their mean on once every `n` steps.
    pub struct AccumGrad { n: usize }
}

impl OptRule for AccumGrad {
    fn check(&self) -> Result<()> {
        if self.n < 1 {
            return Err(Error::Value { op: "AccumGrad", msg: format!("must accumulate a whole number >= 1 of gradients, got {}", self.n) });
        }
        Ok(())
    }

    fn init(&self) -> State {
        State { arrays: vec![("acc", 0.0)], scalars: vec![("counter", 1.0)] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let n = self.n;
        let inv = T::from_f64(1.0 / n as f64);
        let acc = &mut st[0];
        let counter = sc[0] as usize;
        for (a, &d) in acc.iter_mut().zip(dx.iter()) {
            *a = if counter == 1 { d * inv } else { *a + d * inv };
        }
        if counter >= n {
            dx.copy_from_slice(acc);
            sc[0] = 1.0;
            Ok(Step::Apply)
        } else {
            sc[0] = (counter + 1) as f64;
            Ok(Step::Hold)
        }
    }
}
