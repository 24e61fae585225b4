//! The convolution kernels against direct loops and finite differences.

use super::*;
use crate::ops::gradcheck::gradcheck;
use crate::{grad, pop_watch, push_watch};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
    fn t(&mut self, shape: &[usize]) -> Tensor {
        Tensor::from_vec(self.vec(shape.iter().product()), shape).unwrap()
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Every multi-index of `shape`.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in shape {
        out = out
            .into_iter()
            .flat_map(|p| {
                (0..d).map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

/// The textbook definition, one output element at a time.
fn naive_conv(x: &[f64], xs: &[usize], w: &[f64], ws: &[usize], b: Option<&[f64]>, spec: &ConvSpec) -> (Vec<f64>, Vec<usize>) {
    let d = xs.len() - 2;
    let (n, cin, cout, cig) = (xs[0], xs[1], ws[0], ws[1]);
    let cog = cout / spec.groups;
    let o: Vec<usize> = (0..d).map(|j| out_len(xs[2 + j], ws[2 + j], spec.stride[j], spec.dilation[j], spec.pad[j].0, spec.pad[j].1).unwrap()).collect();
    let mut ys = vec![n, cout];
    ys.extend(&o);
    let (sx, sw, sy) = (strides(xs), strides(ws), strides(&ys));
    let mut y = vec![0.0; ys.iter().product()];
    assert_eq!(cin, cig * spec.groups);
    for ni in 0..n {
        for co in 0..cout {
            let gi = co / cog;
            for opos in indices(&o) {
                let mut acc = b.map_or(0.0, |b| b[co]);
                for ci in 0..cig {
                    for kpos in indices(&ws[2..]) {
                        let mut xi = ni * sx[0] + (gi * cig + ci) * sx[1];
                        let mut inside = true;
                        for j in 0..d {
                            let kj = if spec.flip { ws[2 + j] - 1 - kpos[j] } else { kpos[j] };
                            let p = (opos[j] * spec.stride[j] + kj * spec.dilation[j]) as isize - spec.pad[j].0 as isize;
                            if p < 0 || p as usize >= xs[2 + j] {
                                inside = false;
                            }
                            xi += p.max(0) as usize * sx[2 + j];
                        }
                        if inside {
                            let wi = co * sw[0] + ci * sw[1] + kpos.iter().enumerate().map(|(j, &k)| k * sw[2 + j]).sum::<usize>();
                            acc += x[xi] * w[wi];
                        }
                    }
                }
                let yi = ni * sy[0] + co * sy[1] + opos.iter().enumerate().map(|(j, &p)| p * sy[2 + j]).sum::<usize>();
                y[yi] = acc;
            }
        }
    }
    (y, ys)
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        assert!((p - q).abs() <= tol * (1.0 + q.abs()), "element {i}: {p} vs {q}");
    }
}

fn spec(stride: &[usize], pad: &[(usize, usize)], dil: &[usize], groups: usize, flip: bool) -> ConvSpec {
    ConvSpec { stride: stride.to_vec(), pad: pad.to_vec(), dilation: dil.to_vec(), groups, flip }
}

/// (x shape, w shape, spec) covering 1-D, 2-D, 3-D, stride, asymmetric pad, dilation,
/// groups, flip, a 1x1 kernel and channel-less edge cases.
fn cases() -> Vec<(Vec<usize>, Vec<usize>, ConvSpec)> {
    vec![
        (vec![2, 3, 9], vec![4, 3, 3], spec(&[1], &[(0, 0)], &[1], 1, false)),
        (vec![2, 2, 10], vec![4, 1, 3], spec(&[2], &[(1, 2)], &[2], 2, true)),
        (vec![2, 2, 7, 6], vec![3, 2, 3, 2], spec(&[1, 1], &[(0, 0), (0, 0)], &[1, 1], 1, false)),
        (vec![1, 4, 8, 7], vec![6, 2, 3, 3], spec(&[2, 1], &[(1, 0), (2, 1)], &[1, 2], 2, true)),
        (vec![2, 3, 5, 5], vec![3, 1, 2, 2], spec(&[3, 2], &[(1, 1), (0, 1)], &[2, 1], 3, false)),
        (vec![2, 3, 4, 5], vec![2, 3, 1, 1], spec(&[1, 1], &[(0, 0), (0, 0)], &[1, 1], 1, false)),
        (vec![3, 4, 6, 5], vec![4, 2, 1, 1], spec(&[1, 1], &[(0, 0), (0, 0)], &[1, 1], 2, false)),
        (vec![1, 2, 4, 5, 4], vec![2, 2, 2, 3, 2], spec(&[1, 2, 1], &[(1, 0), (0, 1), (1, 1)], &[1, 1, 2], 1, true)),
        // unpadded (im2col's copy-only path): rows of 17 (two pieces of 8 and one more),
        // flipped and dilated; then a strided last axis
        (vec![2, 2, 9, 21], vec![3, 2, 3, 3], spec(&[2, 1], &[(0, 0), (0, 0)], &[1, 2], 1, true)),
        (vec![1, 4, 7, 20], vec![2, 2, 2, 3], spec(&[1, 3], &[(0, 0), (0, 0)], &[2, 1], 2, false)),
        // padded and undilated (the padding written out, then the copy-only path): strided
        // 1-D as MNIST-1D's CNN, grouped 2-D, 3-D, and a stride longer than the kernel
        (vec![3, 2, 11], vec![4, 2, 3], spec(&[2], &[(1, 1)], &[1], 1, true)),
        (vec![2, 4, 6, 5], vec![4, 2, 3, 3], spec(&[1, 2], &[(1, 1), (2, 0)], &[1, 1], 2, false)),
        (vec![1, 2, 4, 3, 5], vec![2, 2, 2, 2, 3], spec(&[2, 1, 2], &[(1, 0), (0, 1), (1, 2)], &[1, 1, 1], 1, true)),
        (vec![2, 1, 9], vec![2, 1, 2], spec(&[3], &[(2, 2)], &[1], 1, false)),
        // 1-D, the whole batch in one gather per (channel, kernel position) each way:
        // unpadded strided, padded unstrided
        (vec![3, 2, 12], vec![3, 2, 3], spec(&[2], &[(0, 0)], &[1], 1, false)),
        (vec![2, 2, 8], vec![3, 2, 3], spec(&[1], &[(1, 1)], &[1], 1, true)),
    ]
}

#[test]
fn conv_matches_naive_loop() {
    let mut rng = Rng(7);
    for (xs, ws, sp) in cases() {
        for bias in [false, true] {
            let x = rng.t(&xs);
            let w = rng.t(&ws);
            let b = rng.t(&[ws[0]]);
            let bv = b.to_vec_f64();
            let (want, ys) = naive_conv(&x.to_vec_f64(), &xs, &w.to_vec_f64(), &ws, bias.then_some(bv.as_slice()), &sp);
            let y = x.conv(&w, bias.then_some(&b), &sp, Act::Identity).unwrap();
            assert_eq!(y.shape(), ys.as_slice());
            close(&y.to_vec_f64(), &want, 1e-12);
            // float32 too, and a fused activation
            let y32 = x.cast(crate::DType::F32).unwrap().conv(&w.cast(crate::DType::F32).unwrap(), None, &sp, Act::Relu).unwrap();
            let (want0, _) = naive_conv(&x.to_vec_f64(), &xs, &w.to_vec_f64(), &ws, None, &sp);
            close(&y32.to_vec_f64(), &want0.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), 1e-5);
        }
    }
}

#[test]
fn conv_transpose_is_the_adjoint_of_conv() {
    // <conv(x, w), y> == <x, conv_transpose(y, w)> for every geometry, and
    // <conv(x, w), y> == <w, conv_filter_grad(x, y)>.
    let mut rng = Rng(11);
    for (xs, ws, sp) in cases() {
        let x = rng.t(&xs);
        let w = rng.t(&ws);
        let cx = x.conv(&w, None, &sp, Act::Identity).unwrap();
        let y = rng.t(cx.shape());
        let lhs: f64 = cx.to_vec_f64().iter().zip(y.to_vec_f64()).map(|(a, b)| a * b).sum();
        let xt = y.conv_transpose(&w, None, &sp, Some(&xs[2..]), Act::Identity).unwrap();
        assert_eq!(xt.shape(), xs.as_slice());
        let rhs: f64 = x.to_vec_f64().iter().zip(xt.to_vec_f64()).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-10, "{xs:?} {ws:?}: {lhs} vs {rhs}");
        let fg = x.conv_filter_grad(&y, &sp, &ws[2..]).unwrap();
        assert_eq!(fg.shape(), ws.as_slice());
        let rhs2: f64 = w.to_vec_f64().iter().zip(fg.to_vec_f64()).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs2).abs() < 1e-10, "{xs:?} {ws:?}: {lhs} vs {rhs2}");
    }
}

