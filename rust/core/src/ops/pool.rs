//! Max and mean pooling, batch-first `(N, C, S...)` for 1 to 3 spatial axes, with
//! kernel, stride and padding (per side), as NNlib defines them:
//! - max pooling ignores the padding (it acts as -inf) and sends the gradient to the
//!   first maximum of each window (NaN counts as the maximum, so it propagates);
//! - mean pooling counts the padding as zeros and always divides by the kernel size.
//!
//! Each forward has its backward written as an op of its own, and the two are each
//! other's backward, so gradients of any order work: max pooling is a gather at the
//! recorded arg-max positions (backward: the scatter-add there); mean pooling is a linear
//! map whose adjoint spreads each gradient evenly over its window.
//! Adaptive and global pooling are composed from these and from reductions in Python.

use std::sync::Arc;

use rayon::prelude::*;

use crate::backend;
use crate::backprop::{record, replay, BackwardOp};
use crate::error::{shape_err, value_err, Result};
use crate::ops::conv::{for_each_row, out_len, Geom as ConvGeom, MAX_SPATIAL};
use crate::ops::PAR_THRESHOLD;
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::with_dtype;

/// A pooling window: kernel, stride and (before, after) padding per spatial axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub pad: Vec<(usize, usize)>,
}

impl PoolSpec {
    /// Flux's default: stride equal to the kernel, no padding.
    pub fn new(kernel: &[usize]) -> PoolSpec {
        PoolSpec { kernel: kernel.to_vec(), stride: kernel.to_vec(), pad: vec![(0, 0); kernel.len()] }
    }
}

/// Pooling geometry with the spatial axes normalised to three (leading axes of size 1).
#[derive(Debug, Clone)]
pub(crate) struct Geom {
    pub(crate) planes: usize,
    pub(crate) i: [usize; 3],
    pub(crate) k: [usize; 3],
    pub(crate) o: [usize; 3],
    pub(crate) s: [usize; 3],
    pub(crate) lo: [usize; 3],
}

fn to3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

