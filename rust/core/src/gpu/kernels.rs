//! WGSL kernels and their launchers. Every kernel reads its inputs through (shape, strides,
//! offset), so views (transposes, broadcasts, slices) run without a copy, and writes a
//! fresh contiguous output, as the CPU kernels do.
//!
//! Metadata travels in a u32 storage buffer (binding 0); signed strides and float
//! parameters are bit-cast into it.

use super::{context, with_buf, wrap};
use crate::error::{shape_err, Error, Result};
use crate::layout::broadcast_shapes;
use crate::ops::binary::BinaryOp;
use crate::ops::compare::CmpOp;
use crate::ops::nn::Act;
use crate::ops::unary::UnaryOp;
use crate::tensor::Tensor;
use crate::Device;

/// Index helpers shared by the elementwise kernels: the linear thread index of a 1-D launch
/// folded into two dimensions, and the strided offset of element `i` of a row-major shape.
const COMMON: &str = r#"
@group(0) @binding(0) var<storage, read> md: array<u32>;

fn linear(id: vec3<u32>, nw: vec3<u32>) -> u32 {
    return id.x + id.y * nw.x * 256u;
}

// Offset of row-major element `i` of shape md[sh..sh+nd] under strides md[st..st+nd].
fn strided(i: u32, nd: u32, sh: u32, st: u32, off: u32) -> u32 {
    var rem = i;
    var o = i32(off);
    for (var d = i32(nd) - 1; d >= 0; d--) {
        let s = md[sh + u32(d)];
        o += i32(rem % s) * bitcast<i32>(md[st + u32(d)]);
        rem = rem / s;
    }
    return u32(o);
}

// The fused activations of Dense and Conv (`act_code`).
fn actf(v: f32, code: u32) -> f32 {
    switch code {
        case 1u: { return select(v, 0.0, v < 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-v)); }
        case 3u: { return tanh(clamp(v, -15.0, 15.0)); }
        default: { return v; }
    }
}
"#;

pub(crate) fn act_code(act: Act) -> u32 {
    match act {
        Act::Identity => 0,
        Act::Relu => 1,
        Act::Sigmoid => 2,
        Act::Tanh => 3,
    }
}

// md: n, ndim, op, off, p0 (f32 bits), p1 (f32 bits), shape[ndim], strides[ndim]
const UNARY: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(id, nw);
    if (i >= md[0]) { return; }
    let nd = md[1];
    let a = x[strided(i, nd, 6u, 6u + nd, md[3])];
    let p0 = bitcast<f32>(md[4]);
    let p1 = bitcast<f32>(md[5]);
    var r = a;
    switch md[2] {
        case 0u: { r = a; }                                   // copy
        case 1u: { r = -a; }
        case 2u: { r = exp(a); }
        case 3u: { r = log(a); }
        case 4u: {                                            // log1p, Kahan's form
            let u = 1.0 + a;
            if (u == 1.0) { r = a; } else { r = log(u) * a / (u - 1.0); }
        }
        case 5u: { r = sqrt(a); }
        case 6u: { r = abs(a); }
        case 7u: { r = tanh(clamp(a, -15.0, 15.0)); }         // tanh overflows to NaN past ~44 on some drivers
        case 8u: { r = 1.0 / (1.0 + exp(-a)); }
        case 9u: { r = select(a, 0.0, a < 0.0); }             // relu; NaN passes through
        case 10u: { r = sin(a); }
        case 11u: { r = cos(a); }
        case 12u: { r = max(a, 0.0) + log(1.0 + exp(-abs(a))); }  // softplus
        case 13u: { r = select(p0 * a, a, a > 0.0); }         // leakyrelu
        case 14u: { r = select(p0 * (exp(a) - 1.0), a, a > 0.0); }  // elu
        case 15u: { r = select(min(max(a, p0), p1), a, a != a); }   // clamp; NaN passes through
        case 16u: { r = sign(a); }
        case 17u: { r = select(0.0, 1.0, a >= p0 && a <= p1); }     // in-range mask
        default: { r = a; }
    }
    y[i] = r;
}
"#;

