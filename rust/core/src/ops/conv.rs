//! Convolution, batch-first, for 1 to 3 spatial dimensions, as im2col + gemm.
//!
//! Layouts are PyTorch's: input `(N, C_in, S...)`, weight `(C_out, C_in/groups, K...)`,
//! bias `(C_out,)`, output `(N, C_out, O...)`. Flux stores the same arrays column-major, so
//! its weight reads `(K..., C_in/groups, C_out)`: the reverse of this one. `stride`,
//! `dilation` and `pad` (per side) are given per spatial axis, in axis order.
//!
//! The kernel computes cross-correlation (PyTorch's `conv`, Flux's `CrossCor`). With
//! `ConvSpec::flip` the kernel is flipped along every spatial axis, which makes it a true
//! convolution: Flux's `Conv`. The flip is folded into the im2col gather, so it is free.
//!
//! Three ops, each linear in each argument, whose backward rules are written with one
//! another, so gradients of any order work:
//! - `conv(x, w)`;
//! - `conv_transpose(y, w)`: the adjoint of `conv(., w)`, i.e. conv's input gradient
//!   (col2im); it is also the forward of a ConvTranspose layer, whose weight
//!   `(C_in, C_out/groups, K...)` is exactly the weight of the conv it transposes;
//! - `conv_filter_grad(x, gy)`: the adjoint of `conv(x, .)`, i.e. conv's weight gradient.
//!
//! d conv/dx = conv_transpose(g, w),   d conv/dw = conv_filter_grad(x, g);
//! d conv_transpose/dy = conv(g, w),   d conv_transpose/dw = conv_filter_grad(g, y);
//! d conv_filter_grad/dx = conv_transpose(gy, g),   d conv_filter_grad/dgy = conv(x, g).
//!
//! Measured on LeNet-5 shapes against a direct loop (see `bench_lenet_im2col_vs_direct`),
//! im2col + gemm is the faster, so it is the only kernel kept. Spatial shapes are
//! normalised to 3-D (leading axes of size 1), so one set of loops serves 1-, 2- and 3-D.
//! The batch is split over rayon threads when the work is large; a single large sample
//! lets gemm use the threads instead.

use std::ops::Range;

use rayon::prelude::*;

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::error::{shape_err, value_err, Result};
use crate::ops::binary::check_same_dtype;
use crate::ops::matmul::gemm_rm;
use crate::ops::nn::{act_backward, apply_act, Act};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

/// Multiply-adds above which the batch is split over rayon threads (or gemm parallelises).
/// Each parallel region costs thread wake-ups and hand-overs that a small convolution does
/// not repay: at 1 << 20, MNIST-1D's CNN (its middle layer 1.9M) trained 1.3-1.5x slower on
/// two threads than on one (bench/README.md); LeNet-5's layers (11M, 20M) still gain.
const CONV_PAR_FLOPS: usize = 1 << 22;

/// The most spatial axes a convolution or pooling has (Flux's 3-D).
pub const MAX_SPATIAL: usize = 3;

/// Hyper-parameters of a convolution, one entry per spatial axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: Vec<usize>,
    /// Zero padding (before, after) each spatial axis.
    pub pad: Vec<(usize, usize)>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    /// Flip the kernel (true convolution, Flux's `Conv`); false is cross-correlation.
    pub flip: bool,
}

impl ConvSpec {
    /// Stride 1, no padding, no dilation, one group, cross-correlation, over `d` axes.
    pub fn new(d: usize) -> ConvSpec {
        ConvSpec { stride: vec![1; d], pad: vec![(0, 0); d], dilation: vec![1; d], groups: 1, flip: false }
    }

    fn check(&self, op: &'static str, d: usize) -> Result<()> {
        if d == 0 || d > MAX_SPATIAL {
            return value_err(op, format!("supports 1 to {MAX_SPATIAL} spatial dimensions, got {d}"));
        }
        if self.stride.len() != d || self.pad.len() != d || self.dilation.len() != d {
            return value_err(
                op,
                format!(
                    "stride, pad and dilation need one entry per spatial dimension ({d}), got stride {:?}, pad {:?}, dilation {:?}",
                    self.stride, self.pad, self.dilation
                ),
            );
        }
        if self.stride.contains(&0) {
            return value_err(op, format!("stride must be positive, got {:?}", self.stride));
        }
        if self.dilation.contains(&0) {
            return value_err(op, format!("dilation must be positive, got {:?}", self.dilation));
        }
        if self.groups == 0 {
            return value_err(op, "groups must be positive, got 0");
        }
        Ok(())
    }
}

/// `v` (one entry per spatial axis) as three entries, `fill` in front.
fn to3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Output length of one axis, or None when the dilated kernel exceeds the padded input.
pub(crate) fn out_len(i: usize, k: usize, s: usize, d: usize, lo: usize, hi: usize) -> Option<usize> {
    let span = d * (k.max(1) - 1) + 1;
    let eff = i + lo + hi;
    if k == 0 || eff < span {
        return None;
    }
    Some((eff - span) / s + 1)
}

/// One convolution's geometry, spatial axes normalised to three.
#[derive(Debug, Clone)]
pub(crate) struct Geom {
    pub(crate) n: usize,
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) groups: usize,
    pub(crate) i: [usize; 3],
    pub(crate) k: [usize; 3],
    pub(crate) o: [usize; 3],
    pub(crate) s: [usize; 3],
    pub(crate) d: [usize; 3],
    pub(crate) lo: [usize; 3],
    pub(crate) flip: bool,
}

