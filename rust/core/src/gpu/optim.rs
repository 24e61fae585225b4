//! Optimiser rules on the GPU: the elementwise Optimisers.jl rules as one WGSL kernel, so
//! parameters, gradients and state stay on the device. A chain runs as one dispatch per
//! rule over a step buffer (a copy of the gradient), then one for `x -= step`, the same
//! order of operations as `Rule::apply` on the CPU. Rules that need a reduction (ClipNorm)
//! or a counter (AccumGrad), and the rarer rules, take the CPU path in `optim::update`.

use super::{context, with_buf, Gpu};
use crate::error::Result;
use crate::optim::{ParamState, Rule};
use crate::tensor::Tensor;

// meta: n, rule, x_off, s0_off, s1_off, 0, then f32 parameters p[0..8] as bits
const OPTIM: &str = r#"
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
@group(0) @binding(3) var<storage, read_write> s0: array<f32>;
@group(0) @binding(4) var<storage, read_write> s1: array<f32>;

fn p(i: u32) -> f32 { return bitcast<f32>(md[6u + i]); }

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(id, nw);
    if (i >= md[0]) { return; }
    let xi = md[2] + i;
    let a = md[3] + i;
    let b = md[4] + i;
    let g = d[i];
    switch md[1] {
        case 0u: { d[i] = g * p(0); }                                   // Descent(eta)
        case 1u: {                                                      // Momentum(eta, rho)
            let v = p(1) * s0[a] + p(0) * g;
            s0[a] = v;
            d[i] = v;
        }
        case 2u: {                                                      // Nesterov(eta, rho)
            let r = p(1);
            let v = s0[a];
            d[i] = -(r * r) * v + (1.0 + r) * p(0) * g;
            s0[a] = r * v - p(0) * g;
        }
        case 3u: {                                                      // Adam / AdamW(eta, b1, b2, eps, c1, c2, mode, lambda)
            let m = p(1) * s0[a] + (1.0 - p(1)) * g;
            let v = p(2) * s1[b] + (1.0 - p(2)) * g * g;
            s0[a] = m;
            s1[b] = v;
            let mode = p(6);
            var e = p(0);
            if (mode != 0.0) { e = 1.0; }
            var st = m * p(4) / (sqrt(v * p(5)) + p(3)) * e;
            if (mode == 1.0) { st = p(0) * (st + p(7) * x[xi]); }       // AdamW, coupled
            if (mode == 2.0) { st = p(0) * st + p(7) * x[xi]; }         // AdamW, decoupled
            d[i] = st;
        }
        case 4u: { d[i] = g + p(0) * x[xi]; }                           // WeightDecay(lambda)
        case 5u: { d[i] = g + p(0) * sign(x[xi]); }                     // SignDecay(lambda)
        case 6u: { if (g == g) { d[i] = clamp(g, -p(0), p(0)); } }      // ClipGrad(delta); NaN stays
        case 7u: {                                                      // Lion(eta, b1, b2)
            let s = p(2) * g + (1.0 - p(2)) * s0[a];
            s0[a] = s;
            d[i] = p(0) * sign((p(2) - p(1)) * g + p(1) * s);
        }
        case 8u: {                                                      // RMSProp(eta, rho, eps, centred)
            let q = p(1) * s0[a] + (1.0 - p(1)) * g * g;
            s0[a] = q;
            var lin2 = 0.0;
            if (p(3) != 0.0) {
                let l = p(1) * s1[b] + (1.0 - p(1)) * g;
                s1[b] = l;
                lin2 = l * l;
            }
            d[i] = g * p(0) / (sqrt(q - lin2) + p(2));
        }
        case 100u: { x[xi] = x[xi] - g; }                               // the update itself
        default: {}
    }
}
"#;