// md: n, ndim, op, a_off, b_off, 0, shape[ndim], a_strides[ndim], b_strides[ndim]
const BINARY: &str = r#"
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn powf(x: f32, e: f32) -> f32 {
    if (e == 2.0) { return x * x; }
    if (e == 0.0) { return 1.0; }
    if (x < 0.0) {
        // Defined for integer exponents only, as in numpy.
        if (e != floor(e)) { return bitcast<f32>(0x7fc00000u); }
        let m = pow(-x, e);
        return select(m, -m, (i32(e) & 1) == 1);
    }
    return pow(x, e);
}

fn mask(c: bool) -> f32 { return select(0.0, 1.0, c); }

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(id, nw);
    if (i >= md[0]) { return; }
    let nd = md[1];
    let p = a[strided(i, nd, 6u, 6u + nd, md[3])];
    let q = b[strided(i, nd, 6u, 6u + 2u * nd, md[4])];
    var r = 0.0;
    switch md[2] {
        case 0u: { r = p + q; }
        case 1u: { r = p - q; }
        case 2u: { r = p * q; }
        case 3u: { r = p / q; }
        case 4u: { r = powf(p, q); }
        case 5u: { r = select(q, p, p != p || p >= q); }      // maximum; NaN propagates
        case 6u: { r = select(q, p, p != p || p <= q); }      // minimum
        case 7u: { r = mask(p == q); }
        case 8u: { r = mask(p != q); }
        case 9u: { r = mask(p < q); }
        case 10u: { r = mask(p <= q); }
        case 11u: { r = mask(p > q); }
        case 12u: { r = mask(p >= q); }
        default: { r = p; }
    }
    y[i] = r;
}
"#;

// meta: n, ndim, c_off, a_off, b_off, 0, shape[ndim], c_strides, a_strides, b_strides
const WHERE: &str = r#"
@group(0) @binding(1) var<storage, read> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(id, nw);
    if (i >= md[0]) { return; }
    let nd = md[1];
    // Only the chosen branch is read, so an Inf or NaN in the other never leaks through.
    if (c[strided(i, nd, 6u, 6u + nd, md[2])] != 0.0) {
        y[i] = a[strided(i, nd, 6u, 6u + 2u * nd, md[3])];
    } else {
        y[i] = b[strided(i, nd, 6u, 6u + 3u * nd, md[4])];
    }
}
"#;

// One thread per output element, looping over the reduced elements.
// md: n_out, ndim, kind, off, count, 0, shape[ndim], strides[ndim], reduced[ndim]
const REDUCE: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let j = linear(id, nw);
    if (j >= md[0]) { return; }
    let nd = md[1];
    let kind = md[2];
    var acc = 0.0;
    if (kind == 1u) { acc = bitcast<f32>(0xff800000u); }      // -inf
    if (kind == 2u) { acc = bitcast<f32>(0x7f800000u); }      // +inf
    var nan = false;
    for (var t = 0u; t < md[4]; t++) {
        var rj = j;
        var rt = t;
        var o = i32(md[3]);
        for (var d = i32(nd) - 1; d >= 0; d--) {
            let s = md[6u + u32(d)];
            var k = 0u;
            if (md[6u + 2u * nd + u32(d)] == 1u) { k = rt % s; rt = rt / s; } else { k = rj % s; rj = rj / s; }
            o += i32(k) * bitcast<i32>(md[6u + nd + u32(d)]);
        }
        let v = x[u32(o)];
        nan = nan || v != v;
        if (kind == 0u) { acc += v; } else if (kind == 1u) { acc = max(acc, v); } else { acc = min(acc, v); }
    }
    if (nan && kind != 0u) { acc = bitcast<f32>(0x7fc00000u); }
    y[j] = acc;
}
"#;

// C[b] = act(A[b] @ B[b] + bias) in 16x16 tiles; A and B strided (batch stride 0
// broadcasts); bias over columns, the epilogue of a fused Dense.
// md: M, N, K, a_off, b_off, a_bs, a_rs, a_cs, b_bs, b_rs, b_cs, act, has bias
const MATMUL: &str = r#"
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