impl Geom {
    /// From the input `(n, cin, in_sp)`, the weight `(cout, cin/groups, k_sp)` and the spec.
    fn new(op: &'static str, n: usize, cin: usize, in_sp: &[usize], w_shape: &[usize], spec: &ConvSpec) -> Result<Geom> {
        let d = in_sp.len();
        spec.check(op, d)?;
        let (cout, wcin, k_sp) = (w_shape[0], w_shape[1], &w_shape[2..]);
        let g = spec.groups;
        if wcin * g != cin {
            return shape_err(op, format!("the weight {w_shape:?} with groups={g} takes {} input channels, got {cin}", wcin * g));
        }
        if cout % g != 0 {
            return shape_err(op, format!("{cout} output channels (weight {w_shape:?}) are not divisible by groups={g}"));
        }
        let mut o = Vec::with_capacity(d);
        for j in 0..d {
            let (lo, hi) = spec.pad[j];
            match out_len(in_sp[j], k_sp[j], spec.stride[j], spec.dilation[j], lo, hi) {
                Some(v) => o.push(v),
                None => {
                    return shape_err(
                        op,
                        format!("kernel {k_sp:?} with dilation {:?} does not fit the input's spatial size {in_sp:?} padded by {:?}", spec.dilation, spec.pad),
                    );
                }
            }
        }
        // The output and one sample's im2col columns must be addressable and fit in memory:
        // a huge padding otherwise makes an allocation that aborts the process.
        let mut out_shape = vec![n, cout];
        out_shape.extend(&o);
        let mut col_shape = vec![wcin];
        col_shape.extend(k_sp);
        col_shape.extend(&o);
        for shape in [&out_shape, &col_shape] {
            let numel = crate::layout::checked_numel(op, shape)?;
            crate::layout::check_alloc(op, numel, 4)?;
        }
        Ok(Geom {
            n,
            cin,
            cout,
            groups: g,
            i: to3(in_sp, 1),
            k: to3(k_sp, 1),
            o: to3(&o, 1),
            s: to3(&spec.stride, 1),
            d: to3(&spec.dilation, 1),
            lo: to3(&spec.pad.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
            flip: spec.flip,
        })
    }
    /// One plane and no dilation: the windows of a pooling op, for `for_each_row`.
    pub(crate) fn pooling(i: [usize; 3], k: [usize; 3], o: [usize; 3], s: [usize; 3], lo: [usize; 3]) -> Geom {
        Geom { n: 1, cin: 1, cout: 1, groups: 1, i, k, o, s, d: [1; 3], lo, flip: false }
    }
    pub(crate) fn ip(&self) -> usize {
        self.i.iter().product()
    }
    pub(crate) fn op(&self) -> usize {
        self.o.iter().product()
    }
    fn kp(&self) -> usize {
        self.k.iter().product()
    }
    fn cig(&self) -> usize {
        self.cin / self.groups
    }
    fn cog(&self) -> usize {
        self.cout / self.groups
    }
    /// Rows of a group's im2col matrix: (channel, kernel position).
    fn ck(&self) -> usize {
        self.cig() * self.kp()
    }
    fn out_spatial(&self, d: usize) -> Vec<usize> {
        self.o[3 - d..].to_vec()
    }
    /// A 1x1 kernel with stride 1 and no padding: the im2col matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kp() == 1 && self.s == [1, 1, 1] && self.lo == [0, 0, 0] && self.o == self.i
    }
    /// Every window lies inside the input (no padding reached): im2col is plain copies.
    fn unpadded(&self) -> bool {
        self.lo == [0, 0, 0] && (0..3).all(|j| (self.o[j] - 1) * self.s[j] + (self.k[j] - 1) * self.d[j] < self.i[j])
    }
    /// The same windows over the input with its padding written out (`pad_input`): no
    /// window then reaches past the input, so im2col and col2im are plain copies, without
    /// the range checks and zero fills per row that cost more than a short row's copy (the
    /// MNIST-1D CNN's strided, padded 1-D layers: rows of 5 to 19 elements). Undilated only.
    fn padded(&self) -> Geom {
        let mut p = self.clone();
        for j in 0..3 {
            let reach = (self.o[j] - 1) * self.s[j] + self.k[j]; // from the first window's start
            p.i[j] = reach.max(self.lo[j] + self.i[j]);
            p.lo[j] = 0;
        }
        p
    }
    /// Where each row (last axis) of one sample's group of channels starts, in the input and
    /// in the layout of `padded` geometry `p`.
    fn padded_rows<'a>(&'a self, p: &'a Geom) -> impl Iterator<Item = (usize, usize)> + 'a {
        let (ip, pp) = (self.ip(), p.ip());
        (0..self.cig()).flat_map(move |ci| {
            (0..self.i[0]).flat_map(move |a| {
                (0..self.i[1])
                    .map(move |b| (ci * ip + (a * self.i[1] + b) * self.i[2], ci * pp + ((a + self.lo[0]) * p.i[1] + b + self.lo[1]) * p.i[2] + self.lo[2]))
            })
        })
    }
    /// One sample's group of channels written into `out` (zeros, laid out by `padded`
    /// geometry `p`): the input with zeros around it.
    fn pad_input<T: Elem>(&self, p: &Geom, xg: &[T], out: &mut [T]) {
        let n = self.i[2];
        for (src, dst) in self.padded_rows(p) {
            out[dst..dst + n].copy_from_slice(&xg[src..src + n]);
        }
    }
    /// `xg += ` the input positions of `xp` (laid out by `padded` geometry `p`), the padding
    /// dropped: `pad_input`'s adjoint.
    fn add_unpadded<T: Elem>(&self, p: &Geom, xp: &[T], xg: &mut [T]) {
        let n = self.i[2];
        for (dst, src) in self.padded_rows(p) {
            xg[dst..dst + n].iter_mut().zip(&xp[src..src + n]).for_each(|(d, &v)| *d += v);
        }
    }
    /// Offset of kernel position `kpos` in the input, per axis (flip applied).
    fn offsets(&self, kpos: [usize; 3]) -> [isize; 3] {
        let mut off = [0isize; 3];
        for j in 0..3 {
            let kj = if self.flip { self.k[j] - 1 - kpos[j] } else { kpos[j] };
            off[j] = (kj * self.d[j]) as isize - self.lo[j] as isize;
        }
        off
    }
    /// Whether im2col and col2im take a chunk's samples together (`im2col_1d`): an undilated
    /// 1-D convolution with outputs, whose rows are too short to pay a setup per sample.
    fn batched_1d(&self) -> bool {
        self.i[..2] == [1, 1] && self.k[..2] == [1, 1] && self.d == [1, 1, 1] && self.op() > 0
    }
    fn flops(&self) -> usize {
        self.n * self.cout * self.op() * self.ck()
    }
}

