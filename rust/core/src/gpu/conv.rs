//! Convolutions on the GPU: direct kernels, one thread per output element, over the same
//! geometry as the CPU's im2col path (`ops::conv::Geom`, spatial axes normalised to three).
//! forward: y = act(conv(x, w) + b); data: act(conv_transpose(gy, w) + b) (the input
//! gradient, and ConvTranspose's forward); filter: the weight gradient.

use super::kernels::packed;
use super::{context, with_buf, wrap};
use crate::error::Result;
use crate::ops::conv::Geom;
use crate::ops::nn::Act;
use crate::tensor::Tensor;

// md: 0 n, 1 cin, 2 cout, 3 groups, 4-6 i, 7-9 k, 10-12 o, 13-15 s, 16-18 d, 19-21 lo,
//     22 flip, 23 act, 24 has bias, 25 threads
const PRELUDE: &str = r#"
fn cig() -> u32 { return md[1] / md[3]; }
fn cog() -> u32 { return md[2] / md[3]; }
// The input offset of kernel position kj on axis j (flipped for a true convolution).
fn koff(j: u32, kj: u32) -> i32 {
    var k = kj;
    if (md[22] == 1u) { k = md[7u + j] - 1u - kj; }
    return i32(k * md[16u + j]) - i32(md[19u + j]);
}
"#;

const FORWARD: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[25]) { return; }
    var r = t;
    let o2 = r % md[12]; r = r / md[12];
    let o1 = r % md[11]; r = r / md[11];
    let o0 = r % md[10]; r = r / md[10];
    let co = r % md[2];
    let nn = r / md[2];
    let g = co / cog();
    var acc = 0.0;
    if (md[24] == 1u) { acc = bias[co]; }
    for (var ci = 0u; ci < cig(); ci++) {
        let xc = (nn * md[1] + g * cig() + ci) * md[4] * md[5] * md[6];
        let wc = (co * cig() + ci) * md[7] * md[8] * md[9];
        for (var k0 = 0u; k0 < md[7]; k0++) {
            let i0 = i32(o0 * md[13]) + koff(0u, k0);
            if (i0 < 0 || i0 >= i32(md[4])) { continue; }
            for (var k1 = 0u; k1 < md[8]; k1++) {
                let i1 = i32(o1 * md[14]) + koff(1u, k1);
                if (i1 < 0 || i1 >= i32(md[5])) { continue; }
                for (var k2 = 0u; k2 < md[9]; k2++) {
                    let i2 = i32(o2 * md[15]) + koff(2u, k2);
                    if (i2 < 0 || i2 >= i32(md[6])) { continue; }
                    acc += x[xc + (u32(i0) * md[5] + u32(i1)) * md[6] + u32(i2)] * w[wc + (k0 * md[8] + k1) * md[9] + k2];
                }
            }
        }
    }
    y[t] = actf(acc, md[23]);
}
"#;

// The output position that kernel position k of axis j reads input position i from, or -1.
const DATA: &str = r#"
@group(0) @binding(1) var<storage, read> gy: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> gx: array<f32>;

fn src(j: u32, i: u32, k: u32) -> i32 {
    let num = i32(i) - koff(j, k);
    let s = i32(md[13u + j]);
    if (num < 0 || num % s != 0 || num / s >= i32(md[10u + j])) { return -1; }
    return num / s;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[25]) { return; }
    var r = t;
    let i2 = r % md[6]; r = r / md[6];
    let i1 = r % md[5]; r = r / md[5];
    let i0 = r % md[4]; r = r / md[4];
    let ci = r % md[1];
    let nn = r / md[1];
    let g = ci / cig();
    let cil = ci % cig();
    var acc = 0.0;
    if (md[24] == 1u) { acc = bias[ci]; }
    for (var c = 0u; c < cog(); c++) {
        let co = g * cog() + c;
        let yc = (nn * md[2] + co) * md[10] * md[11] * md[12];
        let wc = (co * cig() + cil) * md[7] * md[8] * md[9];
        for (var k0 = 0u; k0 < md[7]; k0++) {
            let p0 = src(0u, i0, k0);
            if (p0 < 0) { continue; }
            for (var k1 = 0u; k1 < md[8]; k1++) {
                let p1 = src(1u, i1, k1);
                if (p1 < 0) { continue; }
                for (var k2 = 0u; k2 < md[9]; k2++) {
                    let p2 = src(2u, i2, k2);
                    if (p2 < 0) { continue; }
                    acc += gy[yc + (u32(p0) * md[11] + u32(p1)) * md[12] + u32(p2)] * w[wc + (k0 * md[8] + k1) * md[9] + k2];
                }
            }
        }
    }
    gx[t] = actf(acc, md[23]);
}
"#;

