//! Ops along one axis on the GPU: gathering (`index_select`, hence `Embedding`), its
//! adjoint `index_add`, and `concat` (hence `stack`). The indices live on the host (they come
//! from Python), so the adjoint's grouping of output positions by source row is built there,
//! as CSR: each thread of the backward kernel then sums its own rows' gradients, with no
//! float atomics.

use super::kernels::{self, packed};
use super::{context, with_buf, wrap};
use crate::error::Result;
use crate::tensor::Tensor;

// md: 0 threads, 1 dim (source length on the axis), 2 k (number of indices), 3 inner,
// then the k indices
const SELECT: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[0]) { return; }
    let inner = md[3];
    let i = t % inner;
    let j = (t / inner) % md[2];
    let o = t / (inner * md[2]);
    y[t] = x[(o * md[1] + md[4u + j]) * inner + i];
}
"#;

// md: 0 threads, 1 dim, 2 k, 3 inner, then dim + 1 row offsets into the position list,
// then the k positions grouped by the source row they read
const ADD: &str = r#"
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[0]) { return; }
    let inner = md[3];
    let i = t % inner;
    let r = (t / inner) % md[1];
    let o = t / (inner * md[1]);
    let list = 4u + md[1] + 1u;
    var acc = 0.0;
    for (var p = md[4u + r]; p < md[5u + r]; p++) {
        acc += g[(o * md[2] + md[list + p]) * inner + i];
    }
    gx[t] = acc;
}
"#;

// md: 0 threads, 1 len (this part's length on the axis), 2 inner, 3 total length, 4 start
const PLACE: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let t = linear(id, nw);
    if (t >= md[0]) { return; }
    let inner = md[2];
    let i = t % inner;
    let a = (t / inner) % md[1];
    let o = t / (inner * md[1]);
    y[(o * md[3] + md[4] + a) * inner + i] = x[t];
}
"#;

/// (outer, inner) sizes around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize) {
    (shape[..axis].iter().product(), shape[axis + 1..].iter().product())
}

/// `x` gathered at positions `idx` along `axis` (indices already checked).
pub(crate) fn index_select(x: &Tensor, axis: usize, idx: &[usize]) -> Result<Tensor> {
    let x = packed(x)?;
    let mut shape = x.shape().to_vec();
    let dim = shape[axis];
    shape[axis] = idx.len();
    let (outer, inner) = around(&shape, axis);
    let n = outer * idx.len() * inner;
    let g = context()?;
    let out = g.alloc(n);
    if n > 0 {
        let mut meta = vec![n as u32, dim as u32, idx.len() as u32, inner as u32];
        meta.extend(idx.iter().map(|&i| i as u32));
        let src = kernels::with_common(SELECT);
        with_buf(&x, |xb| g.launch("index_select", &src, &meta, &[&xb.buf, &out.buf], g.groups_1d(n)));
    }
    Ok(wrap(out, &shape))
}

/// Zeros of `shape` with the slices of `g` added at positions `idx` along `axis`.
pub(crate) fn index_add(gr: &Tensor, shape: &[usize], axis: usize, idx: &[usize]) -> Result<Tensor> {
    let gr = packed(gr)?;
    let dim = shape[axis];
    let (outer, inner) = around(shape, axis);
    let n = outer * dim * inner;
    let g = context()?;
    let out = g.alloc(n);
    if n > 0 {
        // counting sort of the positions by the row they read
        let mut offsets = vec![0u32; dim + 1];
        for &i in idx {
            offsets[i + 1] += 1;
        }
        for r in 0..dim {
            offsets[r + 1] += offsets[r];
        }
        let mut fill = offsets.clone();
        let mut list = vec![0u32; idx.len()];
        for (p, &i) in idx.iter().enumerate() {
            list[fill[i] as usize] = p as u32;
            fill[i] += 1;
        }
        let mut meta = vec![n as u32, dim as u32, idx.len() as u32, inner as u32];
        meta.extend(offsets);
        meta.extend(list);
        let src = kernels::with_common(ADD);
        with_buf(&gr, |gb| g.launch("index_add", &src, &meta, &[&gb.buf, &out.buf], g.groups_1d(n)));
    }
    Ok(wrap(out, shape))
}

/// `parts` joined along `axis` (shapes already checked): each part copied into its slot.
pub(crate) fn concat(parts: &[Tensor], axis: usize, shape: &[usize]) -> Result<Tensor> {
    let (_, inner) = around(shape, axis);
    let total = shape[axis];
    let g = context()?;
    let out = g.alloc(shape.iter().product());
    let src = kernels::with_common(PLACE);
    let mut start = 0;
    for p in parts {
        let p = packed(p)?;
        let len = p.shape()[axis];
        let n = p.numel();
        if n > 0 {
            let meta = [n as u32, len as u32, inner as u32, total as u32, start as u32];
            with_buf(&p, |pb| g.launch("concat", &src, &meta, &[&pb.buf, &out.buf], g.groups_1d(n)));
        }
        start += len;
    }
    Ok(wrap(out, shape))
}
