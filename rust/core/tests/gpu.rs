//! The wgpu backend against the CPU backend: every op with a GPU kernel, forward and
//! gradient, on the same data. Runs on any adapter, Debian's CPU Vulkan driver (lavapipe)
//! included: `cargo test -p fluxrs-core --features gpu --test gpu`.
//!
//! Tolerance: 2e-5 relative + 2e-5 absolute. The GPU's exp/log/tanh are the driver's,
//! not the CPU backend's polynomials, and its sums run in another order.
#![cfg(feature = "gpu")]

use fluxrs_core::ops::{BinaryOp, UnaryOp};
use fluxrs_core::{grad, pop_watch, push_watch, Device, Error, Tensor};

fn gpu_or_skip() -> bool {
    match fluxrs_core::device::gpu_info() {
        Ok(info) => {
            eprintln!("GPU: {info}");
            true
        }
        // CI installs lavapipe, and FLUXRS_REQUIRE_GPU makes a missing adapter a failure there.
        Err(e) if std::env::var("FLUXRS_REQUIRE_GPU").unwrap_or_default().is_empty() => {
            eprintln!("skipped: {e}");
            false
        }
        Err(e) => panic!("FLUXRS_REQUIRE_GPU is set but {e}"),
    }
}

/// Deterministic data in [-2, 2) (a small LCG: no rand dependency for tests).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(data(shape.iter().product(), seed), shape).unwrap()
}

fn gpu(x: &Tensor) -> Tensor {
    x.to_device(Device::Gpu).unwrap()
}

#[track_caller]
fn close(what: &str, gpu: &Tensor, cpu: &Tensor) {
    assert_eq!(gpu.device(), Device::Gpu, "{what}: result left the GPU");
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    let (g, c) = (gpu.to_vec_f64(), cpu.to_vec_f64());
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let ok = a == b || (a - b).abs() <= 2e-5 + 2e-5 * b.abs() || (a.is_nan() && b.is_nan());
        assert!(ok, "{what}: element {i}: gpu {a} vs cpu {b}");
    }
}

/// `f`'s outputs, computed on `dev` from `inputs` moved there, followed by the gradients
/// with respect to `inputs` of a random weighting of the outputs (weights from seeds
/// `seed`, `seed + 1`, ...: the same on either device).
fn outputs_and_grads(dev: Device, inputs: &[&Tensor], seed: u64, f: &impl Fn(&[Tensor]) -> Vec<Tensor>) -> Vec<Tensor> {
    let leaves: Vec<Tensor> = inputs.iter().map(|x| x.to_device(dev).unwrap()).collect();
    push_watch(&leaves);
    let mut out = f(&leaves);
    let terms: Vec<Tensor> =
        out.iter().enumerate().map(|(j, y)| y.mul(&t(y.shape(), seed + j as u64).to_device(dev).unwrap()).unwrap().sum_all().unwrap()).collect();
    let l = terms[1..].iter().fold(terms[0].clone(), |acc, term| acc.add(term).unwrap());
    pop_watch();
    out.extend(grad(&l, &leaves, None).unwrap().into_iter().map(Option::unwrap));
    out
}

/// `outputs_and_grads` on the GPU against the CPU.
#[track_caller]
fn gpu_matches_cpu(what: &str, inputs: &[&Tensor], seed: u64, f: impl Fn(&[Tensor]) -> Vec<Tensor>) {
    let (g, c) = (outputs_and_grads(Device::Gpu, inputs, seed, &f), outputs_and_grads(Device::Cpu, inputs, seed, &f));
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        close(&format!("{what}: output/gradient {i}"), a, b);
    }
}