const FILTER: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gy: array<f32>;
@group(0) @binding(3) var<storage, read_write> gw: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[25]) { return; }
    var r = t;
    let k2 = r % md[9]; r = r / md[9];
    let k1 = r % md[8]; r = r / md[8];
    let k0 = r % md[7]; r = r / md[7];
    let cil = r % cig();
    let co = r / cig();
    let ci = (co / cog()) * cig() + cil;
    var acc = 0.0;
    for (var nn = 0u; nn < md[0]; nn++) {
        let xc = (nn * md[1] + ci) * md[4] * md[5] * md[6];
        let yc = (nn * md[2] + co) * md[10] * md[11] * md[12];
        for (var o0 = 0u; o0 < md[10]; o0++) {
            let i0 = i32(o0 * md[13]) + koff(0u, k0);
            if (i0 < 0 || i0 >= i32(md[4])) { continue; }
            for (var o1 = 0u; o1 < md[11]; o1++) {
                let i1 = i32(o1 * md[14]) + koff(1u, k1);
                if (i1 < 0 || i1 >= i32(md[5])) { continue; }
                for (var o2 = 0u; o2 < md[12]; o2++) {
                    let i2 = i32(o2 * md[15]) + koff(2u, k2);
                    if (i2 < 0 || i2 >= i32(md[6])) { continue; }
                    acc += gy[yc + (o0 * md[11] + o1) * md[12] + o2] * x[xc + (u32(i0) * md[5] + u32(i1)) * md[6] + u32(i2)];
                }
            }
        }
    }
    gw[t] = acc;
}
"#;

/// The geometry as the kernels read it: n, cin, cout, groups, then i, k, o, stride,
/// dilation, low padding (three each), then flip (entries 0..=22).
fn meta(g: &Geom) -> Vec<u32> {
    let mut m = vec![g.n as u32, g.cin as u32, g.cout as u32, g.groups as u32];
    for a in [g.i, g.k, g.o, g.s, g.d, g.lo] {
        m.extend(a.iter().map(|&v| v as u32));
    }
    m.push(g.flip as u32);
    m
}

/// Launch one of the three kernels on geometry `geom`.
fn run(name: &'static str, body: &str, geom: &Geom, act: Act, ins: &[&Tensor], bias: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    let g = context()?;
    let n: usize = shape.iter().product();
    let out = g.alloc(n);
    if n == 0 {
        return Ok(wrap(out, shape));
    }
    let ins = ins.iter().map(|t| packed(t)).collect::<Result<Vec<_>>>()?;
    let bias = bias.map(packed).transpose()?;
    let mut meta = meta(geom);
    meta.extend([act.code(), bias.is_some() as u32, n as u32]);
    let src = super::kernels::with_common(&format!("{PRELUDE}{body}"));
    with_buf(&ins[0], |a| {
        with_buf(&ins[1], |b| {
            let groups = g.groups_1d(n);
            if name == "conv_filter" {
                g.launch(name, &src, &meta, &[&a.buf, &b.buf, &out.buf], groups)
            } else {
                match &bias {
                    Some(bt) => with_buf(bt, |c| g.launch(name, &src, &meta, &[&a.buf, &b.buf, &c.buf, &out.buf], groups)),
                    None => g.launch(name, &src, &meta, &[&a.buf, &b.buf, &g.spare(0).buf, &out.buf], groups),
                }
            }
        })
    });
    Ok(wrap(out, shape))
}

pub(crate) fn forward(g: &Geom, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor> {
    run("conv_forward", FORWARD, g, act, &[x, w], b, shape)
}

pub(crate) fn data(g: &Geom, gy: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Act, shape: &[usize]) -> Result<Tensor> {
    run("conv_data", DATA, g, act, &[gy, w], b, shape)
}

pub(crate) fn filter(g: &Geom, x: &Tensor, gy: &Tensor, shape: &[usize]) -> Result<Tensor> {
    run("conv_filter", FILTER, g, Act::Identity, &[x, gy], None, shape)
}