impl Geom {
    fn new(op: &'static str, shape: &[usize], spec: &PoolSpec) -> Result<Geom> {
        let d = spec.kernel.len();
        if d == 0 || d > MAX_SPATIAL {
            return value_err(op, format!("supports 1 to {MAX_SPATIAL} spatial dimensions, got a kernel {:?}", spec.kernel));
        }
        if spec.stride.len() != d || spec.pad.len() != d {
            return value_err(op, format!("kernel {:?}, stride {:?} and pad {:?} need one entry per spatial dimension", spec.kernel, spec.stride, spec.pad));
        }
        if spec.kernel.contains(&0) || spec.stride.contains(&0) {
            return value_err(op, format!("kernel {:?} and stride {:?} must be positive", spec.kernel, spec.stride));
        }
        if spec.pad.iter().zip(&spec.kernel).any(|(&(lo, hi), &k)| lo >= k || hi >= k) {
            return value_err(op, format!("padding {:?} must be smaller than the kernel {:?} on each side", spec.pad, spec.kernel));
        }
        if shape.len() != d + 2 {
            let sp = ["L", "H, W", "D, H, W"][d - 1];
            return shape_err(op, format!("a {d}-d kernel {:?} expects input of shape (N, C, {sp}), got shape {shape:?}", spec.kernel));
        }
        let in_sp = &shape[2..];
        let mut o = Vec::with_capacity(d);
        for j in 0..d {
            match out_len(in_sp[j], spec.kernel[j], spec.stride[j], 1, spec.pad[j].0, spec.pad[j].1) {
                Some(v) => o.push(v),
                None => return shape_err(op, format!("kernel {:?} is larger than the input's spatial size {in_sp:?} padded by {:?}", spec.kernel, spec.pad)),
            }
        }
        Ok(Geom {
            planes: shape[0] * shape[1],
            i: to3(in_sp, 1),
            k: to3(&spec.kernel, 1),
            o: to3(&o, 1),
            s: to3(&spec.stride, 1),
            lo: to3(&spec.pad.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
        })
    }
    fn ip(&self) -> usize {
        self.i.iter().product()
    }
    fn op(&self) -> usize {
        self.o.iter().product()
    }
    fn out_shape(&self, shape: &[usize]) -> Vec<usize> {
        let d = shape.len() - 2;
        let mut s = shape[..2].to_vec();
        s.extend(&self.o[3 - d..]);
        s
    }
    /// The pooling windows as convolution rows (one plane, no dilation).
    fn rows(&self) -> ConvGeom {
        ConvGeom::pooling(self.i, self.k, self.o, self.s, self.lo)
    }
}

/// Max over each window and the flat input index of its (first) maximum.
///
/// Like im2col, the loops run over kernel positions, then output rows: each step updates a
/// contiguous row of outputs from a strided input row (see `conv::for_each_row`), rather
/// than running a small loop per window. Only the arg-max is tracked (the values are
/// gathered at the end), and the update is written with non-short-circuit logic and a
/// mask: which element wins is unpredictable, and with branches the mispredictions made
/// this kernel twice as slow on random data.
fn maxpool_kernel<T: Elem>(g: &Geom, x: &[T]) -> (Vec<T>, Vec<usize>) {
    let (ip, op) = (g.ip(), g.op());
    let rows = g.rows();
    let s2 = g.s[2];
    let mut arg = vec![usize::MAX; g.planes * op];
    let inside = (0..3).all(|a| g.lo[a] == 0 && g.o[a].saturating_sub(1) * g.s[a] + g.k[a] <= g.i[a]);
    let plane = |pl: usize, ap: &mut [usize]| {
        let xp = &x[pl * ip..(pl + 1) * ip];
        if inside {
            maxpool_plane_inside(g, xp, ap);
        } else {
            maxpool_plane_rows(&rows, s2, xp, ap);
        }
        for a in ap.iter_mut() {
            *a += pl * ip;
        }
    };
    if op > 0 {
        if x.len() >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
            arg.par_chunks_mut(op).enumerate().for_each(|(pl, ap)| plane(pl, ap));
        } else {
            arg.chunks_mut(op).enumerate().for_each(|(pl, ap)| plane(pl, ap));
        }
    }
    let vals = arg.iter().map(|&i| x[i]).collect();
    (vals, arg)
}

/// One step of a window's arg-max: the index of the winner between the element at `at`
/// (value `v`) and the current one `bi` (value `cur`). A larger element, or the first NaN,
/// wins; ties keep the first; `first` (the window's first element) always wins. Chosen with
/// a mask, not a branch or a value select, which compiled to a jump per element and ran slower.
#[inline(always)]
fn argmax_step<T: Elem>(v: T, cur: T, at: usize, bi: usize, first: bool) -> usize {
    let take = first | (v > cur) | (v.is_nan() & !cur.is_nan());
    let m = (take as usize).wrapping_neg();
    (at & m) | (bi & !m)
}

/// `maxpool_kernel`'s arg-max for one plane (`ap` all `usize::MAX`), any padding.
fn maxpool_plane_rows<T: Elem>(rows: &ConvGeom, s2: usize, xp: &[T], ap: &mut [usize]) {
    for_each_row(rows, |_, row, r, start| {
        for (j, bi) in ap[row + r.start..row + r.end].iter_mut().enumerate() {
            let at = start + j * s2;
            let unset = *bi == usize::MAX; // the window's first valid element
            *bi = argmax_step(xp[at], xp[if unset { at } else { *bi }], at, *bi, unset);
        }
    });
}