#[test]
fn round_trip_keeps_data_and_views() {
    if !gpu_or_skip() {
        return;
    }
    let x = t(&[3, 5], 1);
    let g = gpu(&x);
    assert_eq!(g.device(), Device::Gpu);
    assert_eq!(g.to_device(Device::Cpu).unwrap().to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    // A transposed view and a row slice come back as the CPU's views do.
    let gt = g.transpose(0, 1).unwrap();
    close("transpose", &gt.contiguous().unwrap(), &x.transpose(0, 1).unwrap().contiguous().unwrap());
    close("slice", &g.slice(0, 1, 3, 1).unwrap().contiguous().unwrap(), &x.slice(0, 1, 3, 1).unwrap().contiguous().unwrap());
    let empty = Tensor::zeros(&[0, 4], fluxrs_core::DType::F32);
    assert_eq!(gpu(&empty).to_device(Device::Cpu).unwrap().shape(), &[0, 4]);
}

#[test]
fn unary_ops_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let x = t(&[4, 33], 2);
    let pos = x.abs().unwrap().add_scalar(0.1).unwrap();
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Abs,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Softplus,
        UnaryOp::LeakyRelu(0.01),
        UnaryOp::Elu(1.0),
        UnaryOp::Clamp(-0.5, 0.7),
        UnaryOp::Sign,
    ];
    for op in ops {
        close(op.name(), &gpu(&x).unary(op).unwrap(), &x.unary(op).unwrap());
    }
    for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Log1p] {
        close(op.name(), &gpu(&pos).unary(op).unwrap(), &pos.unary(op).unwrap());
    }
    // Strided input (a transposed view) reads through its strides.
    close("tanh of a view", &gpu(&x).transpose(0, 1).unwrap().tanh().unwrap(), &x.transpose(0, 1).unwrap().tanh().unwrap());
}

#[test]
fn binary_ops_broadcast_like_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let a = t(&[2, 3, 4], 3);
    let b = t(&[3, 1], 4);
    let s = Tensor::from_vec(vec![2.0f32], &[]).unwrap();
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum] {
        close(op.name(), &gpu(&a).binary(op, &gpu(&b)).unwrap(), &a.binary(op, &b).unwrap());
    }
    // A one-element CPU operand (a constant of a backward rule) joins a GPU tensor.
    close("pow 2", &gpu(&a).pow(&s).unwrap(), &a.pow(&s).unwrap());
    let pos = a.abs().unwrap().add_scalar(0.5).unwrap();
    close("pow", &gpu(&pos).pow(&gpu(&b)).unwrap(), &pos.pow(&b).unwrap());
    close("gt", &gpu(&a).gt(&gpu(&b)).unwrap(), &a.gt(&b).unwrap());
    close("eq", &gpu(&a).eq(&gpu(&a)).unwrap(), &a.eq(&a).unwrap());
}

#[test]
fn reductions_and_softmax_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let x = t(&[3, 4, 5], 5);
    let g = gpu(&x);
    for axes in [None, Some(vec![0isize]), Some(vec![1]), Some(vec![-1]), Some(vec![0, 2])] {
        let ax = axes.as_deref();
        close("sum", &g.sum_axes(ax, false).unwrap(), &x.sum_axes(ax, false).unwrap());
        close("mean", &g.mean_axes(ax, true).unwrap(), &x.mean_axes(ax, true).unwrap());
        close("max", &g.max_axes(ax, false).unwrap(), &x.max_axes(ax, false).unwrap());
        close("min", &g.min_axes(ax, false).unwrap(), &x.min_axes(ax, false).unwrap());
        close("logsumexp", &g.logsumexp(ax, false).unwrap(), &x.logsumexp(ax, false).unwrap());
    }
    for axis in [0isize, 1, 2] {
        close("softmax", &g.softmax(axis).unwrap(), &x.softmax(axis).unwrap());
        close("logsoftmax", &g.logsoftmax(axis).unwrap(), &x.logsoftmax(axis).unwrap());
    } // lanes with +Inf (shared mass), -Inf (a mask) and both
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    let x = Tensor::from_vec(vec![2.0f32, inf, 1.0, inf, inf, 0.5, 1.0, ninf, 3.0, ninf, inf, 0.0], &[4, 3]).unwrap();
    for axis in [0isize, 1] {
        close("softmax of infinities", &gpu(&x).softmax(axis).unwrap(), &x.softmax(axis).unwrap());
        close("logsoftmax of infinities", &gpu(&x).logsoftmax(axis).unwrap(), &x.logsoftmax(axis).unwrap());
    }
}

