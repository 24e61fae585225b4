//! The Optimisers.jl rules, as Optimisers.jl writes them: each rule turns a gradient `dx`
//! into the step to subtract from `x`, using per-element state arrays and a few scalars.
//! Formulas and defaults follow Optimisers.jl v0.4 `src/rules.jl`.

use crate::dtype::Float;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Descent { eta: f64 },
    Momentum { eta: f64, rho: f64 },
    Nesterov { eta: f64, rho: f64 },
    RMSProp { eta: f64, rho: f64, eps: f64, centred: bool },
    Rprop { eta: f64, ell: (f64, f64), gamma: (f64, f64) },
    Adam { eta: f64, beta: (f64, f64), eps: f64 },
    Lion { eta: f64, beta: (f64, f64) },
    RAdam { eta: f64, beta: (f64, f64), eps: f64 },
    AdaMax { eta: f64, beta: (f64, f64), eps: f64 },
    OAdam { eta: f64, beta: (f64, f64), eps: f64 },
    AdaGrad { eta: f64, eps: f64 },
    AdaDelta { rho: f64, eps: f64 },
    AMSGrad { eta: f64, beta: (f64, f64), eps: f64 },
    NAdam { eta: f64, beta: (f64, f64), eps: f64 },
    AdamW { eta: f64, beta: (f64, f64), lambda: f64, eps: f64, couple: bool },
    AdaBelief { eta: f64, beta: (f64, f64), eps: f64 },
    WeightDecay { lambda: f64 },
    SignDecay { lambda: f64 },
    ClipGrad { delta: f64 },
    ClipNorm { omega: f64, p: f64, throw: bool },
    AccumGrad { n: usize },
}

/// What a rule did with the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `dx` now holds the step to subtract (or to pass to the next rule of a chain).
    Apply,
    /// No step this time (AccumGrad still accumulating).
    Hold,
}

fn arg(name: &str, p: &[f64], i: usize) -> Result<f64> {
    p.get(i).copied().ok_or_else(|| Error::Value { op: "optimiser", msg: format!("{name}: missing hyperparameter #{i}") })
}

