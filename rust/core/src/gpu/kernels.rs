//! WGSL kernels and their launchers. Every kernel reads its inputs through (shape, strides,
//! offset), so views (transposes, broadcasts, slices) run without a copy, and writes a
//! fresh contiguous output, as the CPU kernels do.
//!
//! Metadata travels in a u32 storage buffer (binding 0); signed strides and float
//! parameters are bit-cast into it.
//!
//! The elementwise kernels switch over op codes. Their cases are generated from the op
//! enums' tables (`op_table!` in `ops`), where each op's WGSL expression sits beside its
//! variant, so the codes the launchers send and the cases the kernels hold cannot disagree.

use std::sync::OnceLock;

use super::{context, with_buf, wrap};
use crate::error::{shape_err, Error, Result};
use crate::layout::broadcast_shapes;
use crate::ops::binary::BinaryOp;
use crate::ops::compare::CmpOp;
use crate::ops::nn::Act;
use crate::ops::reduce::Kind;
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

// The fused activations of Dense and Conv (`Act::code`).
fn actf(v: f32, code: u32) -> f32 {
    switch code {
{cases}        default: { return v; }
    }
}
"#;

/// One case of a generated switch: `code` runs `body`, commented with the op's name.
pub(crate) fn case(code: u32, name: &str, body: &str) -> String {
    format!("        case {code}u: {{ // {name}\n            {body}\n        }}\n")
}

/// The cases of a switch over an op table: entry `i` (the op whose `code()` is `i`) runs
/// `stmt` of its expression.
fn table_cases(table: &[(&str, &str)], stmt: impl Fn(&str) -> String) -> String {
    table.iter().enumerate().map(|(code, (name, expr))| case(code as u32, name, &stmt(expr))).collect()
}

/// The index helpers, with the activation switch generated from `Act`'s table.
fn common() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| COMMON.replace("{cases}", &table_cases(Act::TABLE, |e| format!("return {e};"))))
}

// One kernel for every `UnaryOp`, switching on its code.
// md: n, ndim, op, off, p0 (f32 bits), p1 (f32 bits), shape[ndim], strides[ndim]
const UNARY: &str = r#"
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// log1p by Kahan's trick: exact where 1 + a rounds to 1.
fn kahan_log1p(a: f32) -> f32 {
    let u = 1.0 + a;
    if (u == 1.0) { return a; }
    return log(u) * a / (u - 1.0);
}

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
{cases}        default: { r = a; }
    }
    y[i] = r;
}
"#;

/// The unary kernel's code for a plain copy: past every `UnaryOp`'s, so the default case.
const COPY: u32 = u32::MAX;

// One kernel per op table (`BinaryOp`, `CmpOp`), switching on the op's code.
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
{cases}        default: { r = p; }
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

// One thread per output element, looping over the reduced elements. SUM, MAX and MIN are
// `reduce::Kind`'s codes, declared ahead of it (`reduce_source`).
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
    if (kind == MAX) { acc = bitcast<f32>(0xff800000u); }     // -inf
    if (kind == MIN) { acc = bitcast<f32>(0x7f800000u); }     // +inf
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
        if (kind == SUM) { acc += v; } else if (kind == MAX) { acc = max(acc, v); } else { acc = min(acc, v); }
    }
    if (nan && kind != SUM) { acc = bitcast<f32>(0x7fc00000u); }
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
    format!("{}{body}", common())
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
        with_buf(&x, |xb| g.launch("unary", unary_source(), &meta, &[&xb.buf, &out.buf], g.groups_1d(n)));
    }
    Ok(wrap(out, x.shape()))
}

/// The unary kernel, a case per `UnaryOp`.
fn unary_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| with_common(&UNARY.replace("{cases}", &table_cases(UnaryOp::TABLE, |e| format!("r = {e};")))))
}

/// A fresh contiguous copy of a GPU tensor.
pub(crate) fn copy(x: &Tensor) -> Result<Tensor> {
    map_launch("copy", x, COPY, (0.0, 0.0))
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
    map_launch("contiguous", x, COPY, (0.0, 0.0))
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    // the variant's fields, in order, as p0 and p1
    let p = match op {
        UnaryOp::LeakyRelu(v) | UnaryOp::Elu(v) => (v, 0.0),
        UnaryOp::Clamp(lo, hi) | UnaryOp::InRange(lo, hi) => (lo, hi),
        _ => (0.0, 0.0),
    };
    map_launch(op.name(), x, op.code(), p)
}