fn at(base: u32, bs: u32, rs: u32, cs: u32, bi: u32, r: u32, k: u32) -> i32 {
    return i32(base) + i32(bi) * bitcast<i32>(bs) + i32(r) * bitcast<i32>(rs) + i32(k) * bitcast<i32>(cs);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let M = md[0];
    let N = md[1];
    let K = md[2];
    let bi = wg.z;
    let row = wg.y * 16u + l.y;
    let col = wg.x * 16u + l.x;
    var acc = 0.0;
    let tiles = (K + 15u) / 16u;
    for (var t = 0u; t < tiles; t++) {
        let ka = t * 16u + l.x;
        if (row < M && ka < K) {
            ta[l.y][l.x] = a[at(md[3], md[5], md[6], md[7], bi, row, ka)];
        } else {
            ta[l.y][l.x] = 0.0;
        }
        let kb = t * 16u + l.y;
        if (kb < K && col < N) {
            tb[l.y][l.x] = b[at(md[4], md[8], md[9], md[10], bi, kb, col)];
        } else {
            tb[l.y][l.x] = 0.0;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            acc += ta[l.y][k] * tb[k][l.x];
        }
        workgroupBarrier();
    }
    if (row < M && col < N) {
        c[bi * M * N + row * N + col] = epilogue(acc, col);
    }
}
"#;

// One thread per output, no workgroup memory: for software adapters (lavapipe), which
// emulate workgroup barriers so slowly that the tiled kernel runs ~50x slower than this.
// meta as MATMUL.
const MATMUL_SIMPLE: &str = r#"
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let M = md[0];
    let N = md[1];
    let K = md[2];
    let row = id.y;
    let col = id.x;
    if (row >= M || col >= N) { return; }
    let bi = id.z;
    var ia = i32(md[3]) + i32(bi) * bitcast<i32>(md[5]) + i32(row) * bitcast<i32>(md[6]);
    var ib = i32(md[4]) + i32(bi) * bitcast<i32>(md[8]) + i32(col) * bitcast<i32>(md[10]);
    let sa = bitcast<i32>(md[7]);
    let sb = bitcast<i32>(md[9]);
    var acc = 0.0;
    for (var k = 0u; k < K; k++) {
        acc += a[ia] * b[ib];
        ia += sa;
        ib += sb;
    }
    c[bi * M * N + row * N + col] = epilogue(acc, col);
}
"#;

// Shared by both matmul kernels.
const EPILOGUE: &str = r#"
fn epilogue(v: f32, col: u32) -> f32 {
    var r = v;
    if (md[12] == 1u) { r += bias[col]; }
    return actf(r, md[11]);
}
"#;

// One thread per lane along `axis` of a contiguous input.
// md: lanes, len, inner (stride of the axis), log
const SOFTMAX: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let j = linear(id, nw);
    if (j >= md[0]) { return; }
    let len = md[1];
    let inner = md[2];
    let base = (j / inner) * len * inner + j % inner;
    var m = bitcast<f32>(0xff800000u);
    for (var t = 0u; t < len; t++) { m = max(m, x[base + t * inner]); }
    var nan = false;
    for (var t = 0u; t < len; t++) { let v = x[base + t * inner]; if (v != v) { nan = true; } }
    if (m > 3.0e38 && !nan) {
        // +Inf in the lane: the +Inf entries share the mass (NNlib), as the CPU kernel does
        var k = 0.0;
        for (var t = 0u; t < len; t++) { if (x[base + t * inner] > 3.0e38) { k += 1.0; } }
        for (var t = 0u; t < len; t++) {
            let top = x[base + t * inner] > 3.0e38;
            if (md[3] == 1u) {
                y[base + t * inner] = select(bitcast<f32>(0xff800000u), -log(k), top);
            } else {
                y[base + t * inner] = select(0.0, 1.0 / k, top);
            }
        }
        return;
    }
    if (m < -3.0e38) { m = 0.0; }
    var s = 0.0;
    for (var t = 0u; t < len; t++) { s += exp(x[base + t * inner] - m); }
    let ls = log(s) + m;
    for (var t = 0u; t < len; t++) {
        let v = x[base + t * inner];
        if (md[3] == 1u) { y[base + t * inner] = v - ls; } else { y[base + t * inner] = exp(v - ls); }
    }
}
"#;

pub(crate) fn with_common(body: &str) -> String {
    format!("{COMMON}{body}")
}

fn bits(v: f64) -> u32 {
    (v as f32).to_bits()
}

fn strides_u32(t: &Tensor) -> Vec<u32> {
    t.strides().iter().map(|&s| (s as i32) as u32).collect()
}

