use super::*;

hyper! {
    /// Adam (Kingma & Ba): `m = β₁ m + (1-β₁) dx; v = β₂ v + (1-β₂) dx²;
    /// step = m / (1-β₁ᵗ) / (√(v / (1-β₂ᵗ)) + ϵ) η`.
    pub struct Adam { eta: f64, beta: (f64, f64), epsilon: f64 }
}

/// Adam's constants for one step: the betas, ϵ, η and the bias corrections (hoisted:
/// Optimisers.jl's expression rearranged, not a different rule).
struct Consts<T> {
    b1: T,
    b2: T,
    ep: T,
    e: T,
    c1: T,
    c2: T,
}

impl<T: Float> Consts<T> {
    #[inline(always)]
    fn new(beta: (f64, f64), epsilon: f64, e: T, sc: &[f64]) -> Self {
        let c = T::from_f64;
        Consts { b1: c(beta.0), b2: c(beta.1), ep: c(epsilon), e, c1: T::ONE / (T::ONE - c(sc[0])), c2: T::ONE / (T::ONE - c(sc[1])) }
    }

    /// One element: the moments updated in place, the step returned.
    #[inline(always)]
    fn step(&self, d: T, m: &mut T, v: &mut T) -> T {
        *m = self.b1 * *m + (T::ONE - self.b1) * d;
        *v = self.b2 * *v + (T::ONE - self.b2) * d * d;
        *m * self.c1 / ((*v * self.c2).sqrt() + self.ep) * self.e
    }
}

/// The moments' update and Adam's step at η = 1 (AdamW's too), for `T`'s elements.
#[inline(always)]
pub(super) fn adam_step<T: Float>(beta: (f64, f64), epsilon: f64, e: T, dx: &mut [T], st: &mut [&mut [T]], sc: &[f64]) {
    let k = Consts::new(beta, epsilon, e, sc);
    let (mt, vt) = two(st);
    // Zipped iterators (no indexing) so the loop vectorises.
    for ((d, m), v) in dx.iter_mut().zip(mt.iter_mut()).zip(vt.iter_mut()) {
        *d = k.step(*d, m, v);
    }
}

impl Adam {
    /// The chain `[Adam]` alone, in one pass: `x -= step` as each step is made, without the
    /// step buffer the chain's general loop copies the gradient into and reads back (the same
    /// arithmetic, so the same numbers). Advances the scalars.
    #[inline(always)]
    pub(crate) fn update_x<T: Float>(&self, x: &mut [T], dx: &[T], st: &mut [&mut [T]], sc: &mut [f64]) {
        let k = Consts::new(self.beta, self.epsilon, T::from_f64(self.eta), sc);
        let (mt, vt) = two(st);
        for (((x, &d), m), v) in x.iter_mut().zip(dx).zip(mt.iter_mut()).zip(vt.iter_mut()) {
            *x -= k.step(d, m, v);
        }
        advance_powers(self.beta, sc);
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