/// The kernel code and f32 parameters of a rule, or None for rules that run on the CPU.
/// `sc` are the rule's scalars before this step (Adam's running beta powers).
fn code(rule: &Rule, sc: &[f64]) -> Option<(u32, Vec<f64>)> {
    Some(match *rule {
        Rule::Descent { eta } => (0, vec![eta]),
        Rule::Momentum { eta, rho } => (1, vec![eta, rho]),
        Rule::Nesterov { eta, rho } => (2, vec![eta, rho]),
        Rule::Adam { eta, beta, eps } => (3, vec![eta, beta.0, beta.1, eps, 1.0 / (1.0 - sc[0]), 1.0 / (1.0 - sc[1]), 0.0, 0.0]),
        Rule::AdamW { eta, beta, eps, lambda, couple } => {
            (3, vec![eta, beta.0, beta.1, eps, 1.0 / (1.0 - sc[0]), 1.0 / (1.0 - sc[1]), if couple { 1.0 } else { 2.0 }, lambda])
        }
        Rule::WeightDecay { lambda } => (4, vec![lambda]),
        Rule::SignDecay { lambda } => (5, vec![lambda]),
        Rule::ClipGrad { delta } => (6, vec![delta]),
        Rule::Lion { eta, beta } => (7, vec![eta, beta.0, beta.1]),
        Rule::RMSProp { eta, rho, eps, centred } => (8, vec![eta, rho, eps, centred as u32 as f64]),
        _ => return None,
    })
}

/// Whether every rule of `chain` has a GPU kernel.
pub(crate) fn supported(chain: &[Rule]) -> bool {
    chain.iter().all(|r| code(r, &[0.0, 0.0]).is_some())
}

/// `x -= chain(dx)` on the GPU, advancing `st`. The caller has checked shapes and
/// `supported(chain)`; `x` and the state arrays are contiguous GPU tensors.
pub(crate) fn update(chain: &[Rule], x: &Tensor, dx: &Tensor, st: &mut ParamState) -> Result<()> {
    let g = context()?;
    let n = x.numel();
    // A fresh step buffer: the gradient is not the optimiser's to overwrite.
    let step = super::kernels::copy(&dx.to_device(crate::Device::Gpu)?)?;
    if n == 0 {
        return Ok(());
    }
    for ((rule, arrs), sc) in chain.iter().zip(&st.arrays).zip(st.scalars.iter_mut()) {
        let (c, params) = code(rule, sc).expect("checked by supported()");
        launch(g, c, &params, x, &step, arrs.first(), arrs.get(1))?;
        if let Rule::Adam { beta, .. } | Rule::AdamW { beta, .. } = rule {
            sc[0] *= beta.0;
            sc[1] *= beta.1;
        }
    }
    launch(g, 100, &[], x, &step, None, None)
}

fn launch(g: &Gpu, code: u32, params: &[f64], x: &Tensor, step: &Tensor, s0: Option<&Tensor>, s1: Option<&Tensor>) -> Result<()> {
    let n = x.numel();
    let off = |t: Option<&Tensor>| t.map_or(0, |t| t.layout().offset as u32);
    let mut meta = vec![n as u32, code, x.layout().offset as u32, off(s0), off(s1), 0];
    meta.extend((0..8).map(|i| (params.get(i).copied().unwrap_or(0.0) as f32).to_bits()));
    let (name, src) = ("optim", super::kernels::with_common(OPTIM));
    // Rules without state bind the device's spare buffers in their place.
    let (d0, d1) = (g.spare(0), g.spare(1));
    with_buf(x, |xb| {
        with_buf(step, |sb| {
            let bind = |t: Option<&Tensor>, spare: &super::GpuBuf, f: &mut dyn FnMut(&wgpu::Buffer)| match t {
                Some(t) => with_buf(t, |b| f(&b.buf)),
                None => f(&spare.buf),
            };
            bind(s0, d0, &mut |b0| bind(s1, d1, &mut |b1| g.launch(name, &src, &meta, &[&xb.buf, &sb.buf, b0, b1], g.groups_1d(n))))
        })
    });
    Ok(())
}