/// Shape and strides as the kernels index them: contiguous operands as one flat axis, which
/// spares the per-element index arithmetic (on lavapipe, most of an elementwise op's time).
fn index_dims(shape: &[usize], ts: &[&Tensor]) -> (Vec<u32>, Vec<Vec<u32>>) {
    if ts.iter().all(|t| t.is_contiguous()) {
        let n: usize = shape.iter().product();
        (vec![n as u32], ts.iter().map(|_| vec![1]).collect())
    } else {
        (shape.iter().map(|&d| d as u32).collect(), ts.iter().map(|t| strides_u32(t)).collect())
    }
}

fn check_f32(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != crate::DType::F32 {
        return Err(Error::DType { op, msg: format!("the GPU backend holds float32 only, got {}", t.dtype()) });
    }
    Ok(())
}

/// `t` on the GPU: a one-element CPU operand (a backward rule's constant) is moved over.
pub(crate) fn on_gpu(op: &'static str, t: &Tensor) -> Result<Tensor> {
    check_f32(op, t)?;
    if t.is_gpu() {
        return Ok(t.clone());
    }
    t.to_device(Device::Gpu)
}

fn shader(name: &'static str, body: &'static str) -> (&'static str, String) {
    (name, with_common(body))
}

fn map_launch(op: &'static str, x: &Tensor, code: u32, p: (f64, f64)) -> Result<Tensor> {
    let x = on_gpu(op, x)?;
    let g = context()?;
    let n = x.numel();
    let out = g.alloc(n);
    if n > 0 {
        let (dims, strides) = index_dims(x.shape(), &[&x]);
        let mut meta = vec![n as u32, dims.len() as u32, code, x.layout().offset as u32, bits(p.0), bits(p.1)];
        meta.extend(dims);
        meta.extend(strides.concat());
        let (name, s) = shader("unary", UNARY);
        with_buf(&x, |xb| g.launch(name, &s, &meta, &[&xb.buf, &out.buf], g.groups_1d(n)));
    }
    Ok(wrap(out, x.shape()))
}

/// A fresh contiguous copy of a GPU tensor.
pub(crate) fn copy(x: &Tensor) -> Result<Tensor> {
    map_launch("copy", x, 0, (0.0, 0.0))
}

// md: n, ndim, dst offset, shape[ndim], dst strides[ndim]. The source is packed.
const WRITE_STRIDED: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(id, nw);
    if (i >= md[0]) { return; }
    let nd = md[1];
    y[strided(i, nd, 3u, 3u + nd, md[2])] = x[i];
}
"#;

/// Write the packed `src` (same shape) into the GPU view `dst`, in place: the other elements
/// of `dst`'s buffer keep their values.
pub(crate) fn write_strided(dst: &Tensor, src: &Tensor) -> Result<()> {
    let g = context()?;
    let n = dst.numel();
    if n == 0 {
        return Ok(());
    }
    let mut meta = vec![n as u32, dst.ndim() as u32, dst.layout().offset as u32];
    meta.extend(dst.shape().iter().map(|&d| d as u32));
    meta.extend(strides_u32(dst));
    let (name, s) = shader("write_strided", WRITE_STRIDED);
    with_buf(src, |sb| with_buf(dst, |db| g.launch(name, &s, &meta, &[&sb.buf, &db.buf], g.groups_1d(n))));
    Ok(())
}

/// A contiguous copy of a GPU tensor (itself when already contiguous).
pub(crate) fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        return Ok(x.clone());
    }
    map_launch("contiguous", x, 0, (0.0, 0.0))
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let (code, p) = match op {
        UnaryOp::Neg => (1, (0.0, 0.0)),
        UnaryOp::Exp => (2, (0.0, 0.0)),
        UnaryOp::Log => (3, (0.0, 0.0)),
        UnaryOp::Log1p => (4, (0.0, 0.0)),
        UnaryOp::Sqrt => (5, (0.0, 0.0)),
        UnaryOp::Abs => (6, (0.0, 0.0)),
        UnaryOp::Tanh => (7, (0.0, 0.0)),
        UnaryOp::Sigmoid => (8, (0.0, 0.0)),
        UnaryOp::Relu => (9, (0.0, 0.0)),
        UnaryOp::Sin => (10, (0.0, 0.0)),
        UnaryOp::Cos => (11, (0.0, 0.0)),
        UnaryOp::Softplus => (12, (0.0, 0.0)),
        UnaryOp::LeakyRelu(s) => (13, (s, 0.0)),
        UnaryOp::Elu(a) => (14, (a, 0.0)),
        UnaryOp::Clamp(lo, hi) => (15, (lo, hi)),
        UnaryOp::Sign => (16, (0.0, 0.0)),
        UnaryOp::InRange(lo, hi) => (17, (lo, hi)),
    };
    map_launch(op.name(), x, code, p)
}