/// The output positions `o` in `0..olen` whose input `o*s + off` lies in `0..ilen`.
fn valid_range(olen: usize, s: usize, off: isize, ilen: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let top = ilen as isize - 1 - off;
    let hi = if top < 0 { 0 } else { top / s + 1 };
    let (lo, hi) = ((lo as usize).min(olen), (hi as usize).min(olen));
    (lo, hi.max(lo))
}

/// Visit, for each kernel position and each output row (the last spatial axis), the
/// valid span: `f(kernel index, output row start, valid output range, input index of
/// the first valid output)`. Rows entirely in the padding get `f(.., empty range, 0)`.
#[inline]
pub(crate) fn for_each_row(g: &Geom, mut f: impl FnMut(usize, usize, Range<usize>, usize)) {
    let [i0, i1, i2] = g.i;
    let [o0, o1, o2] = g.o;
    let mut kidx = 0;
    for a in 0..g.k[0] {
        for b in 0..g.k[1] {
            for c in 0..g.k[2] {
                let off = g.offsets([a, b, c]);
                let (c_lo, c_hi) = valid_range(o2, g.s[2], off[2], i2);
                for p in 0..o0 {
                    let ii0 = (p * g.s[0]) as isize + off[0];
                    let ok0 = ii0 >= 0 && (ii0 as usize) < i0;
                    for q in 0..o1 {
                        let ii1 = (q * g.s[1]) as isize + off[1];
                        let row = (p * o1 + q) * o2;
                        if !ok0 || ii1 < 0 || ii1 as usize >= i1 || c_lo >= c_hi {
                            f(kidx, row, 0..0, 0);
                            continue;
                        }
                        let start = ((ii0 as usize * i1 + ii1 as usize) * i2) as isize + (c_lo * g.s[2]) as isize + off[2];
                        f(kidx, row, c_lo..c_hi, start as usize);
                    }
                }
                kidx += 1;
            }
        }
    }
}

/// Write a group's im2col matrix for one sample into `col`: row (c, kernel position),
/// column `off + output position`, rows `ld` apart (several samples side by side).
fn im2col<T: Elem>(g: &Geom, xg: &[T], col: &mut [T], ld: usize, off: usize) {
    if g.op() > 0 && g.unpadded() {
        return im2col_unpadded(g, xg, col, ld, off);
    }
    if g.op() > 0 && g.d == [1, 1, 1] {
        let p = g.padded();
        let mut xp = vec![T::ZERO; g.cig() * p.ip()];
        g.pad_input(&p, xg, &mut xp);
        return im2col_unpadded(&p, &xp, col, ld, off);
    }
    let (ip, kp, o2, s2) = (g.ip(), g.kp(), g.o[2], g.s[2]);
    for ci in 0..g.cig() {
        let xc = &xg[ci * ip..(ci + 1) * ip];
        for_each_row(g, |kidx, row, r, start| {
            let at = (ci * kp + kidx) * ld + off + row;
            let dst = &mut col[at..at + o2];
            dst[..r.start].fill(T::ZERO);
            dst[r.end.max(r.start)..].fill(T::ZERO);
            let len = r.end - r.start;
            if s2 == 1 {
                copy_row(&mut dst[r.start..r.end], &xc[start..start + len]);
            } else if len > 0 {
                gather_strided(&mut dst[r.start..r.end], &xc[start..=start + (len - 1) * s2], s2);
            }
        });
    }
}

/// The im2col matrix of `bn` samples side by side (columns `bi * op..`), one sample's group
/// of channels starting every `per_x` elements of `x`. A 1-D convolution's rows are a few
/// elements long (MNIST-1D's CNN: 5 to 19), so there all samples go through one loop per
/// (channel, kernel position), their padding written out first; other convolutions go
/// sample by sample.
fn im2col_chunk<T: Elem>(g: &Geom, x: &[T], per_x: usize, bn: usize, col: &mut [T]) {
    let (ip, op, cig) = (g.ip(), g.op(), g.cig());
    if !g.batched_1d() {
        for bi in 0..bn {
            im2col(g, &x[bi * per_x..][..cig * ip], col, bn * op, bi * op);
        }
        return;
    }
    if g.unpadded() {
        return im2col_1d(g, x, per_x, bn, col);
    }
    let p = g.padded();
    let pp = cig * p.ip();
    let mut xp = vec![T::ZERO; bn * pp];
    for bi in 0..bn {
        g.pad_input(&p, &x[bi * per_x..][..cig * ip], &mut xp[bi * pp..(bi + 1) * pp]);
    }
    im2col_1d(&p, &xp, pp, bn, col)
}

/// `im2col_chunk` for an unpadded, undilated 1-D geometry.
fn im2col_1d<T: Elem>(g: &Geom, x: &[T], per_x: usize, bn: usize, col: &mut [T]) {
    let (ip, kp, o2, s2) = (g.ip(), g.kp(), g.o[2], g.s[2]);
    let ld = bn * o2;
    for ci in 0..g.cig() {
        for kidx in 0..kp {
            let f2 = g.offsets([0, 0, kidx])[2] as usize; // unpadded: >= 0
            let span = (o2 - 1) * s2 + 1;
            for (bi, d) in col[(ci * kp + kidx) * ld..][..ld].chunks_exact_mut(o2).enumerate() {
                let src = &x[bi * per_x + ci * ip + f2..][..span];
                if s2 == 1 {
                    copy_row(d, src);
                } else {
                    gather_strided(d, src, s2);
                }
            }
        }
    }
}

/// `im2col_chunk`'s adjoint: the chunk's columns added back into the inputs of its `bn`
/// samples, one sample's group of channels every `per_x` elements of `x`. A 1-D convolution's
/// samples go through one loop per (channel, kernel position), as in `im2col_chunk`: per
/// sample, the setup of each 10-element row cost more than its adds (MNIST-1D's CNN).
fn col2im_chunk<T: Elem>(g: &Geom, col: &[T], per_x: usize, bn: usize, x: &mut [T]) {
    let (ip, op, cig) = (g.ip(), g.op(), g.cig());
    if !g.batched_1d() {
        for bi in 0..bn {
            col2im(g, col, bn * op, bi * op, &mut x[bi * per_x..][..cig * ip]);
        }
        return;
    }
    if g.unpadded() {
        return col2im_1d(g, col, per_x, bn, x);
    }
    let p = g.padded();
    let pp = cig * p.ip();
    let mut xp = vec![T::ZERO; bn * pp];
    col2im_1d(&p, col, pp, bn, &mut xp);
    for bi in 0..bn {
        g.add_unpadded(&p, &xp[bi * pp..(bi + 1) * pp], &mut x[bi * per_x..][..cig * ip]);
    }
}