#[test]
fn conv_transpose_matches_scatter_loop() {
    // The transposed convolution by its own definition: each input element scatters
    // w-weighted copies into the output.
    let mut rng = Rng(5);
    let sp = spec(&[2, 3], &[(1, 0), (0, 2)], &[1, 2], 2, false);
    let (ys, ws) = ([2usize, 4, 3, 3], [4usize, 3, 2, 3]);
    let (y, w) = (rng.t(&ys), rng.t(&ws));
    let out = y.conv_transpose(&w, None, &sp, None, Act::Identity).unwrap();
    let (h, wd) = (out.shape()[2], out.shape()[3]);
    assert_eq!(out.shape(), &[2, 6, (3 - 1) * 2 + 2 - 1, (3 - 1) * 3 + 2 * 2 + 1 - 2]);
    let (yv, wv) = (y.to_vec_f64(), w.to_vec_f64());
    let mut want = vec![0.0; out.numel()];
    for n in 0..2 {
        for c in 0..4 {
            let gi = c / 2;
            for p in 0..3 {
                for q in 0..3 {
                    let v = yv[((n * 4 + c) * 3 + p) * 3 + q];
                    for co in 0..3 {
                        for a in 0..2 {
                            for bb in 0..3 {
                                let (r, s) = ((p * 2 + a) as isize - 1, (q * 3 + bb * 2) as isize);
                                if r >= 0 && (r as usize) < h && (s as usize) < wd {
                                    want[((n * 6 + gi * 3 + co) * h + r as usize) * wd + s as usize] += v * wv[((c * 3 + co) * 2 + a) * 3 + bb];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    close(&out.to_vec_f64(), &want, 1e-12);
}

fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = Rng(seed).t(y.shape());
    y.mul(&r).unwrap().sum_all().unwrap()
}

#[test]
fn conv_gradients_match_finite_differences() {
    let mut rng = Rng(3);
    for (xs, ws, sp) in cases() {
        let (x, w, b) = (rng.t(&xs), rng.t(&ws), rng.t(&[ws[0]]));
        for act in [Act::Identity, Act::Tanh] {
            let sp2 = sp.clone();
            gradcheck(&[x.clone(), w.clone(), b.clone()], &move |t| weighted_sum(&t[0].conv(&t[1], Some(&t[2]), &sp2, act).unwrap(), 99));
        }
    }
}

#[test]
fn conv_transpose_and_filter_grad_gradients_match_finite_differences() {
    let mut rng = Rng(13);
    for (xs, ws, sp) in cases() {
        let (x, w) = (rng.t(&xs), rng.t(&ws));
        let y = rng.t(x.conv(&w, None, &sp, Act::Identity).unwrap().shape());
        let cin = xs[1];
        let b = rng.t(&[cin]);
        let (sp2, xsp) = (sp.clone(), xs[2..].to_vec());
        gradcheck(&[y.clone(), w.clone(), b], &move |t| weighted_sum(&t[0].conv_transpose(&t[1], Some(&t[2]), &sp2, Some(&xsp), Act::Sigmoid).unwrap(), 5));
        let (sp3, k) = (sp.clone(), ws[2..].to_vec());
        gradcheck(&[x.clone(), y.clone()], &move |t| weighted_sum(&t[0].conv_filter_grad(&t[1], &sp3, &k).unwrap(), 6));
    }
}

#[test]
fn second_order_through_conv() {
    // h(x, w) = <v, d/dw sum(conv(x, w)^2)>: its gradient, built by differentiating
    // the recorded backward pass, against finite differences of h.
    let mut rng = Rng(21);
    let sp = spec(&[2, 1], &[(1, 0), (1, 1)], &[1, 1], 1, true);
    let (x, w) = (rng.t(&[2, 2, 5, 4]), rng.t(&[3, 2, 2, 3]));
    let v = rng.t(&[3, 2, 2, 3]);
    let h = |x: &Tensor, w: &Tensor, create: bool| -> Tensor {
        let leaves = [x.clone(), w.clone()];
        if create {
            push_watch(&leaves);
        }
        push_watch(&leaves);
        let y = x.conv(w, None, &sp, Act::Tanh).unwrap();
        let l = y.mul(&y).unwrap().sum_all().unwrap();
        pop_watch();
        let gw = grad(&l, std::slice::from_ref(w), None).unwrap().remove(0).unwrap();
        let out = gw.mul(&v).unwrap().sum_all().unwrap();
        if create {
            pop_watch();
        }
        out
    };
    let hv = h(&x, &w, true);
    let gs = grad(&hv, &[x.clone(), w.clone()], None).unwrap();
    let eps = 1e-6;
    for (li, leaf) in [x.clone(), w.clone()].iter().enumerate() {
        let g = gs[li].as_ref().unwrap().to_vec_f64();
        let base = leaf.to_vec_f64();
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut vv = base.clone();
                vv[i] += delta;
                let t = Tensor::from_vec(vv, leaf.shape()).unwrap();
                let (xx, ww) = if li == 0 { (t, w.clone()) } else { (x.clone(), t) };
                h(&xx, &ww, false).item().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()), "leaf {li} element {i}: fd {fd} vs {}", g[i]);
        }
    }
}

/// The batch at once (chunked, maybe over threads) against one sample at a time.
fn batch_matches_per_sample(xs: &[usize], ws: &[usize], sp: &ConvSpec, seed: u64) {
    let mut rng = Rng(seed);
    let (x, w, b) = (rng.t(xs), rng.t(ws), rng.t(&[ws[0]]));
    let isp = &xs[2..];
    let y = x.conv(&w, Some(&b), sp, Act::Tanh).unwrap();
    let gy = rng.t(y.shape());
    let bx = rng.t(&[xs[1]]);
    let dx = gy.conv_transpose(&w, Some(&bx), sp, Some(isp), Act::Sigmoid).unwrap();
    let dw = x.conv_filter_grad(&gy, sp, &ws[2..]).unwrap();
    let mut dw_sum = vec![0.0; dw.numel()];
    for n in 0..xs[0] {
        let xn = x.slice(0, n, n + 1, 1).unwrap();
        let gyn = gy.slice(0, n, n + 1, 1).unwrap();
        let yn = xn.conv(&w, Some(&b), sp, Act::Tanh).unwrap();
        close(&yn.to_vec_f64(), &y.slice(0, n, n + 1, 1).unwrap().to_vec_f64(), 1e-12);
        let dxn = gyn.conv_transpose(&w, Some(&bx), sp, Some(isp), Act::Sigmoid).unwrap();
        close(&dxn.to_vec_f64(), &dx.slice(0, n, n + 1, 1).unwrap().to_vec_f64(), 1e-12);
        for (a, b) in dw_sum.iter_mut().zip(xn.conv_filter_grad(&gyn, sp, &ws[2..]).unwrap().to_vec_f64()) {
            *a += b;
        }
    }
    close(&dw.to_vec_f64(), &dw_sum, 1e-10);
}

#[test]
fn parallel_batch_matches_serial() {
    // Big enough to split the batch over threads, with an odd batch (a short last chunk).
    let (n, cout, outputs, ck) = (23, 8, 20 * 20, 3 * 5 * 5);
    assert!(n * cout * outputs * ck >= super::CONV_PAR_FLOPS, "too small to run in parallel");
    batch_matches_per_sample(&[n, 3, 20, 20], &[cout, 3, 5, 5], &spec(&[1, 1], &[(2, 2), (2, 2)], &[1, 1], 1, true), 17);
}

#[test]
fn batched_gemms_match_per_sample() {
    // Small outputs put several samples side by side in one gemm: 256 outputs per
    // sample makes chunks of 2, 2 and 1; 10 outputs put the whole batch in one; groups too.
    batch_matches_per_sample(&[5, 2, 18, 18], &[3, 2, 3, 3], &ConvSpec::new(2), 19);
    batch_matches_per_sample(&[7, 4, 19], &[6, 2, 3], &spec(&[2], &[(1, 1)], &[1], 2, true), 29);
    batch_matches_per_sample(&[6, 4, 5, 5], &[4, 2, 1, 1], &spec(&[1, 1], &[(0, 0), (0, 0)], &[1, 1], 2, false), 31);
}

#[test]
fn errors_name_the_problem() {
    let x = Tensor::zeros(&[2, 3, 8, 8], crate::DType::F32);
    let w = Tensor::zeros(&[4, 2, 3, 3], crate::DType::F32);
    let sp = ConvSpec::new(2);
    let e = x.conv(&w, None, &sp, Act::Identity).unwrap_err().to_string();
    assert!(e.contains("takes 2 input channels, got 3"), "{e}");
    let x3 = Tensor::zeros(&[3, 8, 8], crate::DType::F32);
    let e = x3.conv(&w, None, &sp, Act::Identity).unwrap_err().to_string();
    assert!(e.contains("(N, C, H, W)") && e.contains("[3, 8, 8]"), "{e}");
    let big = Tensor::zeros(&[4, 3, 9, 9], crate::DType::F32);
    let e = x.conv(&big, None, &sp, Act::Identity).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let mut g3 = ConvSpec::new(2);
    g3.groups = 2;
    let w2 = Tensor::zeros(&[3, 1, 3, 3], crate::DType::F32);
    let x2 = Tensor::zeros(&[1, 2, 5, 5], crate::DType::F32);
    assert!(x2.conv(&w2, None, &g3, Act::Identity).unwrap_err().to_string().contains("not divisible by groups=2"));
    let w_ok = Tensor::zeros(&[4, 3, 3, 3], crate::DType::F32);
    let b = Tensor::zeros(&[3], crate::DType::F32);
    assert!(x.conv(&w_ok, Some(&b), &sp, Act::Identity).unwrap_err().to_string().contains("bias"));
    let mut s0 = ConvSpec::new(2);
    s0.stride = vec![0, 1];
    assert!(matches!(x.conv(&w_ok, None, &s0, Act::Identity), Err(crate::Error::Value { .. })));
    let y = Tensor::zeros(&[2, 4, 6, 6], crate::DType::F32);
    let e = y.conv_transpose(&w_ok, None, &sp, Some(&[9, 8]), Act::Identity).unwrap_err().to_string();
    assert!(e.contains("inconsistent"), "{e}");
}

// ---------- the im2col-vs-direct measurement ----------

/// A direct convolution: for each (output channel, input channel, kernel position),
/// an axpy of the shifted input row into the output row. No im2col buffer, no gemm.
fn direct_fwd<T: Elem>(g: &Geom, x: &[T], w: &[T]) -> Vec<T> {
    let (ip, op, kp, cig, cog, s2) = (g.ip(), g.op(), g.kp(), g.cig(), g.cog(), g.s[2]);
    let mut y = vec![T::ZERO; g.n * g.cout * op];
    for ni in 0..g.n {
        for co in 0..g.cout {
            let gi = co / cog;
            let yc = &mut y[(ni * g.cout + co) * op..(ni * g.cout + co + 1) * op];
            for ci in 0..cig {
                let xc = &x[(ni * g.cin + gi * cig + ci) * ip..][..ip];
                let wk = &w[(co * cig + ci) * kp..][..kp];
                for_each_row(g, |kidx, row, r, start| {
                    let wv = wk[kidx];
                    let dst = &mut yc[row + r.start..row + r.end];
                    if s2 == 1 {
                        for (d, &v) in dst.iter_mut().zip(&xc[start..start + r.end - r.start]) {
                            *d += wv * v;
                        }
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d += wv * xc[start + j * s2];
                        }
                    }
                });
            }
        }
    }
    y
}

/// Direct weight gradient: dw[co, ci, k] = sum of gy row . shifted x row.
fn direct_filter<T: Elem>(g: &Geom, x: &[T], gy: &[T]) -> Vec<T> {
    let (ip, op, kp, cig, cog, s2) = (g.ip(), g.op(), g.kp(), g.cig(), g.cog(), g.s[2]);
    let mut dw = vec![T::ZERO; g.cout * cig * kp];
    for ni in 0..g.n {
        for co in 0..g.cout {
            let gi = co / cog;
            let gc = &gy[(ni * g.cout + co) * op..][..op];
            for ci in 0..cig {
                let xc = &x[(ni * g.cin + gi * cig + ci) * ip..][..ip];
                let dwk = &mut dw[(co * cig + ci) * kp..][..kp];
                for_each_row(g, |kidx, row, r, start| {
                    let src = &gc[row + r.start..row + r.end];
                    let mut acc = T::ZERO;
                    if s2 == 1 {
                        for (&a, &b) in src.iter().zip(&xc[start..start + src.len()]) {
                            acc += a * b;
                        }
                    } else {
                        for (j, &a) in src.iter().enumerate() {
                            acc += a * xc[start + j * s2];
                        }
                    }
                    dwk[kidx] += acc;
                });
            }
        }
    }
    dw
}

/// Direct input gradient: scatter-axpy of each gy row into the shifted x row.
fn direct_data<T: Elem>(g: &Geom, gy: &[T], w: &[T]) -> Vec<T> {
    let (ip, op, kp, cig, cog, s2) = (g.ip(), g.op(), g.kp(), g.cig(), g.cog(), g.s[2]);
    let mut dx = vec![T::ZERO; g.n * g.cin * ip];
    for ni in 0..g.n {
        for co in 0..g.cout {
            let gi = co / cog;
            let gc = &gy[(ni * g.cout + co) * op..][..op];
            for ci in 0..cig {
                let dxc = &mut dx[(ni * g.cin + gi * cig + ci) * ip..][..ip];
                let wk = &w[(co * cig + ci) * kp..][..kp];
                for_each_row(g, |kidx, row, r, start| {
                    let wv = wk[kidx];
                    let src = &gc[row + r.start..row + r.end];
                    if s2 == 1 {
                        for (d, &v) in dxc[start..start + src.len()].iter_mut().zip(src) {
                            *d += wv * v;
                        }
                    } else {
                        for (j, &v) in src.iter().enumerate() {
                            dxc[start + j * s2] += wv * v;
                        }
                    }
                });
            }
        }
    }
    dx
}

#[test]
fn direct_kernels_agree_with_im2col() {
    let mut rng = Rng(23);
    for (xs, ws, sp) in cases() {
        let g = Geom::new("conv", xs[0], xs[1], &xs[2..], &ws, &sp).unwrap();
        let (x, w) = (rng.vec(xs.iter().product()), rng.vec(ws.iter().product()));
        let y = conv_fwd(&g, &x, &w, None, Act::Identity);
        close(&direct_fwd(&g, &x, &w), &y, 1e-12);
        let gy = rng.vec(y.len());
        close(&direct_data(&g, &gy, &w), &conv_data(&g, &gy, &w, None, Act::Identity), 1e-12);
        close(&direct_filter(&g, &x, &gy), &conv_filter(&g, &x, &gy), 1e-12);
    }
}

/// `cargo test --release -p fluxrs-core bench_lenet -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_lenet_im2col_vs_direct() {
    use std::time::Instant;
    fn time(reps: usize, mut f: impl FnMut()) -> f64 {
        f();
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        best * 1e6
    }
    let mut rng = Rng(1);
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let s2p1 = ConvSpec { stride: vec![2], pad: vec![(1, 1)], flip: true, ..ConvSpec::new(1) };
    for n in [1usize, 32, 128] {
        // LeNet-5: conv1 (n,1,28,28) * (6,1,5,5); conv2 (n,6,12,12) * (16,6,5,5);
        // and the MNIST-1D CNN's three 1-D convolutions (stride 2, pad 1)
        let lenet = ConvSpec { flip: true, ..ConvSpec::new(2) };
        let cases: [(&str, Vec<usize>, Vec<usize>, &ConvSpec); 5] = [
            ("lenet conv1", vec![n, 1, 28, 28], vec![6, 1, 5, 5], &lenet),
            ("lenet conv2", vec![n, 6, 12, 12], vec![16, 6, 5, 5], &lenet),
            ("m1d conv1", vec![n, 1, 40], vec![25, 1, 5], &s2p1),
            ("m1d conv2", vec![n, 25, 19], vec![25, 25, 3], &s2p1),
            ("m1d conv3", vec![n, 25, 10], vec![25, 25, 3], &s2p1),
        ];
        for (name, xs, ws, sp) in cases {
            let g = Geom::new("conv", xs[0], xs[1], &xs[2..], &ws, sp).unwrap();
            let x: Vec<f32> = rng.vec(xs.iter().product()).into_iter().map(|v| v as f32).collect();
            let w: Vec<f32> = rng.vec(ws.iter().product()).into_iter().map(|v| v as f32).collect();
            let gy: Vec<f32> = rng.vec(g.n * g.cout * g.op()).into_iter().map(|v| v as f32).collect();
            let reps = (2000 / n).max(3);
            let report = |label: &str| {
                let f = time(reps, || {
                    std::hint::black_box(conv_fwd(&g, &x, &w, None, Act::Identity));
                });
                let d = time(reps, || {
                    std::hint::black_box(conv_data(&g, &gy, &w, None, Act::Identity));
                });
                let fl = time(reps, || {
                    std::hint::black_box(conv_filter(&g, &x, &gy));
                });
                let df = time(reps, || {
                    std::hint::black_box(direct_fwd(&g, &x, &w));
                });
                let dd = time(reps, || {
                    std::hint::black_box(direct_data(&g, &gy, &w));
                });
                let dfl = time(reps, || {
                    std::hint::black_box(direct_filter(&g, &x, &gy));
                });
                println!("{label:>9} {name:>11} n={n:>3}: im2col fwd {f:>8.1}us dx {d:>8.1}us dw {fl:>8.1}us | direct fwd {df:>8.1}us dx {dd:>8.1}us dw {dfl:>8.1}us | step {:.2}x faster",
                         (df + dd + dfl) / (f + d + fl));
            };
            one_thread.install(|| report("1 thread"));
            report(&format!("{} thr", threads()));
        }
    }
}
