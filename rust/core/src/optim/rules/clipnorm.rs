use super::*;

hyper! {
    /// Scales a gradient whose `p`-norm exceeds ω down to ω; with `throw`, a non-finite norm
    /// is an error (Optimisers.jl's DomainError).
    pub struct ClipNorm { omega: f64, p: f64, throw: bool }
}

impl OptRule for ClipNorm {
    const WHOLE: bool = true;

    fn init(&self) -> State {
        State::none()
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], _st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (omega, p) = (self.omega, self.p);
        let nrm = norm(dx, p);
        if self.throw && !nrm.is_finite() {
            return Err(Error::Value { op: "ClipNorm", msg: format!("gradient has {p}-norm {nrm}, for an array of {} elements", dx.len()) });
        }
        // NaN stays NaN, as Julia's min(NaN, 1) does: a bad gradient must not pass unclipped.
        let lam = T::from_f64(if nrm.is_nan() { f64::NAN } else { (omega / nrm).min(1.0) });
        dx.iter_mut().for_each(|d| *d *= lam);
        Ok(Step::Apply)
    }
}

/// Julia's `norm(dx, p)`, in f64.
fn norm<T: Float>(dx: &[T], p: f64) -> f64 {
    let it = dx.iter().map(|v| v.to_f64().abs());
    if p == 2.0 {
        it.map(|v| v * v).sum::<f64>().sqrt()
    } else if p == 1.0 {
        it.sum()
    } else if p == f64::INFINITY {
        it.fold(0.0, f64::max)
    } else if p == 0.0 {
        it.filter(|&v| v != 0.0).count() as f64
    } else if p == f64::NEG_INFINITY {
        it.fold(f64::INFINITY, f64::min)
    } else {
        it.map(|v| v.powf(p)).sum::<f64>().powf(1.0 / p)
    }
}
