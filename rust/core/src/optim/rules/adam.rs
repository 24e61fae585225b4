use super::*;

hyper! {
    /// Adam (Kingma & Ba): `m = β₁ m + (1-β₁) dx; v = β₂ v + (1-β₂) dx²;
    /// step = m / (1-β₁ᵗ) / (√(v / (1-β₂ᵗ)) + ϵ) η`.
    pub struct Adam { eta: f64, beta: (f64, f64), epsilon: f64 }
}

/// The moments' update and Adam's step at η = 1 (AdamW's too), for `T`'s elements.
#[inline(always)]
pub(super) fn adam_step<T: Float>(beta: (f64, f64), epsilon: f64, e: T, dx: &mut [T], st: &mut [&mut [T]], sc: &[f64]) {
    let c = T::from_f64;
    let (b1, b2, ep) = (c(beta.0), c(beta.1), c(epsilon));
    let (mt, vt) = two(st);
    // Zipped iterators (no indexing) so the loop vectorises; the hoisted bias corrections
    // are Optimisers.jl's expression rearranged, not a different rule.
    let (c1, c2) = (T::ONE / (T::ONE - c(sc[0])), T::ONE / (T::ONE - c(sc[1])));
    for ((d, m), v) in dx.iter_mut().zip(mt.iter_mut()).zip(vt.iter_mut()) {
        *m = b1 * *m + (T::ONE - b1) * *d;
        *v = b2 * *v + (T::ONE - b2) * *d * *d;
        *d = *m * c1 / ((*v * c2).sqrt() + ep) * e;
    }
}

impl OptRule for Adam {
    const WGSL: Option<&'static str> = Some(
        "let m = p(1) * s0[a] + (1.0 - p(1)) * g;
        let v = p(2) * s1[b] + (1.0 - p(2)) * g * g;
        s0[a] = m;
        s1[b] = v;
        d[i] = m * p(4) / (sqrt(v * p(5)) + p(3)) * p(0);",
    );

    fn init(&self) -> State {
        State { arrays: vec![("mt", 0.0), ("vt", 0.0)], scalars: beta_powers(self.beta) }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        adam_step(self.beta, self.epsilon, T::from_f64(self.eta), dx, st, sc);
        Ok(Step::Apply)
    }

    fn advance(&self, sc: &mut [f64]) {
        advance_powers(self.beta, sc);
    }

    fn gpu_params(&self, sc: &[f64]) -> Vec<f64> {
        vec![self.eta, self.beta.0, self.beta.1, self.epsilon, 1.0 / (1.0 - sc[0]), 1.0 / (1.0 - sc[1])]
    }
}