/// The binary kernel with a case per entry of `table`.
fn zip_source(table: &[(&str, &str)]) -> String {
    with_common(&BINARY.replace("{cases}", &table_cases(table, |e| format!("r = {e};"))))
}

/// The binary kernel for `BinaryOp`.
fn binary_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| zip_source(BinaryOp::TABLE))
}

/// The binary kernel for `CmpOp`.
fn compare_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| zip_source(CmpOp::TABLE))
}

/// Run the binary kernel `(name, src)` with op `code` over the broadcast of `a` and `b`.
fn zip_launch(op: &'static str, (name, src): (&'static str, &str), a: &Tensor, b: &Tensor, code: u32) -> Result<Tensor> {
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
        with_buf(&a, |ab| with_buf(&b, |bb| g.launch(name, src, &meta, &[&ab.buf, &bb.buf, &out.buf], g.groups_1d(n))));
    }
    Ok(wrap(out, &shape))
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip_launch(op.name(), ("binary", binary_source()), a, b, op.code())
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
    zip_launch("compare", ("compare", compare_source()), a, b, op.code())
}

/// The reduce kernel, with its kind codes declared from `reduce::Kind`.
fn reduce_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        let kinds = [("SUM", Kind::Sum), ("MAX", Kind::Max), ("MIN", Kind::Min)];
        let consts: String = kinds.iter().map(|(name, k)| format!("const {name}: u32 = {}u;\n", *k as u32)).collect();
        with_common(&format!("{consts}{REDUCE}"))
    })
}

/// Reduce `axes` (sorted, distinct) of `x`, dropping them from the shape.
pub(crate) fn reduce(x: &Tensor, axes: &[usize], kind: Kind) -> Result<Tensor> {
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
        with_buf(&x, |xb| g.launch("reduce", reduce_source(), &meta, &[&xb.buf, &out.buf], g.groups_1d(n_out)));
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
        act.code(),
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
    let x = if x.layout().offset != 0 { map_launch("softmax", &x, COPY, (0.0, 0.0))? } else { x };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every variant of an op enum has its own code, that code is its table entry (under its
    /// name), and the generated kernel holds the case running that entry's expression.
    fn agree(what: &str, ops: &[(u32, &str)], table: &[(&str, &str)], src: &str, stmt: impl Fn(&str) -> String) {
        assert_eq!(ops.len(), table.len(), "{what}: one table entry per variant");
        assert_eq!(ops.iter().map(|o| o.0).collect::<HashSet<_>>().len(), ops.len(), "{what}: codes repeat");
        assert_eq!(table.iter().map(|e| e.0).collect::<HashSet<_>>().len(), table.len(), "{what}: names repeat");
        for &(code, name) in ops {
            assert_ne!(code, COPY, "{what}: {name} takes the copy's code");
            let (entry, expr) = table[code as usize];
            assert_eq!(entry, name, "{what}: code {code}");
            assert!(src.contains(&case(code, name, &stmt(expr))), "{what}: no case {code} ({name}) in\n{src}");
        }
    }

    #[test]
    fn every_op_code_is_unique_and_has_its_case_in_the_generated_kernel() {
        let unary: Vec<_> = UnaryOp::every().into_iter().map(|o| (o.code(), o.name())).collect();
        agree("UnaryOp", &unary, UnaryOp::TABLE, unary_source(), |e| format!("r = {e};"));
        let binary: Vec<_> = BinaryOp::every().into_iter().map(|o| (o.code(), o.name())).collect();
        agree("BinaryOp", &binary, BinaryOp::TABLE, binary_source(), |e| format!("r = {e};"));
        let cmp: Vec<_> = CmpOp::every().into_iter().map(|o| (o.code(), o.name())).collect();
        agree("CmpOp", &cmp, CmpOp::TABLE, compare_source(), |e| format!("r = {e};"));
        let act: Vec<_> = Act::every().into_iter().map(|a| (a.code(), a.name())).collect();
        agree("Act", &act, Act::TABLE, common(), |e| format!("return {e};"));
        // a variant's parameters reach the kernel: every op with fields reads p0
        for op in UnaryOp::every() {
            let has_fields = format!("{op:?}").contains('(');
            assert_eq!(UnaryOp::TABLE[op.code() as usize].1.contains("p0"), has_fields, "{op:?}");
        }
    }
}