/// `im2col_1d`'s adjoint, for an unpadded, undilated 1-D geometry.
fn col2im_1d<T: Elem>(g: &Geom, col: &[T], per_x: usize, bn: usize, x: &mut [T]) {
    let (ip, kp, o2, s2) = (g.ip(), g.kp(), g.o[2], g.s[2]);
    let ld = bn * o2;
    let span = (o2 - 1) * s2 + 1;
    for ci in 0..g.cig() {
        for kidx in 0..kp {
            let f2 = g.offsets([0, 0, kidx])[2] as usize; // unpadded: >= 0
            for (bi, r) in col[(ci * kp + kidx) * ld..][..ld].chunks_exact(o2).enumerate() {
                let dst = &mut x[bi * per_x + ci * ip + f2..][..span];
                if s2 == 1 {
                    dst.iter_mut().zip(r).for_each(|(d, &v)| *d += v);
                } else {
                    scatter_add_strided(dst, r, s2);
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for im2col's rows, a few dozen elements each: in fixed-size
/// pieces, which the compiler copies with vector moves in place of a memcpy call per row
/// (LeNet-5's second layer, 1200 rows of 8 floats a sample: 3.9 -> 1.9 us a sample).
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let d: &mut [T; 8] = d.try_into().expect("a piece of 8");
        *d = *<&[T; 8]>::try_from(s).expect("a piece of 8");
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// `dst[j] = src[j * s]`: a strided convolution's im2col row. Stride 2 (the usual one) is a
/// constant here, so no division sizes each row: `step_by`'s length is a `div` by the
/// stride, a tenth of a 1-D CNN's im2col time over its 10-element rows.
#[inline(always)]
fn gather_strided<T: Copy>(dst: &mut [T], src: &[T], s: usize) {
    #[inline(always)]
    fn by<T: Copy, const S: usize>(dst: &mut [T], src: &[T]) {
        dst.iter_mut().zip(src.iter().step_by(S)).for_each(|(v, &x)| *v = x);
    }
    if s == 2 {
        by::<T, 2>(dst, src)
    } else {
        dst.iter_mut().zip(src.iter().step_by(s)).for_each(|(v, &x)| *v = x)
    }
}

/// `dst[j * s] += src[j]`: `gather_strided`'s adjoint (col2im), with one bounds check a row.
#[inline(always)]
fn scatter_add_strided<T: Elem>(dst: &mut [T], src: &[T], s: usize) {
    #[inline(always)]
    fn by<T: Elem, const S: usize>(dst: &mut [T], src: &[T]) {
        dst.iter_mut().step_by(S).zip(src).for_each(|(d, &v)| *d += v);
    }
    if s == 2 {
        by::<T, 2>(dst, src)
    } else {
        dst.iter_mut().step_by(s).zip(src).for_each(|(d, &v)| *d += v)
    }
}

/// `im2col` when no window reaches the padding: only the copies, without the general loop's
/// range checks and zero fills per row, which cost more than the copy of a short row
/// (LeNet-5's layers, per sample: 3.7 -> 1.4 us and 7.2 -> 1.9 us).
fn im2col_unpadded<T: Elem>(g: &Geom, xg: &[T], col: &mut [T], ld: usize, off: usize) {
    let (ip, kp, op) = (g.ip(), g.kp(), g.op());
    let [_, i1, i2] = g.i;
    let [o0, o1, o2] = g.o;
    let [s0, s1, s2] = g.s;
    for ci in 0..g.cig() {
        let xc = &xg[ci * ip..(ci + 1) * ip];
        let mut kidx = 0;
        for a in 0..g.k[0] {
            for b in 0..g.k[1] {
                for c in 0..g.k[2] {
                    // unpadded: every offset is >= 0
                    let [f0, f1, f2] = g.offsets([a, b, c]).map(|v| v as usize);
                    let mut rows = col[(ci * kp + kidx) * ld + off..][..op].chunks_exact_mut(o2);
                    for p in 0..o0 {
                        let mut src = ((p * s0 + f0) * i1 + f1) * i2 + f2;
                        for d in rows.by_ref().take(o1) {
                            if s2 == 1 {
                                copy_row(d, &xc[src..src + o2]);
                            } else {
                                // one bounds check for the row, not one per element
                                gather_strided(d, &xc[src..=src + (o2 - 1) * s2], s2);
                            }
                            src += s1 * i2;
                        }
                    }
                    kidx += 1;
                }
            }
        }
    }
}

/// Add one sample's columns of an im2col-shaped matrix (laid out as in `im2col`) back
/// into the input positions they were gathered from.
fn col2im<T: Elem>(g: &Geom, col: &[T], ld: usize, off: usize, xg: &mut [T]) {
    if g.op() > 0 && g.unpadded() {
        return col2im_unpadded(g, col, ld, off, xg);
    }
    if g.op() > 0 && g.d == [1, 1, 1] {
        let p = g.padded();
        let mut xp = vec![T::ZERO; g.cig() * p.ip()];
        col2im_unpadded(&p, col, ld, off, &mut xp);
        return g.add_unpadded(&p, &xp, xg);
    }
    let (ip, kp, s2) = (g.ip(), g.kp(), g.s[2]);
    for ci in 0..g.cig() {
        let xc = &mut xg[ci * ip..(ci + 1) * ip];
        for_each_row(g, |kidx, row, r, start| {
            let at = (ci * kp + kidx) * ld + off + row;
            let src = &col[at + r.start..at + r.end];
            if s2 == 1 {
                for (d, &v) in xc[start..start + src.len()].iter_mut().zip(src) {
                    *d += v;
                }
            } else if !src.is_empty() {
                scatter_add_strided(&mut xc[start..=start + (src.len() - 1) * s2], src, s2);
            }
        });
    }
}

/// `col2im` when no window reaches the padding: `im2col_unpadded`'s copies, reversed and
/// added.
fn col2im_unpadded<T: Elem>(g: &Geom, col: &[T], ld: usize, off: usize, xg: &mut [T]) {
    let (ip, kp, op) = (g.ip(), g.kp(), g.op());
    let [_, i1, i2] = g.i;
    let [o0, o1, o2] = g.o;
    let [s0, s1, s2] = g.s;
    for ci in 0..g.cig() {
        let xc = &mut xg[ci * ip..(ci + 1) * ip];
        let mut kidx = 0;
        for a in 0..g.k[0] {
            for b in 0..g.k[1] {
                for c in 0..g.k[2] {
                    let [f0, f1, f2] = g.offsets([a, b, c]).map(|v| v as usize);
                    let mut rows = col[(ci * kp + kidx) * ld + off..][..op].chunks_exact(o2);
                    for p in 0..o0 {
                        let mut dst = ((p * s0 + f0) * i1 + f1) * i2 + f2;
                        for r in rows.by_ref().take(o1) {
                            if s2 == 1 {
                                xc[dst..dst + o2].iter_mut().zip(r).for_each(|(d, &v)| *d += v);
                            } else {
                                scatter_add_strided(&mut xc[dst..=dst + (o2 - 1) * s2], r, s2);
                            }
                            dst += s1 * i2;
                        }
                    }
                    kidx += 1;
                }
            }
        }
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// How a batch is cut into gemm calls: `per` samples side by side in one im2col matrix
/// (small outputs are batched so that each gemm has about `GEMM_COLS` columns: gemm's
/// per-call cost dominates tiny products), chunks spread over threads when the work is
/// large, or gemm's own threads when there is a single chunk.
struct Plan {
    per: usize,
    batch_par: bool,
    par: gemm::Parallelism,
}

/// Columns per gemm call that amortise its fixed cost.
const GEMM_COLS: usize = 512;

fn plan(g: &Geom) -> Plan {
    let op = g.op().max(1);
    let mut per = GEMM_COLS.div_ceil(op).clamp(1, g.n.max(1));
    let big = g.flops() >= CONV_PAR_FLOPS && threads() > 1;
    if big {
        // at least one chunk per thread when the batch allows
        per = per.min(g.n.div_ceil(threads())).max(1);
    }
    let chunks = g.n.div_ceil(per);
    let batch_par = big && chunks > 1;
    let par = if big && !batch_par { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None };
    Plan { per, batch_par, par }
}

/// Run `f(first sample, its chunk of out)` over chunks of `per` samples (`stride` elements
/// of `out` per sample), in parallel when asked, with a scratch buffer per worker.
fn over_chunks<T: Elem>(out: &mut [T], stride: usize, per: usize, parallel: bool, scratch: usize, f: impl Fn(usize, &mut [T], &mut Vec<T>) + Sync) {
    if out.is_empty() || stride == 0 {
        return;
    }
    if parallel {
        out.par_chunks_mut(per * stride).enumerate().for_each_init(|| vec![T::ZERO; scratch], |s, (c, o)| f(c * per, o, s));
    } else {
        let mut s = vec![T::ZERO; scratch];
        out.chunks_mut(per * stride).enumerate().for_each(|(c, o)| f(c * per, o, &mut s));
    }
}

/// dst (m x n, row stride `dst_rs`) = [dst +] lhs @ rhs, operands given by (pointer, column
/// stride, row stride).
///
/// SAFETY: as `gemm_rm`'s.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    acc: bool,
    lhs: *const T,
    lhs_cs: usize,
    lhs_rs: usize,
    rhs: *const T,
    rhs_cs: usize,
    rhs_rs: usize,
    par: gemm::Parallelism,
) {
    gemm_rm(m, n, k, dst, dst_rs, acc, (lhs, lhs_cs as isize, lhs_rs as isize), (rhs, rhs_cs as isize, rhs_rs as isize), par);
}

/// dst (m x n, row stride `dst_rs`) += a @ b^T, with a (m x k) and b (n x k) row-major: every
/// entry a dot product of two contiguous rows, as in a filter gradient. In blocks of 16 x 16,
/// for which gemm takes its dot-product ("horizontal") kernels, reading both operands as
/// they lie; on a larger product it first transposes one into packed panels, and that cost
/// more than the products (LeNet-5's second layer, batch 128, two threads: 1.73 -> 0.65 ms).
///
/// SAFETY: as `gemm_rm`'s, for a (row stride k), b (row stride k) and dst.
unsafe fn dot_blocks<T: Elem>(m: usize, n: usize, k: usize, dst: *mut T, dst_rs: usize, a: *const T, b: *const T) {
    const SIDE: usize = 16;
    for i in (0..m).step_by(SIDE) {
        for j in (0..n).step_by(SIDE) {
            gemm_into(
                SIDE.min(m - i),
                SIDE.min(n - j),
                k,
                dst.add(i * dst_rs + j),
                dst_rs,
                true,
                a.add(i * k),
                1,
                k,
                b.add(j * k),
                k,
                1,
                gemm::Parallelism::None,
            );
        }
    }
}

/// Gather group `gi` of a chunk of `(bn, c, op)` data into a `(cg, bn * op)` matrix.
fn gather_group<T: Elem>(src: &[T], c: usize, cg: usize, gi: usize, op: usize, bn: usize, dst: &mut [T]) {
    for ci in 0..cg {
        for b in 0..bn {
            let s = (b * c + gi * cg + ci) * op;
            dst[(ci * bn + b) * op..(ci * bn + b + 1) * op].copy_from_slice(&src[s..s + op]);
        }
    }
}

/// y = act(conv(x, w) + b), `(n, cout, o...)`.
fn conv_fwd<T: Elem>(g: &Geom, x: &[T], w: &[T], b: Option<&[T]>, act: Act) -> Vec<T> {
    let (ip, op, ck, cig, cog) = (g.ip(), g.op(), g.ck(), g.cig(), g.cog());
    let (per_x, per_y) = (g.cin * ip, g.cout * op);
    let mut out = vec![T::ZERO; g.n * per_y];
    let p = plan(g);
    let direct = p.per == 1 && g.pointwise();
    let cols = p.per * op;
    // scratch: the im2col matrix, then (batched) the gemm's (cog, cols) result
    let scratch = if direct { 0 } else { ck * cols } + if p.per > 1 { cog * cols } else { 0 };
    over_chunks(&mut out, per_y, p.per, p.batch_par, scratch, |n0, yc, buf| {
        let bn = yc.len() / per_y;
        let (col, tmp) = buf.split_at_mut(if direct { 0 } else { ck * cols });
        for gi in 0..g.groups {
            let rhs: &[T] = if direct {
                &x[n0 * per_x + gi * cig * ip..]
            } else {
                im2col_chunk(g, &x[n0 * per_x + gi * cig * ip..], per_x, bn, col);
                col
            };
            if bn == 1 {
                if let Some(b) = b {
                    for co in 0..cog {
                        yc[(gi * cog + co) * op..(gi * cog + co + 1) * op].fill(b[gi * cog + co]);
                    }
                }
                // SAFETY: w_g (cog, ck) and rhs (ck, op) row-major; the output block (cog, op).
                unsafe {
                    gemm_into(
                        cog,
                        op,
                        ck,
                        yc.as_mut_ptr().add(gi * cog * op),
                        op,
                        b.is_some(),
                        w.as_ptr().add(gi * cog * ck),
                        1,
                        ck,
                        rhs.as_ptr(),
                        1,
                        op,
                        p.par,
                    );
                }
            } else {
                // SAFETY: w_g (cog, ck), rhs (ck, bn*op) and tmp (cog, bn*op), row-major.
                unsafe {
                    gemm_into(cog, bn * op, ck, tmp.as_mut_ptr(), bn * op, false, w.as_ptr().add(gi * cog * ck), 1, ck, rhs.as_ptr(), 1, bn * op, p.par);
                }
                for co in 0..cog {
                    let c = gi * cog + co;
                    let bv = b.map_or(T::ZERO, |b| b[c]);
                    for bi in 0..bn {
                        let src = &tmp[(co * bn + bi) * op..(co * bn + bi + 1) * op];
                        for (d, &v) in yc[(bi * g.cout + c) * op..(bi * g.cout + c + 1) * op].iter_mut().zip(src) {
                            *d = v + bv;
                        }
                    }
                }
            }
        }
        apply_act(yc, act);
    });
    out
}

/// dx = act(conv_transpose(gy, w) + b), `(n, cin, i...)`: col = w^T gy, then col2im.
fn conv_data<T: Elem>(g: &Geom, gy: &[T], w: &[T], b: Option<&[T]>, act: Act) -> Vec<T> {
    let (ip, op, ck, cig, cog) = (g.ip(), g.op(), g.ck(), g.cig(), g.cog());
    let (per_x, per_y) = (g.cin * ip, g.cout * op);
    let mut dx = vec![T::ZERO; g.n * per_x];
    let p = plan(g);
    let direct = p.per == 1 && g.pointwise();
    let cols = p.per * op;
    let scratch = if direct { 0 } else { ck * cols } + if p.per > 1 { cog * cols } else { 0 };
    over_chunks(&mut dx, per_x, p.per, p.batch_par, scratch, |n0, dxc, buf| {
        let bn = dxc.len() / per_x;
        if let (Some(b), true) = (b, ip > 0) {
            for (pos, v) in dxc.chunks_mut(ip).enumerate() {
                v.fill(b[pos % g.cin]);
            }
        }
        let (col, tmp) = buf.split_at_mut(if direct { 0 } else { ck * cols });
        for gi in 0..g.groups {
            // the chunk's output gradient for this group, (cog, bn*op)
            let rhs: &[T] = if bn == 1 {
                &gy[n0 * per_y + gi * cog * op..]
            } else {
                gather_group(&gy[n0 * per_y..], g.cout, cog, gi, op, bn, tmp);
                tmp
            };
            let wg = w[gi * cog * ck..].as_ptr();
            if direct {
                // SAFETY: w_g^T (ck, cog) read through w_g's (cog, ck) block; gy_g (cog, op);
                // the destination is this group's (cig, ip) = (ck, op) block.
                unsafe { gemm_into(ck, op, cog, dxc.as_mut_ptr().add(gi * cig * ip), op, true, wg, ck, 1, rhs.as_ptr(), 1, op, p.par) };
            } else if cog > 0 {
                // SAFETY: as above, into the (ck, bn*op) im2col-shaped scratch.
                unsafe { gemm_into(ck, bn * op, cog, col.as_mut_ptr(), bn * op, false, wg, ck, 1, rhs.as_ptr(), 1, bn * op, p.par) };
                col2im_chunk(g, col, per_x, bn, &mut dxc[gi * cig * ip..]);
            }
        }
        apply_act(dxc, act);
    });
    dx
}

/// dw = sum over the batch of gy_g @ im2col(x_g)^T, `(cout, cin/groups, k...)`.
fn conv_filter<T: Elem>(g: &Geom, x: &[T], gy: &[T]) -> Vec<T> {
    let (ip, op, ck, cig, cog) = (g.ip(), g.op(), g.ck(), g.cig(), g.cog());
    let (per_x, per_y) = (g.cin * ip, g.cout * op);
    let wlen = g.cout * ck;
    let p = plan(g);
    let direct = p.per == 1 && g.pointwise();
    let cols = p.per * op;
    // accumulate the chunks of samples `range` into a fresh dw
    let accumulate = |range: Range<usize>| -> Vec<T> {
        let mut dw = vec![T::ZERO; wlen];
        if op == 0 {
            return dw;
        }
        let mut col = vec![T::ZERO; if direct { 0 } else { ck * cols }];
        let mut tmp = vec![T::ZERO; if p.per > 1 { cog * cols } else { 0 }];
        let mut n0 = range.start;
        while n0 < range.end {
            let bn = p.per.min(range.end - n0);
            for gi in 0..g.groups {
                let rhs: &[T] = if direct {
                    &x[n0 * per_x + gi * cig * ip..]
                } else {
                    im2col_chunk(g, &x[n0 * per_x + gi * cig * ip..], per_x, bn, &mut col);
                    &col
                };
                let lhs: &[T] = if bn == 1 {
                    &gy[n0 * per_y + gi * cog * op..]
                } else {
                    gather_group(&gy[n0 * per_y..], g.cout, cog, gi, op, bn, &mut tmp);
                    &tmp
                };
                // SAFETY: dw_g (cog, ck) row-major; lhs (cog, bn*op) row-major; the
                // transposed im2col matrix (bn*op, ck) is read through its (ck, bn*op) layout.
                unsafe {
                    let dst = dw.as_mut_ptr().add(gi * cog * ck);
                    // gemm has dot-product kernels on x86-64 only; elsewhere a block is a packed product
                    if cfg!(target_arch = "x86_64") && matches!(p.par, gemm::Parallelism::None) {
                        dot_blocks(cog, ck, bn * op, dst, ck, lhs.as_ptr(), rhs.as_ptr());
                    } else {
                        // one large sample: gemm's own threads do better than one thread of dots
                        gemm_into(cog, ck, bn * op, dst, ck, true, lhs.as_ptr(), 1, bn * op, rhs.as_ptr(), bn * op, 1, p.par);
                    }
                }
            }
            n0 += bn;
        }
        dw
    };
    if !p.batch_par {
        return accumulate(0..g.n);
    }
    // one accumulator per thread, each over whole chunks
    let chunks = g.n.div_ceil(p.per);
    let workers = threads().min(chunks);
    let per_worker = chunks.div_ceil(workers) * p.per;
    let parts: Vec<Vec<T>> = (0..workers).into_par_iter().map(|t| accumulate((t * per_worker).min(g.n)..((t + 1) * per_worker).min(g.n))).collect();
    let mut dw = vec![T::ZERO; wlen];
    for part in parts {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

/// Run `f` on the contiguous data of three tensors (the third optional).
fn with_slices<T: Elem, R>(a: &Tensor, b: &Tensor, c: Option<&Tensor>, f: impl FnOnce(&[T], &[T], Option<&[T]>) -> R) -> Result<R> {
    a.with_slice::<T, _>(|sa| {
        b.with_slice::<T, _>(|sb| match c {
            Some(c) => c.with_slice::<T, _>(|sc| f(sa, sb, Some(sc))),
            None => Ok(f(sa, sb, None)),
        })
    })??
}

fn check_operands(op: &'static str, x: &Tensor, w: &Tensor, b: Option<&Tensor>, what: &str) -> Result<()> {
    check_same_dtype(op, x, w)?;
    if let Some(b) = b {
        check_same_dtype(op, x, b)?;
    }
    let nd = w.ndim();
    if !(3..=MAX_SPATIAL + 2).contains(&nd) {
        return shape_err(op, format!("the weight must have 3 to {} dimensions (out, in, k...), got shape {:?}", MAX_SPATIAL + 2, w.shape()));
    }
    if x.ndim() != nd {
        let sp = ["L", "H, W", "D, H, W"][nd - 3];
        return shape_err(
            op,
            format!("expected {what} of shape (N, C, {sp}) ({nd} dimensions) for a weight of shape {:?}, got shape {:?}", w.shape(), x.shape()),
        );
    }
    Ok(())
}

fn bias_axes(nd: usize) -> Vec<isize> {
    std::iter::once(0).chain(2..nd as isize).collect()
}

struct Conv {
    spec: ConvSpec,
    act: Act,
}

impl BackwardOp for Conv {
    replay!(|op, i, _| i[0].conv(&i[1], i.get(2), &op.spec, op.act));
    fn name(&self) -> &'static str {
        "conv"
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (x, w) = (&inputs[0], &inputs[1]);
        let gp = act_backward(self.act, out, g)?;
        let gx = if need[0] { Some(gp.conv_transpose(w, None, &self.spec, Some(&x.shape()[2..]), Act::Identity)?) } else { None };
        let gw = if need[1] { Some(x.conv_filter_grad(&gp, &self.spec, &w.shape()[2..])?) } else { None };
        let mut grads = vec![gx, gw];
        if inputs.len() == 3 {
            grads.push(if need[2] { Some(gp.sum_axes(Some(&bias_axes(gp.ndim())), false)?) } else { None });
        }
        Ok(grads)
    }
}

struct ConvTranspose {
    spec: ConvSpec,
    act: Act,
}

impl BackwardOp for ConvTranspose {
    fn name(&self) -> &'static str {
        "conv_transpose"
    }
    fn backward(&self, inputs: &[Tensor], out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (y, w) = (&inputs[0], &inputs[1]);
        let gp = act_backward(self.act, out, g)?;
        let gy = if need[0] { Some(gp.conv(w, None, &self.spec, Act::Identity)?) } else { None };
        let gw = if need[1] { Some(gp.conv_filter_grad(y, &self.spec, &w.shape()[2..])?) } else { None };
        let mut grads = vec![gy, gw];
        if inputs.len() == 3 {
            grads.push(if need[2] { Some(gp.sum_axes(Some(&bias_axes(gp.ndim())), false)?) } else { None });
        }
        Ok(grads)
    }
}

struct ConvFilterGrad {
    spec: ConvSpec,
}

impl BackwardOp for ConvFilterGrad {
    fn name(&self) -> &'static str {
        "conv_filter_grad"
    }
    fn backward(&self, inputs: &[Tensor], _out: &Tensor, g: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (x, gy) = (&inputs[0], &inputs[1]);
        let gx = if need[0] { Some(gy.conv_transpose(g, None, &self.spec, Some(&x.shape()[2..]), Act::Identity)?) } else { None };
        let ggy = if need[1] { Some(x.conv(g, None, &self.spec, Act::Identity)?) } else { None };
        Ok(vec![gx, ggy])
    }
}

impl Tensor {
    /// `act(conv(x, w) + b)`: x `(N, C_in, S...)`, w `(C_out, C_in/groups, K...)`,
    /// b `(C_out,)`, for 1 to 3 spatial axes (see the module docs for `spec`).
    pub fn conv(&self, w: &Tensor, b: Option<&Tensor>, spec: &ConvSpec, act: Act) -> Result<Tensor> {
        let x = self;
        check_operands("conv", x, w, b, "input")?;
        let g = Geom::new("conv", x.shape()[0], x.shape()[1], &x.shape()[2..], w.shape(), spec)?;
        if let Some(b) = b {
            if b.shape() != [g.cout] {
                return shape_err("conv", format!("bias of shape {:?} does not match {} output channels (weight {:?})", b.shape(), g.cout, w.shape()));
            }
        }
        let mut shape = vec![g.n, g.cout];
        shape.extend(g.out_spatial(x.ndim() - 2));
        let out = match backend::common("conv", &[x, w])? {
            Some(be) => be.conv(&g, x, w, b, act, &shape)?,
            None => with_dtype!(x.dtype(), T => Tensor::from_vec(with_slices::<T, _>(x, w, b, |xs, ws, bs| conv_fwd(&g, xs, ws, bs, act))?, &shape)?),
        };
        let op = Conv { spec: spec.clone(), act };
        Ok(match b {
            Some(b) => record(out, op, &[x, w, b]),
            None => record(out, op, &[x, w]),
        })
    }

    /// `act(conv_transpose(y, w) + b)`: the adjoint of `x -> conv(x, w)` applied to y
    /// `(N, C_out, O...)`, giving `(N, C_in, S...)` with C_in = w.shape[1] * groups and b
    /// `(C_in,)`. `out_spatial` picks S where strides make it ambiguous; by default the
    /// smallest S whose convolution has shape O.
    pub fn conv_transpose(&self, w: &Tensor, b: Option<&Tensor>, spec: &ConvSpec, out_spatial: Option<&[usize]>, act: Act) -> Result<Tensor> {
        let y = self;
        check_operands("conv_transpose", y, w, b, "input")?;
        let d = y.ndim() - 2;
        spec.check("conv_transpose", d)?;
        let (n, cy) = (y.shape()[0], y.shape()[1]);
        if cy != w.shape()[0] {
            return shape_err(
                "conv_transpose",
                format!("the weight {:?} takes {} input channels (its first axis), got {cy} (input {:?})", w.shape(), w.shape()[0], y.shape()),
            );
        }
        let o_sp = &y.shape()[2..];
        let k_sp = &w.shape()[2..];
        let mut min_sp = Vec::with_capacity(d);
        for j in 0..d {
            let (lo, hi) = spec.pad[j];
            let full = (o_sp[j].max(1) - 1) * spec.stride[j] + spec.dilation[j] * (k_sp[j].max(1) - 1) + 1;
            if o_sp[j] == 0 || k_sp[j] == 0 || full < lo + hi + 1 {
                return shape_err(
                    "conv_transpose",
                    format!(
                        "input spatial size {o_sp:?} with kernel {k_sp:?}, stride {:?}, dilation {:?} and pad {:?} gives an empty output",
                        spec.stride, spec.dilation, spec.pad
                    ),
                );
            }
            min_sp.push(full - lo - hi);
        }
        let in_sp = match out_spatial {
            None => min_sp,
            Some(s) => s.to_vec(),
        };
        if in_sp.len() != d {
            return shape_err("conv_transpose", format!("output size {in_sp:?} needs {d} entries"));
        }
        let cin = w.shape()[1] * spec.groups;
        let g = Geom::new("conv_transpose", n, cin, &in_sp, w.shape(), spec)?;
        if g.out_spatial(d) != o_sp {
            return shape_err(
                "conv_transpose",
                format!(
                    "output size {in_sp:?} is inconsistent with input {:?}: convolving it gives {:?} (stride {:?}, pad {:?}, dilation {:?})",
                    y.shape(),
                    g.out_spatial(d),
                    spec.stride,
                    spec.pad,
                    spec.dilation
                ),
            );
        }
        if let Some(b) = b {
            if b.shape() != [cin] {
                return shape_err(
                    "conv_transpose",
                    format!("bias of shape {:?} does not match {cin} output channels (weight {:?}, groups={})", b.shape(), w.shape(), spec.groups),
                );
            }
        }
        let mut shape = vec![n, cin];
        shape.extend(&in_sp);
        let out = match backend::common("conv_transpose", &[y, w])? {
            Some(be) => be.conv_transpose(&g, y, w, b, act, &shape)?,
            None => with_dtype!(y.dtype(), T => Tensor::from_vec(with_slices::<T, _>(y, w, b, |ys, ws, bs| conv_data(&g, ys, ws, bs, act))?, &shape)?),
        };
        let op = ConvTranspose { spec: spec.clone(), act };
        Ok(match b {
            Some(b) => record(out, op, &[y, w, b]),
            None => record(out, op, &[y, w]),
        })
    }

    /// The gradient of `<gy, conv(x, w)>` w.r.t. a weight with kernel `k_sp`: shape
    /// `(C_out, C_in/groups, K...)` with C_out = gy.shape[1].
    pub fn conv_filter_grad(&self, gy: &Tensor, spec: &ConvSpec, k_sp: &[usize]) -> Result<Tensor> {
        let x = self;
        check_same_dtype("conv_filter_grad", x, gy)?;
        let d = k_sp.len();
        if x.ndim() != d + 2 || gy.ndim() != d + 2 || x.shape()[0] != gy.shape()[0] {
            return shape_err("conv_filter_grad", format!("input {:?} and output gradient {:?} do not fit a kernel {k_sp:?}", x.shape(), gy.shape()));
        }
        let cout = gy.shape()[1];
        if spec.groups == 0 || !x.shape()[1].is_multiple_of(spec.groups) {
            return shape_err("conv_filter_grad", format!("{} input channels are not divisible by groups={}", x.shape()[1], spec.groups));
        }
        let mut w_shape = vec![cout, x.shape()[1] / spec.groups];
        w_shape.extend(k_sp);
        let g = Geom::new("conv_filter_grad", x.shape()[0], x.shape()[1], &x.shape()[2..], &w_shape, spec)?;
        if g.out_spatial(d) != gy.shape()[2..] {
            return shape_err("conv_filter_grad", format!("output gradient {:?} does not match the convolution's output {:?}", gy.shape(), g.out_spatial(d)));
        }
        let out = match backend::common("conv_filter_grad", &[x, gy])? {
            Some(be) => be.conv_filter_grad(&g, x, gy, &w_shape)?,
            None => with_dtype!(x.dtype(), T => Tensor::from_vec(with_slices::<T, _>(x, gy, None, |xs, gs, _| conv_filter(&g, xs, gs))?, &w_shape)?),
        };
        Ok(record(out, ConvFilterGrad { spec: spec.clone() }, &[x, gy]))
    }
}

#[cfg(test)]
mod tests;