/// `maxpool_kernel`'s arg-max for one plane whose windows all lie inside the input (no
/// padding reaches them: Flux's default pooling). The running maximum of each output of a
/// row stays beside its index, so no element is read twice; windows are visited in the same
/// row-major order, so ties and NaNs pick the same element. LeNet-5's first pool took 2 ns
/// an input element in the general kernel, which reads back each window's current maximum
/// through its index.
fn maxpool_plane_inside<T: Elem>(g: &Geom, xp: &[T], ap: &mut [usize]) {
    let ([_, i1, i2], [o0, o1, o2], [k0, k1, k2], [s0, s1, s2]) = (g.i, g.o, g.k, g.s);
    let mut best = vec![T::ZERO; o2];
    for p in 0..o0 {
        for q in 0..o1 {
            let a = &mut ap[(p * o1 + q) * o2..(p * o1 + q + 1) * o2];
            let mut first = true;
            for u in 0..k0 {
                for w in 0..k1 {
                    let base = ((p * s0 + u) * i1 + q * s1 + w) * i2;
                    for c in 0..k2 {
                        if first {
                            for (j, (bv, bi)) in best.iter_mut().zip(a.iter_mut()).enumerate() {
                                *bi = base + c + j * s2;
                                *bv = xp[*bi];
                            }
                            first = false;
                            continue;
                        }
                        for (j, (bv, bi)) in best.iter_mut().zip(a.iter_mut()).enumerate() {
                            let at = base + c + j * s2;
                            *bi = argmax_step(xp[at], *bv, at, *bi, false);
                            *bv = xp[*bi]; // the winner read back, not selected (see argmax_step)
                        }
                    }
                }
            }
        }
    }
}

/// Window sums divided by the kernel size (padding counts as zeros).
fn meanpool_kernel<T: Elem>(g: &Geom, x: &[T]) -> Vec<T> {
    let (ip, op) = (g.ip(), g.op());
    let rows = g.rows();
    let s2 = g.s[2];
    let scale = T::ONE / T::from_f64(g.k.iter().product::<usize>() as f64);
    let mut out = vec![T::ZERO; g.planes * op];
    let plane = |pl: usize, yp: &mut [T]| {
        let xp = &x[pl * ip..(pl + 1) * ip];
        for_each_row(&rows, |_, row, r, start| {
            let dst = &mut yp[row + r.start..row + r.end];
            if s2 == 1 {
                let n = dst.len();
                for (d, &v) in dst.iter_mut().zip(&xp[start..start + n]) {
                    *d += v;
                }
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d += xp[start + j * s2];
                }
            }
        });
        yp.iter_mut().for_each(|v| *v *= scale);
    };
    if op > 0 {
        if x.len() >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(op).enumerate().for_each(|(pl, yp)| plane(pl, yp));
        } else {
            out.chunks_mut(op).enumerate().for_each(|(pl, yp)| plane(pl, yp));
        }
    }
    out
}

/// The adjoint of mean pooling: each output gradient spread evenly over its window.
fn meanpool_adjoint_kernel<T: Elem>(g: &Geom, gy: &[T]) -> Vec<T> {
    let (ip, op) = (g.ip(), g.op());
    let rows = g.rows();
    let s2 = g.s[2];
    let scale = T::ONE / T::from_f64(g.k.iter().product::<usize>() as f64);
    let mut dx = vec![T::ZERO; g.planes * ip];
    if op == 0 || ip == 0 {
        return dx;
    }
    let plane = |pl: usize, dp: &mut [T]| {
        let gp = &gy[pl * op..(pl + 1) * op];
        for_each_row(&rows, |_, row, r, start| {
            let src = &gp[row + r.start..row + r.end];
            if s2 == 1 {
                for (d, &v) in dp[start..start + src.len()].iter_mut().zip(src) {
                    *d += v * scale;
                }
            } else {
                for (j, &v) in src.iter().enumerate() {
                    dp[start + j * s2] += v * scale;
                }
            }
        });
    };
    if dx.len() >= PAR_THRESHOLD && rayon::current_num_threads() > 1 {
        dx.par_chunks_mut(ip).enumerate().for_each(|(pl, dp)| plane(pl, dp));
    } else {
        dx.chunks_mut(ip).enumerate().for_each(|(pl, dp)| plane(pl, dp));
    }
    dx
}

