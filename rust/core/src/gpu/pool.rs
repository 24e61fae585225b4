//! Max pooling on the GPU. The forward kernel writes each window's maximum and the flat
//! input index of its first maximum (the CPU's tie rule: first in kernel order, NaN wins);
//! the backward kernel gathers, for each input element, the gradients of the windows whose
//! arg-max it is (a gather, so no float atomics are needed).

use std::sync::Arc;

use super::{context, kernels, with_buf, wrap, GpuBuf};
use crate::backprop::{should_record, BackwardOp};
use crate::error::{Error, Result};
use crate::ops::pool::Geom;
use crate::tensor::Tensor;

// md: 0 planes, 1-3 i, 4-6 k, 7-9 o, 10-12 s, 13-15 lo, 16 threads
const FORWARD: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> arg: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[16]) { return; }
    var r = t;
    let o2 = r % md[9]; r = r / md[9];
    let o1 = r % md[8]; r = r / md[8];
    let o0 = r % md[7];
    let pl = r / md[7];
    let base = pl * md[1] * md[2] * md[3];
    var best = 0u;
    var bv = 0.0;
    var unset = true;
    for (var k0 = 0u; k0 < md[4]; k0++) {
        let i0 = i32(o0 * md[10] + k0) - i32(md[13]);
        if (i0 < 0 || i0 >= i32(md[1])) { continue; }
        for (var k1 = 0u; k1 < md[5]; k1++) {
            let i1 = i32(o1 * md[11] + k1) - i32(md[14]);
            if (i1 < 0 || i1 >= i32(md[2])) { continue; }
            for (var k2 = 0u; k2 < md[6]; k2++) {
                let i2 = i32(o2 * md[12] + k2) - i32(md[15]);
                if (i2 < 0 || i2 >= i32(md[3])) { continue; }
                let at = base + (u32(i0) * md[2] + u32(i1)) * md[3] + u32(i2);
                let v = x[at];
                if (unset || v > bv || (v != v && bv == bv)) {
                    best = at;
                    bv = v;
                    unset = false;
                }
            }
        }
    }
    y[t] = bv;
    arg[t] = best;
}
"#;

const BACKWARD: &str = r#"
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> arg: array<u32>;
@group(0) @binding(3) var<storage, read_write> gx: array<f32>;

// The output position whose window reads input position i at kernel position k, or -1.
fn src(j: u32, i: u32, k: u32) -> i32 {
    let num = i32(i + md[13u + j]) - i32(k);
    let s = i32(md[10u + j]);
    if (num < 0 || num % s != 0 || num / s >= i32(md[7u + j])) { return -1; }
    return num / s;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[16]) { return; }
    var r = t;
    let i2 = r % md[3]; r = r / md[3];
    let i1 = r % md[2]; r = r / md[2];
    let i0 = r % md[1];
    let pl = r / md[1];
    let obase = pl * md[7] * md[8] * md[9];
    var acc = 0.0;
    for (var k0 = 0u; k0 < md[4]; k0++) {
        let p0 = src(0u, i0, k0);
        if (p0 < 0) { continue; }
        for (var k1 = 0u; k1 < md[5]; k1++) {
            let p1 = src(1u, i1, k1);
            if (p1 < 0) { continue; }
            for (var k2 = 0u; k2 < md[6]; k2++) {
                let p2 = src(2u, i2, k2);
                if (p2 < 0) { continue; }
                let o = obase + (u32(p0) * md[8] + u32(p1)) * md[9] + u32(p2);
                if (arg[o] == t) { acc += g[o]; }
            }
        }
    }
    gx[t] = acc;
}
"#;

/// The gradient of GPU max pooling: each window's gradient to its arg-max.
pub(crate) struct MaxPoolBackward {
    meta: Vec<u32>,
    arg: Arc<GpuBuf>,
    in_shape: Vec<usize>,
}

impl BackwardOp for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "maxpool"
    }
    fn backward(&self, _inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if should_record(&[g]) {
            return Err(Error::Device { op: "maxpool", msg: "second derivatives of max pooling are not available on the GPU yet; use the CPU".into() });
        }
        let gc = kernels::packed(g)?;
        let gpu = context()?;
        let n: usize = self.in_shape.iter().product();
        let out = gpu.alloc(n);
        if n > 0 {
            let mut meta = self.meta.clone();
            meta.push(n as u32);
            let src = kernels::with_common(BACKWARD);
            with_buf(&gc, |gb| gpu.launch("maxpool_backward", &src, &meta, &[&gb.buf, &self.arg.buf, &out.buf], gpu.groups_1d(n)));
        }
        Ok(vec![Some(wrap(out, &self.in_shape))])
    }
}

/// The geometry as the kernels read it: planes, then i, k, o, stride and low padding, three
/// each (entries 0..=15).
fn meta(g: &Geom) -> Vec<u32> {
    let mut m = vec![g.planes as u32];
    for a in [g.i, g.k, g.o, g.s, g.lo] {
        m.extend(a.iter().map(|&v| v as u32));
    }
    m
}

/// Max pooling of a GPU tensor of geometry `g`, and its backward op.
pub(crate) fn maxpool(g: &Geom, x: &Tensor, shape: &[usize]) -> Result<(Tensor, MaxPoolBackward)> {
    let meta = meta(g);
    let x = kernels::packed(x)?;
    let gpu = context()?;
    let n: usize = shape.iter().product();
    let (out, arg) = (gpu.alloc(n), gpu.alloc(n));
    if n > 0 {
        let mut m = meta.clone();
        m.push(n as u32);
        let src = kernels::with_common(FORWARD);
        with_buf(&x, |xb| gpu.launch("maxpool", &src, &m, &[&xb.buf, &out.buf, &arg.buf], gpu.groups_1d(n)));
    }
    Ok((wrap(out, shape), MaxPoolBackward { meta, arg: Arc::new(arg), in_shape: x.shape().to_vec() }))
}