#[test]
fn matmul_matches_cpu_for_views_batches_and_ragged_tiles() {
    if !gpu_or_skip() {
        return;
    }
    let a = t(&[37, 19], 6);
    let b = t(&[19, 23], 7);
    close("matmul", &gpu(&a).matmul(&gpu(&b)).unwrap(), &a.matmul(&b).unwrap());
    // Transposed operands multiply through their strides.
    let bt = t(&[23, 19], 8);
    close("a @ b^T", &gpu(&a).matmul(&gpu(&bt).transpose(0, 1).unwrap()).unwrap(), &a.matmul(&bt.transpose(0, 1).unwrap()).unwrap());
    // Batched, with the batch broadcast from a 2-D operand, and vectors.
    let ab = t(&[3, 5, 19], 9);
    close("batched", &gpu(&ab).matmul(&gpu(&b)).unwrap(), &ab.matmul(&b).unwrap());
    let bb = t(&[3, 19, 4], 10);
    close("batch @ batch", &gpu(&ab).matmul(&gpu(&bb)).unwrap(), &ab.matmul(&bb).unwrap());
    let v = t(&[19], 11);
    close("matrix @ vector", &gpu(&a).matmul(&gpu(&v)).unwrap(), &a.matmul(&v).unwrap());
    // An empty inner dimension: zeros, from the kernel itself.
    let (a0, b0) = (t(&[5, 0], 12), t(&[0, 3], 13));
    close("empty inner dimension", &gpu(&a0).matmul(&gpu(&b0)).unwrap(), &a0.matmul(&b0).unwrap());
}

/// The seed model's loss, built from the same ops on either device.
fn mlp_loss(x: &Tensor, y: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Tensor {
    let h = Tensor::dense(x, w1, Some(b1), fluxrs_core::ops::nn::Act::Relu).unwrap();
    let z = Tensor::dense(&h, w2, Some(b2), fluxrs_core::ops::nn::Act::Identity).unwrap();
    // logitcrossentropy: mean(-sum(y .* logsoftmax(z)))
    z.logsoftmax(1).unwrap().mul(y).unwrap().sum_axes(Some(&[1]), false).unwrap().neg().unwrap().mean_axes(None, false).unwrap()
}

#[test]
fn mlp_gradients_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let (x, w1, b1, w2, b2) = (t(&[16, 12], 12), t(&[8, 12], 13), t(&[8], 14), t(&[5, 8], 15), t(&[5], 16));
    let mut y = vec![0f32; 16 * 5];
    for i in 0..16 {
        y[i * 5 + i % 5] = 1.0;
    }
    let y = Tensor::from_vec(y, &[16, 5]).unwrap();
    let run = |dev: Device| -> Vec<Tensor> {
        let ps: Vec<Tensor> = [&w1, &b1, &w2, &b2].iter().map(|p| p.to_device(dev).unwrap()).collect();
        push_watch(&ps);
        let l = mlp_loss(&x.to_device(dev).unwrap(), &y.to_device(dev).unwrap(), &ps[0], &ps[1], &ps[2], &ps[3]);
        pop_watch();
        let mut out = vec![l.clone()];
        out.extend(grad(&l, &ps, None).unwrap().into_iter().map(|g| g.expect("every parameter has a gradient")));
        out
    };
    let (g, c) = (run(Device::Gpu), run(Device::Cpu));
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        close(["loss", "dw1", "db1", "dw2", "db2"][i], a, b);
    }
}