/// Gather `src` (flattened) at `idx` into `shape`: max pooling's forward.
fn gather(src: &Tensor, idx: Arc<Vec<usize>>, shape: &[usize]) -> Result<Tensor> {
    let out = with_dtype!(src.dtype(), T => {
        let v = src.with_slice::<T, _>(|s| idx.iter().map(|&i| s[i]).collect::<Vec<T>>())?;
        Tensor::from_vec(v, shape)?
    });
    Ok(record(out, Gather { idx, src_shape: src.shape().to_vec(), pool: None }, &[src]))
}

/// Add `g` (flattened) at positions `idx` of zeros of `shape`: max pooling's backward.
fn scatter(g: &Tensor, idx: Arc<Vec<usize>>, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let out = with_dtype!(g.dtype(), T => {
        let mut dx = vec![T::ZERO; n];
        g.with_slice::<T, _>(|gs| {
            for (&i, &v) in idx.iter().zip(gs) {
                dx[i] += v;
            }
        })?;
        Tensor::from_vec(dx, shape)?
    });
    Ok(record(out, Scatter { idx, src_shape: g.shape().to_vec() }, &[g]))
}

struct Gather {
    idx: Arc<Vec<usize>>,
    src_shape: Vec<usize>,
    /// The window, when this is max pooling's forward: a replay pools again (the positions
    /// of the maxima change with the data; a gather at fixed positions cannot be replayed).
    pool: Option<PoolSpec>,
}

impl BackwardOp for Gather {
    fn replays(&self) -> bool {
        self.pool.is_some()
    }
    fn replay(&self, i: &[Tensor], _out: &Tensor) -> Result<Tensor> {
        match &self.pool {
            Some(spec) => i[0].maxpool(spec),
            None => value_err("compile", "a gather at recorded positions cannot be replayed"),
        }
    }
    fn name(&self) -> &'static str {
        "maxpool"
    }
    fn backward(&self, _inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(scatter(g, self.idx.clone(), &self.src_shape)?)])
    }
}

struct Scatter {
    idx: Arc<Vec<usize>>,
    src_shape: Vec<usize>,
}

impl BackwardOp for Scatter {
    fn name(&self) -> &'static str {
        "maxpool_backward"
    }
    fn backward(&self, _inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(gather(g, self.idx.clone(), &self.src_shape)?)])
    }
}

struct MeanPool {
    spec: PoolSpec,
}

impl BackwardOp for MeanPool {
    replay!(|op, i, _| i[0].meanpool(&op.spec));
    fn name(&self) -> &'static str {
        "meanpool"
    }
    fn backward(&self, inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.meanpool_adjoint(&self.spec, &inputs[0].shape()[2..])?)])
    }
}

struct MeanPoolAdjoint {
    spec: PoolSpec,
}

impl BackwardOp for MeanPoolAdjoint {
    fn name(&self) -> &'static str {
        "meanpool_backward"
    }
    fn backward(&self, _inputs: &[Tensor], _out: &Tensor, g: &Tensor, _need: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.meanpool(&self.spec)?)])
    }
}

/// Mean pooling (or its adjoint) off the CPU, as a depthwise convolution: each (n, c) plane
/// is a group of one channel, convolved with a constant kernel of 1/kernel-size, so a backend
/// needs no pooling kernel of its own. Padding counts as zeros, as on the CPU. Unrecorded:
/// the caller records the pooling op itself.
fn meanpool_by_conv(x: &Tensor, spec: &PoolSpec, adjoint_of: Option<&[usize]>) -> Result<Tensor> {
    use crate::ops::conv::ConvSpec;
    use crate::ops::nn::Act;
    crate::backprop::no_grad(|| {
        let planes = x.shape()[0] * x.shape()[1];
        let kp: usize = spec.kernel.iter().product();
        let mut wshape = vec![planes, 1];
        wshape.extend(&spec.kernel);
        let w = Tensor::full(&wshape, 1.0 / kp as f64, x.dtype()).to_device(x.device())?;
        let cs = ConvSpec { stride: spec.stride.clone(), pad: spec.pad.clone(), dilation: vec![1; spec.kernel.len()], groups: planes, flip: false };
        let mut flat = vec![1, planes];
        flat.extend(&x.shape()[2..]);
        let xf = x.contiguous()?.reshape_raw(&flat)?;
        let y = match adjoint_of {
            None => xf.conv(&w, None, &cs, Act::Identity)?,
            Some(in_sp) => xf.conv_transpose(&w, None, &cs, Some(in_sp), Act::Identity)?,
        };
        let mut shape = x.shape()[..2].to_vec();
        shape.extend(&y.shape()[2..]);
        y.reshape_raw(&shape)
    })
}

