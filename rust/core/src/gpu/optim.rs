//! Optimiser rules on the GPU: the elementwise Optimisers.jl rules as one WGSL kernel, so
//! parameters, gradients and state stay on the device. The kernel is a switch over the rules
//! that have WGSL (`OptRule::WGSL`, beside each rule's CPU code), numbered by their place in
//! the registry. A chain runs as one dispatch per rule over a step buffer (a copy of the
//! gradient), then one for `x -= step`, the same order of operations as `Rule::apply` on the
//! CPU. Rules without WGSL (a reduction as ClipNorm's, a counter as AccumGrad's, the rarer
//! rules) take the CPU path in `optim::update`.

use std::sync::OnceLock;

use super::{context, with_buf, Gpu};
use crate::error::Result;
use crate::optim::{ParamState, Rule, RULES};
use crate::tensor::Tensor;

// meta: n, rule, x_off, s0_off, s1_off, 0, then f32 parameters p[0..8] as bits
const HEAD: &str = r#"
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
"#;

/// The code of `x -= step`, past every rule's.
const SUBTRACT: u32 = u32::MAX;

/// The kernel: one case per rule with WGSL, numbered by its place in the registry.
fn source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        let mut src = String::from(HEAD);
        for (code, rule) in RULES.iter().enumerate() {
            if let Some(body) = rule.wgsl {
                src += &super::kernels::case(code as u32, rule.name, body);
            }
        }
        src += &format!("        case {SUBTRACT}u: {{ x[xi] = x[xi] - g; }}\n        default: {{}}\n    }}\n}}\n");
        super::kernels::with_common(&src)
    })
}

/// Whether every rule of `chain` has a GPU kernel.
pub(crate) fn supported(chain: &[Rule]) -> bool {
    chain.iter().all(|r| RULES[r.index()].wgsl.is_some())
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
        let params = rule.gpu_params(sc).expect("checked by supported()");
        launch(g, rule.index() as u32, &params, x, &step, arrs.first(), arrs.get(1))?;
        rule.advance(sc);
    }
    launch(g, SUBTRACT, &[], x, &step, None, None)
}

fn launch(g: &Gpu, code: u32, params: &[f64], x: &Tensor, step: &Tensor, s0: Option<&Tensor>, s1: Option<&Tensor>) -> Result<()> {
    let n = x.numel();
    let off = |t: Option<&Tensor>| t.map_or(0, |t| t.layout().offset as u32);
    let mut meta = vec![n as u32, code, x.layout().offset as u32, off(s0), off(s1), 0];
    meta.extend((0..8).map(|i| (params.get(i).copied().unwrap_or(0.0) as f32).to_bits()));
    let (name, src) = ("optim", source());
    // Rules without state bind the device's spare buffers in their place.
    let (d0, d1) = (g.spare(0), g.spare(1));
    with_buf(x, |xb| {
        with_buf(step, |sb| {
            let bind = |t: Option<&Tensor>, spare: &super::GpuBuf, f: &mut dyn FnMut(&wgpu::Buffer)| match t {
                Some(t) => with_buf(t, |b| f(&b.buf)),
                None => f(&spare.buf),
            };
            bind(s0, d0, &mut |b0| bind(s1, d1, &mut |b1| g.launch(name, src, &meta, &[&xb.buf, &sb.buf, b0, b1], g.groups_1d(n))))
        })
    });
    Ok(())
}
