use super::*;

hyper! {
    /// RMSProp: `q = ρ q + (1-ρ) dx²; step = η dx / (√q + ϵ)`; centred, it also keeps the
    /// mean `l = ρ l + (1-ρ) dx` and divides by `√(q - l²) + ϵ`.
    pub struct RMSProp { eta: f64, rho: f64, epsilon: f64, centred: bool }
}

impl OptRule for RMSProp {
    const WGSL: Option<&'static str> = Some(
        "let q = p(1) * s0[a] + (1.0 - p(1)) * g * g;
        s0[a] = q;
        var lin2 = 0.0;
        if (p(3) != 0.0) {
            let l = p(1) * s1[b] + (1.0 - p(1)) * g;
            s1[b] = l;
            lin2 = l * l;
        }
        d[i] = g * p(0) / (sqrt(q - lin2) + p(2));",
    );

    fn init(&self) -> State {
        let arrays = if self.centred { vec![("quad", 0.0), ("lin", 0.0)] } else { vec![("quad", 0.0)] };
        State { arrays, scalars: vec![] }
    }

    #[inline(always)]
    fn apply<T: Float>(&self, _x: &[T], dx: &mut [T], st: &mut [&mut [T]], _sc: &mut [f64]) -> Result<Step> {
        let (e, r, ep) = (T::from_f64(self.eta), T::from_f64(self.rho), T::from_f64(self.epsilon));
        let (quad, rest) = st.split_first_mut().expect("RMSProp state");
        for i in 0..dx.len() {
            let d = dx[i];
            quad[i] = r * quad[i] + (T::ONE - r) * d * d;
            let lin2 = if self.centred {
                let lin = &mut rest[0][i];
                *lin = r * *lin + (T::ONE - r) * d;
                *lin * *lin
            } else {
                T::ZERO
            };
            dx[i] = d * e / ((quad[i] - lin2).sqrt() + ep);
        }
        Ok(Step::Apply)
    }

    fn gpu_params(&self, _sc: &[f64]) -> Vec<f64> {
        vec![self.eta, self.rho, self.epsilon, self.centred as u32 as f64]
    }
}