impl Tensor {
    /// Max pooling of `(N, C, S...)`; the gradient goes to each window's first maximum.
    pub fn maxpool(&self, spec: &PoolSpec) -> Result<Tensor> {
        let g = Geom::new("maxpool", self.shape(), spec)?;
        let shape = g.out_shape(self.shape());
        if let Some(b) = backend::of(self) {
            return b.maxpool(&g, self, &shape);
        }
        let (out, idx) = with_dtype!(self.dtype(), T => {
            let (v, idx) = self.with_slice::<T, _>(|x| maxpool_kernel(&g, x))?;
            (Tensor::from_vec(v, &shape)?, idx)
        });
        Ok(record(out, Gather { idx: Arc::new(idx), src_shape: self.shape().to_vec(), pool: Some(spec.clone()) }, &[self]))
    }

    /// Mean pooling of `(N, C, S...)`: window sums over the kernel size, padding as zeros.
    pub fn meanpool(&self, spec: &PoolSpec) -> Result<Tensor> {
        let g = Geom::new("meanpool", self.shape(), spec)?;
        let shape = g.out_shape(self.shape());
        if backend::of(self).is_some() {
            return Ok(record(meanpool_by_conv(self, spec, None)?, MeanPool { spec: spec.clone() }, &[self]));
        }
        let out = with_dtype!(self.dtype(), T => Tensor::from_vec(self.with_slice::<T, _>(|x| meanpool_kernel(&g, x))?, &shape)?);
        Ok(record(out, MeanPool { spec: spec.clone() }, &[self]))
    }