#[test]
fn optimiser_rules_on_the_gpu_match_the_cpu() {
    if !gpu_or_skip() {
        return;
    }
    use fluxrs_core::optim::{
        update, AccumGrad, Adam, AdamW, ClipGrad, ClipNorm, Descent, Lion, Momentum, Nesterov, ParamState, RAdam, RMSProp, Rule, SignDecay, WeightDecay,
    };
    let b = (0.9, 0.999);
    let chains: Vec<Vec<Rule>> = vec![
        // rules with a WGSL kernel, alone and chained
        vec![Rule::Descent(Descent { eta: 0.1 })],
        vec![Rule::Momentum(Momentum { eta: 0.01, rho: 0.9 })],
        vec![Rule::Nesterov(Nesterov { eta: 0.01, rho: 0.9 })],
        vec![Rule::Adam(Adam { eta: 0.01, beta: b, epsilon: 1e-8 })],
        vec![Rule::AdamW(AdamW { eta: 0.01, beta: b, lambd: 0.1, epsilon: 1e-8, couple: true })],
        vec![Rule::AdamW(AdamW { eta: 0.01, beta: b, lambd: 0.1, epsilon: 1e-8, couple: false })],
        vec![Rule::RMSProp(RMSProp { eta: 0.01, rho: 0.9, epsilon: 1e-8, centred: true })],
        vec![Rule::Lion(Lion { eta: 0.01, beta: b })],
        vec![
            Rule::ClipGrad(ClipGrad { delta: 0.5 }),
            Rule::WeightDecay(WeightDecay { lambd: 0.01 }),
            Rule::SignDecay(SignDecay { lambd: 0.01 }),
            Rule::Descent(Descent { eta: 0.1 }),
        ],
        // rules that take the CPU path, with their state on the GPU
        vec![Rule::ClipNorm(ClipNorm { omega: 1.0, p: 2.0, throw: false }), Rule::Adam(Adam { eta: 0.01, beta: b, epsilon: 1e-8 })],
        vec![Rule::AccumGrad(AccumGrad { n: 2 }), Rule::RAdam(RAdam { eta: 0.01, beta: b, epsilon: 1e-8 })],
    ];
    for chain in &chains {
        let x = t(&[4, 3], 17);
        let xg = gpu(&x);
        let (mut sc, mut sg) = (ParamState::init(chain, &x), ParamState::init(chain, &xg));
        assert!(sg.arrays.iter().flatten().all(|a| a.device() == Device::Gpu), "{chain:?}: state left the GPU");
        for k in 0..4 {
            let dx = t(&[4, 3], 18 + k);
            update(chain, std::slice::from_ref(&x), std::slice::from_ref(&dx), &mut [&mut sc]).unwrap();
            update(chain, std::slice::from_ref(&xg), &[gpu(&dx)], &mut [&mut sg]).unwrap();
        }
        close(&format!("{chain:?}"), &xg, &x);
        for (a, c) in sg.arrays.iter().flatten().zip(sc.arrays.iter().flatten()) {
            close(&format!("{chain:?} state"), a, c);
        }
        assert_eq!(sg.scalars, sc.scalars, "{chain:?}");
    }
}

#[test]
fn mixing_devices_and_cpu_only_ops_are_clear_errors() {
    if !gpu_or_skip() {
        return;
    }
    let a = t(&[2, 3], 19);
    let err = gpu(&a).add(&a).unwrap_err();
    assert!(matches!(err, Error::Device { .. }), "{err:?}");
    assert!(err.to_string().contains("different devices"), "{err}");
    // An op with no GPU kernel yet says so instead of computing on the wrong device.
    let err = gpu(&a).to_vec::<f32>().unwrap_err();
    assert!(err.to_string().contains("no GPU kernel"), "{err}");
    let f64t = Tensor::from_vec(vec![1.0f64, 2.0], &[2]).unwrap();
    assert!(matches!(f64t.to_device(Device::Gpu), Err(Error::DType { .. })));
}