fn zip_launch(op: &'static str, a: &Tensor, b: &Tensor, code: u32) -> Result<Tensor> {
    let (a, b) = (on_gpu(op, a)?, on_gpu(op, b)?);
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let (a, b) = (a.broadcast_to(&shape)?, b.broadcast_to(&shape)?);
    let g = context()?;
    let n = a.numel();
    let out = g.alloc(n);
    if n > 0 {
        let (dims, strides) = index_dims(&shape, &[&a, &b]);
        let mut meta = vec![n as u32, dims.len() as u32, code, a.layout().offset as u32, b.layout().offset as u32, 0];
        meta.extend(dims);
        meta.extend(strides.concat());
        let (name, s) = shader("binary", BINARY);
        with_buf(&a, |ab| with_buf(&b, |bb| g.launch(name, &s, &meta, &[&ab.buf, &bb.buf, &out.buf], g.groups_1d(n))));
    }
    Ok(wrap(out, &shape))
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Pow => 4,
        BinaryOp::Maximum => 5,
        BinaryOp::Minimum => 6,
    };
    zip_launch(op.name(), a, b, code)
}

/// `a` where `cond` is nonzero, else `b`, all broadcast to `shape`.
pub(crate) fn where_(cond: &Tensor, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let ts = [on_gpu("where", cond)?, on_gpu("where", a)?, on_gpu("where", b)?];
    let ts = [ts[0].broadcast_to(shape)?, ts[1].broadcast_to(shape)?, ts[2].broadcast_to(shape)?];
    let g = context()?;
    let n: usize = shape.iter().product();
    let out = g.alloc(n);
    if n > 0 {
        let mut meta = vec![n as u32, shape.len() as u32];
        meta.extend(ts.iter().map(|t| t.layout().offset as u32));
        meta.push(0);
        meta.extend(shape.iter().map(|&d| d as u32));
        for t in &ts {
            meta.extend(strides_u32(t));
        }
        let (name, s) = shader("where", WHERE);
        with_buf(&ts[0], |c| with_buf(&ts[1], |x| with_buf(&ts[2], |y| g.launch(name, &s, &meta, &[&c.buf, &x.buf, &y.buf, &out.buf], g.groups_1d(n)))));
    }
    Ok(wrap(out, shape))
}

pub(crate) fn compare(op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let code = match op {
        CmpOp::Eq => 7,
        CmpOp::Ne => 8,
        CmpOp::Lt => 9,
        CmpOp::Le => 10,
        CmpOp::Gt => 11,
        CmpOp::Ge => 12,
    };
    zip_launch("compare", a, b, code)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReduceKind {
    Sum = 0,
    Max = 1,
    Min = 2,
}

/// Reduce `axes` (sorted, distinct) of `x`, dropping them from the shape.
pub(crate) fn reduce(x: &Tensor, axes: &[usize], kind: ReduceKind) -> Result<Tensor> {
    let x = on_gpu("reduce", x)?;
    let g = context()?;
    let shape: Vec<usize> = x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    let n_out: usize = shape.iter().product();
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let out = g.alloc(n_out);
    if n_out > 0 {
        let nd = x.ndim() as u32;
        let mut meta = vec![n_out as u32, nd, kind as u32, x.layout().offset as u32, count as u32, 0];
        meta.extend(x.shape().iter().map(|&d| d as u32));
        meta.extend(strides_u32(&x));
        meta.extend((0..x.ndim()).map(|i| axes.contains(&i) as u32));
        let (name, s) = shader("reduce", REDUCE);
        with_buf(&x, |xb| g.launch(name, &s, &meta, &[&xb.buf, &out.buf], g.groups_1d(n_out)));
    }
    Ok(wrap(out, &shape))
}

/// Batched product of same-batch operands `[B.., m, k] @ [B.., k, n]`.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_bias_act(a, b, None, Act::Identity)
}