impl Rule {
    /// Build a rule from its Optimisers.jl name and positional hyperparameters.
    pub fn from_name(name: &str, p: &[f64]) -> Result<Rule> {
        let a = |i| arg(name, p, i);
        let rule = match name {
            "Descent" => Rule::Descent { eta: a(0)? },
            "Momentum" => Rule::Momentum { eta: a(0)?, rho: a(1)? },
            "Nesterov" => Rule::Nesterov { eta: a(0)?, rho: a(1)? },
            "RMSProp" => Rule::RMSProp { eta: a(0)?, rho: a(1)?, eps: a(2)?, centred: a(3)? != 0.0 },
            "Rprop" => Rule::Rprop { eta: a(0)?, ell: (a(1)?, a(2)?), gamma: (a(3)?, a(4)?) },
            "Adam" => Rule::Adam { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "Lion" => Rule::Lion { eta: a(0)?, beta: (a(1)?, a(2)?) },
            "RAdam" => Rule::RAdam { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "AdaMax" => Rule::AdaMax { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "OAdam" => Rule::OAdam { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "AdaGrad" => Rule::AdaGrad { eta: a(0)?, eps: a(1)? },
            "AdaDelta" => Rule::AdaDelta { rho: a(0)?, eps: a(1)? },
            "AMSGrad" => Rule::AMSGrad { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "NAdam" => Rule::NAdam { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "AdamW" => Rule::AdamW { eta: a(0)?, beta: (a(1)?, a(2)?), lambda: a(3)?, eps: a(4)?, couple: a(5)? != 0.0 },
            "AdaBelief" => Rule::AdaBelief { eta: a(0)?, beta: (a(1)?, a(2)?), eps: a(3)? },
            "WeightDecay" => Rule::WeightDecay { lambda: a(0)? },
            "SignDecay" => Rule::SignDecay { lambda: a(0)? },
            "ClipGrad" => Rule::ClipGrad { delta: a(0)? },
            "ClipNorm" => Rule::ClipNorm { omega: a(0)?, p: a(1)?, throw: a(2)? != 0.0 },
            "AccumGrad" => {
                let n = a(0)?;
                if n < 1.0 || n.fract() != 0.0 {
                    return Err(Error::Value { op: "AccumGrad", msg: format!("must accumulate a whole number >= 1 of gradients, got {n}") });
                }
                Rule::AccumGrad { n: n as usize }
            }
            other => return Err(Error::Value { op: "optimiser", msg: format!("unknown rule {other:?}") }),
        };
        Ok(rule)
    }

    /// Number of per-element state arrays, their initial values, and the initial scalars.
    pub fn state_spec(&self) -> (Vec<f64>, Vec<f64>) {
        match *self {
            Rule::Descent { .. } | Rule::WeightDecay { .. } | Rule::SignDecay { .. } | Rule::ClipGrad { .. } | Rule::ClipNorm { .. } => (vec![], vec![]),
            Rule::Momentum { .. } | Rule::Nesterov { .. } | Rule::Lion { .. } => (vec![0.0], vec![]),
            Rule::RMSProp { centred, .. } => (if centred { vec![0.0, 0.0] } else { vec![0.0] }, vec![]),
            Rule::Rprop { eta, .. } => (vec![0.0, eta], vec![]),
            Rule::Adam { beta, .. } | Rule::AdaMax { beta, .. } | Rule::NAdam { beta, .. } | Rule::AdamW { beta, .. } | Rule::AdaBelief { beta, .. } => {
                (vec![0.0, 0.0], vec![beta.0, beta.1])
            }
            Rule::RAdam { beta, .. } => (vec![0.0, 0.0], vec![beta.0, beta.1, 1.0]),
            Rule::OAdam { beta, .. } => (vec![0.0, 0.0, 0.0], vec![beta.0, beta.1]),
            Rule::AdaGrad { eps, .. } => (vec![eps], vec![]),
            Rule::AdaDelta { .. } => (vec![0.0, 0.0], vec![]),
            Rule::AMSGrad { eps, .. } => (vec![eps, eps, eps], vec![]),
            Rule::AccumGrad { .. } => (vec![0.0], vec![1.0]),
        }
    }

    /// Turn `dx` into this rule's step, in place, updating `st` (state arrays) and `sc` (scalars).
    #[inline(always)] // into `simd`'s target-feature function (optim::update_one)
    pub fn apply<T: Float>(&self, x: &[T], dx: &mut [T], st: &mut [&mut [T]], sc: &mut [f64]) -> Result<Step> {
        let c = T::from_f64;
        match *self {
            Rule::Descent { eta } => {
                let e = c(eta);
                dx.iter_mut().for_each(|d| *d *= e);
            }
            Rule::Momentum { eta, rho } => {
                let (e, r) = (c(eta), c(rho));
                for (d, v) in dx.iter_mut().zip(st[0].iter_mut()) {
                    *v = r * *v + e * *d;
                    *d = *v;
                }
            }
            Rule::Nesterov { eta, rho } => {
                let (e, r) = (c(eta), c(rho));
                for (d, v) in dx.iter_mut().zip(st[0].iter_mut()) {
                    let new = -(r * r) * *v + (T::ONE + r) * e * *d;
                    *v = r * *v - e * *d;
                    *d = new;
                }
            }
            Rule::RMSProp { eta, rho, eps, centred } => {
                let (e, r, ep) = (c(eta), c(rho), c(eps));
                let (quad, rest) = st.split_first_mut().expect("RMSProp state");
                for i in 0..dx.len() {
                    let d = dx[i];
                    quad[i] = r * quad[i] + (T::ONE - r) * d * d;
                    let lin2 = if centred {
                        let lin = &mut rest[0][i];
                        *lin = r * *lin + (T::ONE - r) * d;
                        *lin * *lin
                    } else {
                        T::ZERO
                    };
                    dx[i] = d * e / ((quad[i] - lin2).sqrt() + ep);
                }
            }
            Rule::Rprop { ell, gamma, .. } => {
                let (l0, l1, g0, g1) = (c(ell.0), c(ell.1), c(gamma.0), c(gamma.1));
                let (gs, rest) = st.split_first_mut().expect("Rprop state");
                let etas = &mut rest[0];
                for i in 0..dx.len() {
                    let (g, d) = (gs[i], dx[i]);
                    let s = g * d;
                    etas[i] = if s > T::ZERO {
                        (etas[i] * l1).min(g1)
                    } else if s < T::ZERO {
                        (etas[i] * l0).max(g0)
                    } else {
                        etas[i]
                    };
                    gs[i] = if s < T::ZERO { T::ZERO } else { d };
                    dx[i] = etas[i] * gs[i].signum();
                }
            }
            Rule::Adam { eta, beta, eps } | Rule::AdamW { eta, beta, eps, .. } => {
                let (b1, b2, ep) = (c(beta.0), c(beta.1), c(eps));
                let (bt1, bt2) = (c(sc[0]), c(sc[1]));
                let is_w = matches!(self, Rule::AdamW { .. });
                let e = if is_w { T::ONE } else { c(eta) };
                let (mt, rest) = st.split_first_mut().expect("Adam state");
                let vt = &mut rest[0];
                // Zipped iterators (no indexing) so the loop vectorises; the hoisted bias
                // corrections are Optimisers.jl's expression rearranged, not a different rule.
                let (c1, c2) = (T::ONE / (T::ONE - bt1), T::ONE / (T::ONE - bt2));
                for ((d, m), v) in dx.iter_mut().zip(mt.iter_mut()).zip(vt.iter_mut()) {
                    *m = b1 * *m + (T::ONE - b1) * *d;
                    *v = b2 * *v + (T::ONE - b2) * *d * *d;
                    *d = *m * c1 / ((*v * c2).sqrt() + ep) * e;
                }
                if let Rule::AdamW { eta, lambda, couple, .. } = *self {
                    let (e, l) = (c(eta), c(lambda));
                    for (d, &xi) in dx.iter_mut().zip(x) {
                        *d = if couple { e * (*d + l * xi) } else { e * *d + l * xi };
                    }
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
            }
            Rule::Lion { eta, beta } => {
                let (e, b1, b2) = (c(eta), c(beta.0), c(beta.1));
                for (d, s) in dx.iter_mut().zip(st[0].iter_mut()) {
                    *s = b2 * *d + (T::ONE - b2) * *s;
                    *d = e * ((b2 - b1) * *d + b1 * *s).signum();
                }
            }
            Rule::RAdam { eta, beta, eps } => {
                let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(eps), c(eta));
                let (bt1, bt2, t) = (sc[0], sc[1], sc[2]);
                let rho_inf = 2.0 / (1.0 - beta.1) - 1.0;
                let rho = rho_inf - 2.0 * t * bt2 / (1.0 - bt2);
                let (mt, rest) = st.split_first_mut().expect("RAdam state");
                let vt = &mut rest[0];
                let r = if rho > 4.0 { Some(c(((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)).sqrt())) } else { None };
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
                    dx[i] = match r {
                        Some(r) => mt[i] / (T::ONE - c(bt1)) / ((vt[i] / (T::ONE - c(bt2))).sqrt() + ep) * e * r,
                        None => mt[i] / (T::ONE - c(bt1)) * e,
                    };
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
                sc[2] += 1.0;
            }
            Rule::AdaMax { eta, beta, eps } => {
                let (b1, b2, ep) = (c(beta.0), c(beta.1), c(eps));
                let k = c(eta) / (T::ONE - c(sc[0]));
                let (mt, rest) = st.split_first_mut().expect("AdaMax state");
                let ut = &mut rest[0];
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    ut[i] = nanmax(b2 * ut[i], d.abs());
                    dx[i] = k * mt[i] / (ut[i] + ep);
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
            }
            Rule::OAdam { eta, beta, eps } => {
                let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(eps), c(eta));
                let (bt1, bt2) = (c(sc[0]), c(sc[1]));
                let [mt, vt, term] = st else { unreachable!("OAdam has three state arrays") };
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
                    let prev = term[i];
                    term[i] = e * mt[i] / (T::ONE - bt1) / ((vt[i] / (T::ONE - bt2)).sqrt() + ep);
                    dx[i] = c(2.0) * term[i] - prev;
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
            }
            Rule::AdaGrad { eta, eps } => {
                let (e, ep) = (c(eta), c(eps));
                for (d, acc) in dx.iter_mut().zip(st[0].iter_mut()) {
                    *acc += *d * *d;
                    *d = *d * e / (acc.sqrt() + ep);
                }
            }
            Rule::AdaDelta { rho, eps } => {
                let (r, ep) = (c(rho), c(eps));
                let (acc, rest) = st.split_first_mut().expect("AdaDelta state");
                let dacc = &mut rest[0];
                for i in 0..dx.len() {
                    let d = dx[i];
                    acc[i] = r * acc[i] + (T::ONE - r) * d * d;
                    let step = d * (dacc[i] + ep).sqrt() / (acc[i] + ep).sqrt();
                    dacc[i] = r * dacc[i] + (T::ONE - r) * step * step;
                    dx[i] = step;
                }
            }
            Rule::AMSGrad { eta, beta, eps } => {
                let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(eps), c(eta));
                let [mt, vt, vhat] = st else { unreachable!("AMSGrad has three state arrays") };
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
                    vhat[i] = nanmax(vhat[i], vt[i]);
                    dx[i] = e * mt[i] / (vhat[i].sqrt() + ep);
                }
            }
            Rule::NAdam { eta, beta, eps } => {
                let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(eps), c(eta));
                let (bt1, bt2) = (c(sc[0]), c(sc[1]));
                let (mt, rest) = st.split_first_mut().expect("NAdam state");
                let vt = &mut rest[0];
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    vt[i] = b2 * vt[i] + (T::ONE - b2) * d * d;
                    dx[i] = (b1 * mt[i] / (T::ONE - b1 * bt1) + (T::ONE - b1) * d / (T::ONE - bt1)) / ((vt[i] * b2 / (T::ONE - bt2)).sqrt() + ep) * e;
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
            }
            Rule::AdaBelief { eta, beta, eps } => {
                let (b1, b2, ep, e) = (c(beta.0), c(beta.1), c(eps), c(eta));
                let (bt1, bt2) = (c(sc[0]), c(sc[1]));
                let (mt, rest) = st.split_first_mut().expect("AdaBelief state");
                let s = &mut rest[0];
                for i in 0..dx.len() {
                    let d = dx[i];
                    mt[i] = b1 * mt[i] + (T::ONE - b1) * d;
                    let dev = d - mt[i];
                    s[i] = b2 * s[i] + (T::ONE - b2) * dev * dev + ep;
                    dx[i] = e * mt[i] / (T::ONE - bt1) / ((s[i] / (T::ONE - bt2)).sqrt() + ep);
                }
                sc[0] *= beta.0;
                sc[1] *= beta.1;
            }
            Rule::WeightDecay { lambda } => {
                let l = c(lambda);
                dx.iter_mut().zip(x).for_each(|(d, &xi)| *d += l * xi);
            }
            Rule::SignDecay { lambda } => {
                let l = c(lambda);
                dx.iter_mut().zip(x).for_each(|(d, &xi)| *d += l * xi.signum());
            }
            Rule::ClipGrad { delta } => {
                let dl = c(delta);
                dx.iter_mut().for_each(|d| {
                    if !d.is_nan() {
                        *d = d.max(-dl).min(dl)
                    }
                });
            }
            Rule::ClipNorm { omega, p, throw } => {
                let nrm = norm(dx, p);
                if throw && !nrm.is_finite() {
                    return Err(Error::Value { op: "ClipNorm", msg: format!("gradient has {p}-norm {nrm}, for an array of {} elements", dx.len()) });
                }
                // NaN stays NaN, as Julia's min(NaN, 1) does: a bad gradient must not pass unclipped.
                let lam = c(if nrm.is_nan() { f64::NAN } else { (omega / nrm).min(1.0) });
                dx.iter_mut().for_each(|d| *d *= lam);
            }
            Rule::AccumGrad { n } => {
                let inv = c(1.0 / n as f64);
                let acc = &mut st[0];
                let counter = sc[0] as usize;
                for (a, &d) in acc.iter_mut().zip(dx.iter()) {
                    *a = if counter == 1 { d * inv } else { *a + d * inv };
                }
                if counter >= n {
                    dx.copy_from_slice(acc);
                    sc[0] = 1.0;
                } else {
                    sc[0] = (counter + 1) as f64;
                    return Ok(Step::Hold);
                }
            }
        }
        Ok(Step::Apply)
    }
}

/// Julia's `max`: NaN wins, so a NaN gradient stays visible in the state.
#[inline(always)]
fn nanmax<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::from_f64(f64::NAN)
    } else if a > b {
        a
    } else {
        b
    }
}

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