#[test]
fn convolutions_and_their_gradients_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    use fluxrs_core::ops::conv::ConvSpec;
    use fluxrs_core::ops::nn::Act;
    // (input, weight, stride, pad, dilation, groups, flip, act)
    type Case = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<(usize, usize)>, Vec<usize>, usize, bool, Act);
    let cases: Vec<Case> = vec![
        (vec![3, 2, 17], vec![4, 2, 5], vec![2], vec![(1, 1)], vec![1], 1, true, Act::Relu),
        (vec![2, 4, 9], vec![6, 2, 3], vec![1], vec![(2, 0)], vec![2], 2, false, Act::Tanh),
        (vec![2, 3, 7, 6], vec![5, 3, 3, 2], vec![2, 1], vec![(1, 1), (0, 1)], vec![1, 1], 1, true, Act::Identity),
        (vec![1, 2, 4, 5, 3], vec![2, 2, 2, 2, 2], vec![1, 2, 1], vec![(0, 0), (1, 0), (0, 1)], vec![1, 1, 1], 1, false, Act::Sigmoid),
    ];
    for (i, (xs, ws, stride, pad, dilation, groups, flip, act)) in cases.into_iter().enumerate() {
        let spec = ConvSpec { stride, pad, dilation, groups, flip };
        let (x, w, b) = (t(&xs, 30 + i as u64), t(&ws, 40 + i as u64), t(&[ws[0]], 50 + i as u64));
        let run = |dev: Device| -> Vec<Tensor> {
            let leaves: Vec<Tensor> = [&x, &w, &b].iter().map(|p| p.to_device(dev).unwrap()).collect();
            push_watch(&leaves);
            let y = leaves[0].conv(&leaves[1], Some(&leaves[2]), &spec, act).unwrap();
            let l = y.mul(&y).unwrap().sum_all().unwrap();
            pop_watch();
            let mut out = vec![y];
            out.extend(grad(&l, &leaves, None).unwrap().into_iter().map(Option::unwrap));
            out
        };
        let (g, c) = (run(Device::Gpu), run(Device::Cpu));
        for (j, (a, b)) in g.iter().zip(&c).enumerate() {
            close(&format!("case {i}: {}", ["y", "dx", "dw", "db"][j]), a, b);
        }
        // conv_transpose (the ConvTranspose layer's forward) with a bias of its own
        let y = c[0].detach();
        let bt = t(&[xs[1]], 60 + i as u64);
        let ct = y.conv_transpose(&w, Some(&bt), &spec, Some(&xs[2..]), act).unwrap();
        let gt = gpu(&y).conv_transpose(&gpu(&w), Some(&gpu(&bt)), &spec, Some(&xs[2..]), act).unwrap();
        close(&format!("case {i}: conv_transpose"), &gt, &ct);
    }
}

#[test]
fn mean_pooling_and_its_gradient_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    use fluxrs_core::ops::pool::PoolSpec;
    let specs = [
        (vec![2, 3, 11], PoolSpec { kernel: vec![3], stride: vec![2], pad: vec![(1, 1)] }),
        (vec![2, 2, 6, 7], PoolSpec::new(&[2, 2])),
        (vec![1, 2, 4, 5, 6], PoolSpec { kernel: vec![2, 3, 2], stride: vec![1, 2, 2], pad: vec![(0, 1), (1, 0), (0, 0)] }),
    ];
    for (i, (xs, spec)) in specs.iter().enumerate() {
        let x = t(xs, 70 + i as u64);
        let run = |dev: Device| -> (Tensor, Tensor) {
            let xd = x.to_device(dev).unwrap();
            push_watch(std::slice::from_ref(&xd));
            let y = xd.meanpool(spec).unwrap();
            let l = y.mul(&y).unwrap().sum_all().unwrap();
            pop_watch();
            let g = grad(&l, &[xd], None).unwrap().remove(0).unwrap();
            (y, g)
        };
        let ((yg, gg), (yc, gc)) = (run(Device::Gpu), run(Device::Cpu));
        close(&format!("meanpool {i}"), &yg, &yc);
        close(&format!("meanpool {i} gradient"), &gg, &gc);
    }
}