/// `act(a @ b + bias)` in one kernel (bias over the last axis; shapes already checked).
pub(crate) fn matmul_bias_act(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let (a, b) = (on_gpu("matmul", a)?, on_gpu("matmul", b)?);
    let nd = a.ndim();
    let (m, k, n) = (a.shape()[nd - 2], a.shape()[nd - 1], b.shape()[nd - 1]);
    let batch = &a.shape()[..nd - 2];
    let nb: usize = batch.iter().product();
    let mut out_shape = batch.to_vec();
    out_shape.extend([m, n]);
    // Fold the batch axes into one strided axis: a copy only where they do not fold.
    let fold = |t: &Tensor, r: usize, c: usize| -> Result<Tensor> {
        let t = if nd > 3 { contiguous(t)?.reshape_raw(&[nb, r, c])? } else { t.clone() };
        Ok(if t.ndim() == 2 { t.reshape_raw(&[1, r, c]).or_else(|_| contiguous(&t)?.reshape_raw(&[1, r, c]))? } else { t })
    };
    let (a3, b3) = (fold(&a, m, k)?, fold(&b, k, n)?);
    let g = context()?;
    let out = g.alloc(nb * m * n);
    if nb * m * n == 0 {
        return Ok(wrap(out, &out_shape));
    }
    if nb > g.max_workgroups as usize || m.div_ceil(16) > g.max_workgroups as usize || n.div_ceil(16) > g.max_workgroups as usize {
        return shape_err("matmul", format!("{:?} @ {:?} is past the GPU's dispatch limits", a.shape(), b.shape()));
    }
    let (sa, sb) = (strides_u32(&a3), strides_u32(&b3));
    let bias = bias.map(packed).transpose()?;
    let meta = vec![
        m as u32,
        n as u32,
        k as u32,
        a3.layout().offset as u32,
        b3.layout().offset as u32,
        sa[0],
        sa[1],
        sa[2],
        sb[0],
        sb[1],
        sb[2],
        act_code(act),
        bias.is_some() as u32,
    ];
    let (name, body) = if tiled_matmul(g) { ("matmul", MATMUL) } else { ("matmul_simple", MATMUL_SIMPLE) };
    let s = with_common(&format!("{body}{EPILOGUE}"));
    let groups = [n.div_ceil(16) as u32, m.div_ceil(16) as u32, nb as u32];
    with_buf(&a3, |ab| {
        with_buf(&b3, |bb| match &bias {
            Some(bt) => with_buf(bt, |cb| g.launch(name, &s, &meta, &[&ab.buf, &bb.buf, &cb.buf, &out.buf], groups)),
            None => g.launch(name, &s, &meta, &[&ab.buf, &bb.buf, &g.spare(0).buf, &out.buf], groups),
        })
    });
    Ok(wrap(out, &out_shape))
}

/// A contiguous GPU tensor starting at offset 0 (what the conv, pool and axis kernels index).
pub(crate) fn packed(t: &Tensor) -> Result<Tensor> {
    let t = on_gpu("gpu", t)?;
    if t.is_contiguous() && t.layout().offset == 0 {
        Ok(t)
    } else {
        copy(&t)
    }
}

/// The shared-memory tiled kernel on hardware; the plain one on software adapters.
/// `FLUXRS_GPU_MATMUL=tiled|simple` overrides the choice (tests run both).
fn tiled_matmul(g: &super::Gpu) -> bool {
    match std::env::var("FLUXRS_GPU_MATMUL").as_deref() {
        Ok("tiled") => true,
        Ok("simple") => false,
        _ => !g.is_software(),
    }
}

/// softmax or logsoftmax along `axis`.
pub(crate) fn softmax(x: &Tensor, axis: usize, log: bool) -> Result<Tensor> {
    let x = contiguous(&on_gpu("softmax", x)?)?;
    let x = if x.layout().offset != 0 { map_launch("softmax", &x, 0, (0.0, 0.0))? } else { x };
    let g = context()?;
    let n = x.numel();
    let out = g.alloc(n);
    let len = x.shape()[axis];
    if n > 0 {
        let inner: usize = x.shape()[axis + 1..].iter().product();
        let lanes = n / len;
        let meta = vec![lanes as u32, len as u32, inner as u32, log as u32];
        let (name, s) = shader("softmax", SOFTMAX);
        with_buf(&x, |xb| g.launch(name, &s, &meta, &[&xb.buf, &out.buf], g.groups_1d(lanes)));
    }
    Ok(wrap(out, x.shape()))
}