    /// The adjoint of `meanpool` for an input of spatial size `in_sp`: gradients spread
    /// evenly over their windows (mean pooling's backward).
    pub fn meanpool_adjoint(&self, spec: &PoolSpec, in_sp: &[usize]) -> Result<Tensor> {
        if self.ndim() < 2 {
            return shape_err("meanpool_backward", format!("expects (N, C, S...), got shape {:?}", self.shape()));
        }
        let mut in_shape = self.shape()[..2].to_vec();
        in_shape.extend(in_sp);
        let g = Geom::new("meanpool_backward", &in_shape, spec)?;
        if g.out_shape(&in_shape) != self.shape() {
            return shape_err("meanpool_backward", format!("gradient {:?} does not match pooling an input of shape {in_shape:?}", self.shape()));
        }
        if backend::of(self).is_some() {
            return Ok(record(meanpool_by_conv(self, spec, Some(in_sp))?, MeanPoolAdjoint { spec: spec.clone() }, &[self]));
        }
        let out = with_dtype!(self.dtype(), T => Tensor::from_vec(self.with_slice::<T, _>(|gy| meanpool_adjoint_kernel(&g, gy))?, &in_shape)?);
        Ok(record(out, MeanPoolAdjoint { spec: spec.clone() }, &[self]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxpool_inside_windows_pick_what_the_general_kernel_picks() {
        // small integers (many ties) and NaNs, for 1-3 spatial axes, strides below, equal to
        // and above the kernel
        for (shape, kernel, stride) in [
            (vec![2, 3, 24, 24], vec![2, 2], vec![2, 2]),
            (vec![1, 2, 9, 7], vec![3, 2], vec![2, 1]),
            (vec![1, 1, 11], vec![3], vec![4]),
            (vec![1, 2, 5, 6, 7], vec![2, 3, 2], vec![1, 2, 3]),
        ] {
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| if i % 37 == 5 { f32::NAN } else { ((i * 7919) % 5) as f32 }).collect();
            let spec = PoolSpec { kernel: kernel.clone(), stride, pad: vec![(0, 0); kernel.len()] };
            let g = Geom::new("test", &shape, &spec).unwrap();
            let (ip, op) = (g.ip(), g.op());
            for pl in 0..g.planes {
                let xp = &x[pl * ip..(pl + 1) * ip];
                let (mut fast, mut general) = (vec![usize::MAX; op], vec![usize::MAX; op]);
                maxpool_plane_inside(&g, xp, &mut fast);
                maxpool_plane_rows(&g.rows(), g.s[2], xp, &mut general);
                assert_eq!(fast, general, "{shape:?} kernel {kernel:?}");
            }
        }
    }
    use crate::ops::gradcheck::gradcheck;
    use crate::{grad, pop_watch, push_watch};

    fn rand_distinct(n: usize, seed: u64) -> Vec<f64> {
        // a shuffled ramp: distinct values, so every window has one maximum
        let mut v: Vec<f64> = (0..n).map(|i| i as f64 / n as f64 - 0.5).collect();
        let mut s = seed | 1;
        for i in (1..n).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.swap(i, (s % (i as u64 + 1)) as usize);
        }
        v
    }

    /// Pool by the definition, one output at a time, over N-d multi-indices.
    fn naive(x: &[f64], shape: &[usize], spec: &PoolSpec, max: bool) -> (Vec<f64>, Vec<usize>) {
        let d = shape.len() - 2;
        let o: Vec<usize> = (0..d).map(|j| (shape[2 + j] + spec.pad[j].0 + spec.pad[j].1 - spec.kernel[j]) / spec.stride[j] + 1).collect();
        let ip: usize = shape[2..].iter().product();
        let mut out = vec![];
        let mut oshape = shape[..2].to_vec();
        oshape.extend(&o);
        let ks: usize = spec.kernel.iter().product();
        for plane in 0..shape[0] * shape[1] {
            let op: usize = o.iter().product();
            for oi in 0..op {
                let mut rem = oi;
                let mut opos = vec![0; d];
                for j in (0..d).rev() {
                    opos[j] = rem % o[j];
                    rem /= o[j];
                }
                let (mut best, mut sum) = (f64::NEG_INFINITY, 0.0);
                for ki in 0..ks {
                    let mut rem = ki;
                    let mut flat = 0;
                    let mut inside = true;
                    let mut kpos = vec![0; d];
                    for j in (0..d).rev() {
                        kpos[j] = rem % spec.kernel[j];
                        rem /= spec.kernel[j];
                    }
                    for j in 0..d {
                        let p = (opos[j] * spec.stride[j] + kpos[j]) as isize - spec.pad[j].0 as isize;
                        inside &= p >= 0 && (p as usize) < shape[2 + j];
                        flat = flat * shape[2 + j] + p.max(0) as usize;
                    }
                    if inside {
                        best = best.max(x[plane * ip + flat]);
                        sum += x[plane * ip + flat];
                    }
                }
                out.push(if max { best } else { sum / ks as f64 });
            }
        }
        (out, oshape)
    }

    fn cases() -> Vec<(Vec<usize>, PoolSpec)> {
        let ps = |k: &[usize], s: &[usize], p: &[(usize, usize)]| PoolSpec { kernel: k.to_vec(), stride: s.to_vec(), pad: p.to_vec() };
        vec![
            (vec![2, 3, 9], ps(&[2], &[2], &[(0, 0)])),
            (vec![2, 2, 10], ps(&[3], &[2], &[(1, 2)])),
            (vec![2, 3, 8, 8], PoolSpec::new(&[2, 2])),
            (vec![1, 2, 7, 6], ps(&[3, 2], &[2, 1], &[(1, 1), (0, 1)])),
            (vec![2, 1, 5, 7], ps(&[2, 3], &[1, 3], &[(1, 0), (2, 2)])),
            (vec![1, 2, 4, 5, 6], ps(&[2, 2, 3], &[2, 1, 3], &[(1, 0), (0, 1), (1, 1)])),
        ]
    }

    #[test]
    fn pooling_matches_naive_loops() {
        for (seed, (shape, spec)) in cases().into_iter().enumerate() {
            let xv = rand_distinct(shape.iter().product(), seed as u64 + 3);
            let x = Tensor::from_vec(xv.clone(), &shape).unwrap();
            for max in [true, false] {
                let (want, oshape) = naive(&xv, &shape, &spec, max);
                let y = if max { x.maxpool(&spec) } else { x.meanpool(&spec) }.unwrap();
                assert_eq!(y.shape(), oshape.as_slice());
                for (a, b) in y.to_vec_f64().iter().zip(&want) {
                    assert!((a - b).abs() < 1e-12, "{shape:?} max={max}: {a} vs {b}");
                }
            }
        }
    }

    fn weighted(y: &Tensor) -> Tensor {
        let r: Vec<f64> = (0..y.numel()).map(|i| ((i * 7919) % 13) as f64 / 13.0 - 0.4).collect();
        y.mul(&Tensor::from_vec(r, y.shape()).unwrap()).unwrap().sum_all().unwrap()
    }

    #[test]
    fn pooling_gradients_match_finite_differences() {
        for (seed, (shape, spec)) in cases().into_iter().enumerate() {
            // distinct values at least 1/numel apart: the nudge never changes an arg-max
            let x = Tensor::from_vec(rand_distinct(shape.iter().product(), seed as u64 + 9), &shape).unwrap();
            let s1 = spec.clone();
            gradcheck(std::slice::from_ref(&x), &move |t| weighted(&t[0].maxpool(&s1).unwrap()));
            let s2 = spec.clone();
            gradcheck(std::slice::from_ref(&x), &move |t| weighted(&t[0].meanpool(&s2).unwrap()));
            let (s3, sp) = (spec.clone(), shape[2..].to_vec());
            let y = x.meanpool(&spec).unwrap();
            gradcheck(std::slice::from_ref(&y), &move |t| weighted(&t[0].meanpool_adjoint(&s3, &sp).unwrap()));
        }
    }

    #[test]
    fn max_gradient_goes_to_the_first_maximum_and_second_order_works() {
        let x = Tensor::from_vec(vec![1.0, 3.0, 3.0, 2.0], &[1, 1, 4]).unwrap();
        push_watch(std::slice::from_ref(&x));
        push_watch(std::slice::from_ref(&x));
        let y = x.maxpool(&PoolSpec::new(&[4])).unwrap();
        let l = y.mul(&y).unwrap().sum_all().unwrap();
        pop_watch();
        let g = grad(&l, std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
        pop_watch();
        assert_eq!(g.to_vec_f64(), vec![0.0, 6.0, 0.0, 0.0]);
        let gg = grad(&g.sum_all().unwrap(), std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
        assert_eq!(gg.to_vec_f64(), vec![0.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn nan_propagates_through_max() {
        let x = Tensor::from_vec(vec![1.0, f64::NAN, 0.0, 2.0], &[1, 1, 4]).unwrap();
        let y = x.maxpool(&PoolSpec::new(&[2])).unwrap().to_vec_f64();
        assert!(y[0].is_nan() && y[1] == 2.0);
        // a window of -inf still picks one of its own elements
        let x = Tensor::from_vec(vec![5.0, f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0], &[1, 1, 4]).unwrap();
        push_watch(std::slice::from_ref(&x));
        let y = x.maxpool(&PoolSpec { kernel: vec![2], stride: vec![1], pad: vec![(0, 0)] }).unwrap();
        pop_watch();
        assert_eq!(y.to_vec_f64(), vec![5.0, f64::NEG_INFINITY, 1.0]);
        let g = grad(&y.sum_all().unwrap(), std::slice::from_ref(&x), None).unwrap().remove(0).unwrap();
        assert_eq!(g.to_vec_f64(), vec![1.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn errors_name_the_problem() {
        let x = Tensor::zeros(&[2, 3, 4, 4], crate::DType::F32);
        let e = x.maxpool(&PoolSpec::new(&[5, 5])).unwrap_err().to_string();
        assert!(e.contains("larger than the input"), "{e}");
        let e = x.maxpool(&PoolSpec::new(&[2])).unwrap_err().to_string();
        assert!(e.contains("(N, C, L)") && e.contains("[2, 3, 4, 4]"), "{e}");
        let bad = PoolSpec { kernel: vec![2, 2], stride: vec![2, 2], pad: vec![(2, 0), (0, 0)] };
        assert!(x.meanpool(&bad).unwrap_err().to_string().contains("smaller than the kernel"));
        let zero = PoolSpec { kernel: vec![2, 2], stride: vec![0, 2], pad: vec![(0, 0); 2] };
        assert!(matches!(x.meanpool(&zero), Err(crate::Error::Value { .. })));
    }

    #[test]
    fn large_inputs_use_the_parallel_path_consistently() {
        let shape = [8, 16, 32, 32];
        let xv = rand_distinct(shape.iter().product(), 1);
        let x = Tensor::from_vec(xv.clone(), &shape).unwrap();
        let spec = PoolSpec { kernel: vec![3, 3], stride: vec![2, 2], pad: vec![(1, 1), (1, 1)] };
        for max in [true, false] {
            let (want, _) = naive(&xv, &shape, &spec, max);
            let y = if max { x.maxpool(&spec) } else { x.meanpool(&spec) }.unwrap();
            for (a, b) in y.to_vec_f64().iter().zip(&want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
        // the adjoint identity on the parallel path
        let y = x.meanpool(&spec).unwrap();
        let gy: Vec<f64> = (0..y.numel()).map(|i| (i % 7) as f64).collect();
        let dx = Tensor::from_vec(gy.clone(), y.shape()).unwrap().meanpool_adjoint(&spec, &[32, 32]).unwrap();
        let lhs: f64 = y.to_vec_f64().iter().zip(&gy).map(|(a, b)| a * b).sum();
        let rhs: f64 = dx.to_vec_f64().iter().zip(&xv).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-8 * lhs.abs().max(1.0));
    }

    /// `cargo test --release -p fluxrs-core bench_pool -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_pool() {
        use std::time::Instant;
        for shape in [[100usize, 6, 24, 24], [100, 16, 8, 8]] {
            let x = Tensor::from_vec(rand_distinct(shape.iter().product(), 5).into_iter().map(|v| v as f32).collect::<Vec<f32>>(), &shape).unwrap();
            let spec = PoolSpec::new(&[2, 2]);
            for max in [true, false] {
                let run = || {
                    push_watch(std::slice::from_ref(&x));
                    let y = if max { x.maxpool(&spec) } else { x.meanpool(&spec) }.unwrap();
                    pop_watch();
                    let t = Instant::now();
                    let g = grad(&y.sum_all().unwrap(), std::slice::from_ref(&x), None).unwrap();
                    std::hint::black_box(g);
                    t.elapsed().as_secs_f64()
                };
                let fwd = || {
                    let t = Instant::now();
                    std::hint::black_box(if max { x.maxpool(&spec) } else { x.meanpool(&spec) }.unwrap());
                    t.elapsed().as_secs_f64()
                };
                let f = (0..50).map(|_| fwd()).fold(f64::INFINITY, f64::min) * 1e6;
                let b = (0..50).map(|_| run()).fold(f64::INFINITY, f64::min) * 1e6;
                println!("{} {shape:?}: fwd {f:.0}us, backward (incl. sum) {b:.0}us", if max { "maxpool" } else { "meanpool" });
            }
        }
    }
}