#[test]
fn max_pooling_and_its_gradient_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    use fluxrs_core::ops::pool::PoolSpec;
    let specs = [
        (vec![2, 3, 11], PoolSpec { kernel: vec![3], stride: vec![2], pad: vec![(1, 1)] }),
        (vec![2, 2, 6, 7], PoolSpec::new(&[2, 2])),
        (vec![1, 2, 4, 5, 6], PoolSpec { kernel: vec![2, 3, 2], stride: vec![1, 1, 2], pad: vec![(0, 1), (1, 0), (0, 0)] }),
    ];
    for (i, (xs, spec)) in specs.iter().enumerate() {
        // Rounded data, so windows have ties: the gradient must go to the first maximum, as on the CPU.
        let x = t(xs, 80 + i as u64).scale(2.0).unwrap().unary(UnaryOp::Clamp(-1.0, 1.0)).unwrap();
        gpu_matches_cpu(&format!("maxpool {i}"), &[&x], 90, |v| vec![v[0].maxpool(spec).unwrap()]);
    }
}

#[test]
fn index_select_and_its_gradient_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    // Repeats and skipped rows, on the first, a middle and the last axis.
    let cases: [(Vec<usize>, isize, Vec<usize>); 3] =
        [(vec![5, 3], 0, vec![4, 0, 4, 2, 4]), (vec![2, 6, 3], 1, vec![1, 1, 5, 0]), (vec![3, 4], -1, vec![3, 2, 1, 0, 0, 3, 3])];
    for (i, (xs, axis, idx)) in cases.iter().enumerate() {
        let x = t(xs, 100 + i as u64);
        gpu_matches_cpu(&format!("index_select {i}"), &[&x], 110, |v| vec![v[0].index_select(*axis, idx).unwrap()]);
    }
}

#[test]
fn concat_and_stack_and_their_gradients_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let (a, b, c) = (t(&[2, 3, 4], 120), t(&[2, 1, 4], 121), t(&[2, 5, 4], 122));
    gpu_matches_cpu("concat/stack", &[&a, &b, &c], 123, |xs| {
        let y = Tensor::concat(xs, 1).unwrap();
        // stack of views (non-contiguous parts), as the recurrent layers build their output
        let s = Tensor::stack(&[xs[0].select(1, 2).unwrap(), xs[2].select(1, 0).unwrap()], 0).unwrap();
        vec![y, s]
    });
}

#[test]
fn fused_dense_and_its_gradient_match_cpu() {
    if !gpu_or_skip() {
        return;
    }
    use fluxrs_core::ops::nn::Act;
    // 33 x 20 outputs: not a multiple of the 16x16 tiles; the weight is used transposed (a
    // view). No input features at all: the epilogue alone (bias and activation of zeros).
    for n_in in [7, 0] {
        let (x, w, b) = (t(&[33, n_in], 130), t(&[20, n_in], 131), t(&[20], 132));
        for act in [Act::Identity, Act::Relu, Act::Sigmoid, Act::Tanh] {
            gpu_matches_cpu(&format!("dense {n_in} inputs, {act:?}"), &[&x, &w, &b], 133, |v| vec![Tensor::dense(&v[0], &v[1], Some(&v[2]), act).unwrap()]);
            gpu_matches_cpu(&format!("dense {n_in} inputs, {act:?}, no bias"), &[&x, &w], 133, |v| vec![Tensor::dense(&v[0], &v[1], None, act).unwrap()]);
        }
    }
}
