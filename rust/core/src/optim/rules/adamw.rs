use super::*;

hyper! {
    /// AdamW, Adam with decoupled weight decay (Optimisers.jl v0.4, PyTorch): with `a` Adam's
    /// step at η = 1, `step = η (a + λ x)`; uncoupled, the paper's `step = η a + λ x`.
    pub struct AdamW { eta: f64, beta: (f64, f64), lambd: f64, epsilon: f64, couple: bool }
}

impl OptRule for AdamW {
    const WGSL: Option<&'static str> = Some(
        "let m = p(1) * s0[a] + (1.0 - p(1)) * g;
        let v = p(2) * s1[b] + (1.0 - p(2)) * g * g;
        s0[a] = m;
        s1[b] = v;
        let st = m * p(4) / (sqrt(v * p(5)) + p(3));
        if (p(6) != 0.0) { d[i] = p(0) * (st + p(7) * x[xi]); } else { d[i] = p(0) * st + p(7) * x[xi]; }",
    );

    fn init(&self) -> State {
        State { arrays: vec![("mt", 0.0), ("vt", 0.0)], scalars: beta_powers(self.beta) }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        super::adam::adam_step(self.beta, self.epsilon, T::ONE, dx, st, sc);
        let (e, l) = (T::from_f64(self.eta), T::from_f64(self.lambd));
        for (d, &xi) in dx.iter_mut().zip(x) {
            *d = if self.couple { e * (*d + l * xi) } else { e * *d + l * xi };
        }
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
    }

    fn gpu_params(&self, sc: &[f64]) -> Vec<f64> {
        let (b, c) = (self.beta, self.couple as u32 as f64);
        vec![self.eta, b.0, b.1, self.epsilon, 1.0 / (1.0 - sc[0]), 1.0 / (1.0 - sc[1]), c, self.lambd]
    }
}
