//! Optimiser rules (small pure functions, as Optimisers.jl) and the fused update that
//! applies a chain of rules to every parameter of a model in one call.

mod rules;

pub use rules::*;

use rayon::prelude::*;

use crate::backend::{self, Backend};
use crate::error::{Error, Result};
use crate::storage::Elem;
use crate::tensor::Tensor;
use crate::vmath::simd;
use crate::with_dtype;

/// One parameter's optimiser state: per rule of the chain, its state arrays and scalars.
pub struct ParamState {
    pub arrays: Vec<Vec<Tensor>>,
    pub scalars: Vec<Vec<f64>>,
}

impl ParamState {
    /// Fresh state for `chain` on a parameter shaped like `x`.
    pub fn init(chain: &[Rule], x: &Tensor) -> ParamState {
        let mut arrays = Vec::with_capacity(chain.len());
        let mut scalars = Vec::with_capacity(chain.len());
        for r in chain {
            let init = r.init();
            // On the parameter's device, so a GPU model's update never leaves the GPU.
            let dev = x.device();
            arrays.push(
                init.arrays
                    .into_iter()
                    .map(|(_, v)| {
                        let t = Tensor::full(x.shape(), v, x.dtype());
                        t.to_device(dev).unwrap_or(t)
                    })
                    .collect(),
            );
            scalars.push(init.scalars.into_iter().map(|(_, v)| v).collect());
        }
        ParamState { arrays, scalars }
    }
}

/// The step after a forward pass: the gradients of `root` w.r.t. `xs`, then
/// `xs[i] -= chain(grad_i)`. Returns None when it updated; when some parameter got no
/// gradient it updates nothing and returns the gradients (None for that one), for a caller
/// that skips such parameters as Optimisers.jl does.
pub fn grad_update(root: &Tensor, chain: &[Rule], xs: &[Tensor], states: &mut [&mut ParamState]) -> Result<Option<Vec<Option<Tensor>>>> {
    let gs = crate::backprop::grad(root, xs, None)?;
    if gs.iter().any(Option::is_none) {
        return Ok(Some(gs));
    }
    let dxs: Vec<Tensor> = gs.into_iter().flatten().collect();
    update(chain, xs, &dxs, states)?;
    Ok(None)
}

/// Parameters above this many elements in total are updated in parallel.
const PAR_ELEMS: usize = 1 << 16;

/// Update each `xs[i] -= chain(dxs[i])` in place, advancing `states[i]`. All parameters are
/// checked before any is touched, so a bad argument leaves the model as it was.
pub fn update(chain: &[Rule], xs: &[Tensor], dxs: &[Tensor], states: &mut [&mut ParamState]) -> Result<()> {
    if xs.len() != dxs.len() || xs.len() != states.len() {
        return Err(Error::Value { op: "update", msg: format!("{} parameters, {} gradients and {} states", xs.len(), dxs.len(), states.len()) });
    }
    for (i, ((x, dx), st)) in xs.iter().zip(dxs).zip(states.iter()).enumerate() {
        if x.shape() != dx.shape() {
            return Err(Error::Shape { op: "update", msg: format!("parameter #{i} has shape {:?} but its gradient has shape {:?}", x.shape(), dx.shape()) });
        }
        if x.dtype() != dx.dtype() {
            return Err(Error::DType { op: "update", msg: format!("parameter #{i} is {} but its gradient is {}", x.dtype(), dx.dtype()) });
        }
        if !x.is_contiguous() {
            return Err(Error::Value { op: "update", msg: format!("parameter #{i} is a non-contiguous view; optimise the tensor it views") });
        }
        if st.arrays.len() != chain.len() || st.scalars.len() != chain.len() {
            return Err(Error::Value { op: "update", msg: format!("state of parameter #{i} was made for a different rule") });
        }
        for (r, arrs) in chain.iter().zip(&st.arrays) {
            if arrs.len() != r.init().arrays.len() || arrs.iter().any(|a| a.shape() != x.shape() || a.dtype() != x.dtype() || !a.is_contiguous()) {
                return Err(Error::Value { op: "update", msg: format!("state of parameter #{i} does not fit its shape {:?} or rule", x.shape()) });
            }
        }
    }
    if let Some(b) = xs.iter().chain(dxs).find_map(backend::of) {
        return update_on(b, chain, xs, dxs, states);
    }
    let total: usize = xs.iter().map(|x| x.numel()).sum();
    let work = |((x, dx), st): ((&Tensor, &Tensor), &mut &mut ParamState)| -> Result<()> { with_dtype!(x.dtype(), T => update_one::<T>(chain, x, dx, st)) };
    if total >= PAR_ELEMS && xs.len() > 1 {
        xs.par_iter().zip(dxs.par_iter()).zip(states.par_iter_mut()).map(work).collect::<Result<Vec<()>>>()?;
    } else {
        xs.iter().zip(dxs.iter()).zip(states.iter_mut()).map(work).collect::<Result<Vec<()>>>()?;
    }
    Ok(())
}

/// The update of a model with tensors on backend `b`'s device: there where it runs every
/// rule of the chain, else on CPU copies of parameters, gradients and state, written back
/// after.
fn update_on(b: &dyn Backend, chain: &[Rule], xs: &[Tensor], dxs: &[Tensor], states: &mut [&mut ParamState]) -> Result<()> {
    use crate::Device;
    let there = |t: &Tensor| backend::of(t).is_some();
    if b.optim_supports(chain) && xs.iter().all(there) && states.iter().all(|s| s.arrays.iter().flatten().all(there)) {
        for ((x, dx), st) in xs.iter().zip(dxs).zip(states.iter_mut()) {
            b.optim_update(chain, x, dx, st)?;
        }
        return Ok(());
    }
    let down = |t: &Tensor| t.to_device(Device::Cpu);
    let cx = xs.iter().map(down).collect::<Result<Vec<_>>>()?;
    let cdx = dxs.iter().map(down).collect::<Result<Vec<_>>>()?;
    let mut cst = states
        .iter()
        .map(|s| Ok(ParamState { arrays: s.arrays.iter().map(|a| a.iter().map(down).collect()).collect::<Result<_>>()?, scalars: s.scalars.clone() }))
        .collect::<Result<Vec<_>>>()?;
    update(chain, &cx, &cdx, &mut cst.iter_mut().collect::<Vec<_>>())?;
    for (x, c) in xs.iter().zip(&cx) {
        if there(x) {
            x.assign(c)?;
        }
    }
    for (s, c) in states.iter_mut().zip(cst) {
        for (a, ca) in s.arrays.iter().flatten().zip(c.arrays.iter().flatten()) {
            if there(a) {
                a.assign(ca)?;
            }
        }
        s.scalars = c.scalars;
    }
    Ok(())
}

/// Elements per chunk of an update: the chunk's step stays in L1 (no parameter-sized step
/// buffer to allocate, fault in and stream through again), and the chunks of a large
/// parameter spread over rayon's threads.
const CHUNK: usize = 4096;

/// A parameter this large has its chunks updated in parallel.
const PAR_CHUNKED: usize = 1 << 17;

/// One chunk of a parameter's update: its values, their gradient, and each rule's state arrays.
type Chunk<'a, T> = (&'a mut [T], &'a [T], Vec<Vec<&'a mut [T]>>);

fn update_one<T: Elem>(chain: &[Rule], x: &Tensor, dx: &Tensor, st: &mut ParamState) -> Result<()> {
    if let [Rule::Descent(Descent { eta })] = chain {
        if dx.is_contiguous() && !dx.same_storage(x) {
            // Plain gradient descent in one pass, without the chunks' step copies
            // (the same arithmetic: x - dx * eta).
            let e = T::from_f64(*eta);
            let mut xguard = x.0.storage.write();
            let (off, n) = (x.layout().offset, x.numel());
            let xs: &mut [T] = &mut T::slice_mut(&mut xguard)[off..off + n];
            return dx.with_slice::<T, _>(|d| {
                simd(
                    #[inline(always)]
                    || xs.iter_mut().zip(d).for_each(|(x, &d)| *x -= d * e),
                )
            });
        }
    }
    // A gradient that is not a plain slice of its own (a strided view, or the storage of x or
    // of its state) is copied first: those are locked for writing below.
    let aliased = dx.same_storage(x) || st.arrays.iter().flatten().any(|a| dx.same_storage(a));
    let owned: Option<Vec<T>> = if dx.is_contiguous() && !aliased { None } else { Some(dx.to_vec::<T>()?) };
    let dguard = owned.is_none().then(|| dx.0.storage.read_recursive());
    let d: &[T] = match &dguard {
        Some(g) => &T::slice(g)[dx.layout().offset..dx.layout().offset + dx.numel()],
        None => owned.as_deref().expect("copied when not read in place"),
    };
    // Lock the state arrays for writing; they are private to this parameter.
    let offsets: Vec<Vec<usize>> = st.arrays.iter().map(|arrs| arrs.iter().map(|a| a.layout().offset).collect()).collect();
    let mut guards: Vec<Vec<_>> = st.arrays.iter().map(|arrs| arrs.iter().map(|a| a.0.storage.write()).collect()).collect();
    let mut xguard = x.0.storage.write();
    let off = x.layout().offset;
    let n = x.numel();
    let xs: &mut [T] = &mut T::slice_mut(&mut xguard)[off..off + n];
    let views: Vec<Vec<&mut [T]>> =
        guards.iter_mut().zip(&offsets).map(|(gs, offs)| gs.iter_mut().zip(offs).map(|(g, &o)| &mut T::slice_mut(g)[o..o + n]).collect()).collect();
    // A rule that needs the whole gradient (ClipNorm's norm) makes the chain take one chunk.
    // Every other rule is elementwise, and its scalars (Adam's beta powers, AccumGrad's
    // counter) advance the same way whatever the chunk: each chunk starts from the scalars
    // as they were, and the parameter keeps the advanced ones.
    let whole = chain.iter().any(Rule::whole);
    let chunk = if whole { n.max(1) } else { CHUNK };
    let mut items = Vec::with_capacity(n.div_ceil(chunk).max(1));
    let mut state_chunks: Vec<Vec<_>> = views.into_iter().map(|vs| vs.into_iter().map(|v| v.chunks_mut(chunk)).collect()).collect();
    for (xc, dc) in xs.chunks_mut(chunk).zip(d.chunks(chunk)) {
        let sts: Vec<Vec<&mut [T]>> = state_chunks.iter_mut().map(|its| its.iter_mut().map(|it| it.next().expect("same length")).collect()).collect();
        items.push((xc, dc, sts));
    }
    if items.is_empty() {
        // No elements: the rules still count the step (their scalars advance).
        items.push((&mut [][..], &[][..], st.arrays.iter().map(|a| a.iter().map(|_| &mut [][..]).collect()).collect()));
    }
    let scalars = st.scalars.clone();
    let step = |buf: &mut Vec<T>, (xc, dc, mut sts): Chunk<'_, T>| -> Result<Vec<Vec<f64>>> {
        let mut sc = scalars.clone();
        if let [Rule::Adam(adam)] = chain {
            // the usual chain, in one pass without the step buffer (rules/adam.rs)
            simd(
                #[inline(always)]
                || adam.update_x(xc, dc, &mut sts[0], &mut sc[0]),
            );
            return Ok(sc);
        }
        buf.clear();
        buf.extend_from_slice(dc);
        // Under `simd` (and `apply` inlined into it) the rule's loops get AVX2/AVX-512.
        simd(
            #[inline(always)]
            || {
                for ((rule, views), s) in chain.iter().zip(sts.iter_mut()).zip(sc.iter_mut()) {
                    if rule.apply::<T>(xc, buf, views, s)? == Step::Hold {
                        return Ok(());
                    }
                }
                xc.iter_mut().zip(buf.iter()).for_each(|(x, s)| *x -= *s);
                Ok(())
            },
        )?;
        Ok(sc)
    };
    let advanced = if n >= PAR_CHUNKED {
        items.into_par_iter().map_init(|| Vec::with_capacity(chunk), step).collect::<Result<Vec<_>>>()?.swap_remove(0)
    } else {
        let mut buf = Vec::with_capacity(chunk);
        items.into_iter().map(|it| step(&mut buf, it)).collect::<Result<Vec<_>>>()?.swap_remove(0)
    };
    st.scalars = advanced;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(chain: &[Rule], x: &Tensor, g: &[f64], st: &mut ParamState) {
        let dx = Tensor::from_vec(g.to_vec(), x.shape()).unwrap();
        update(chain, std::slice::from_ref(x), &[dx], &mut [st]).unwrap();
    }

    #[test]
    fn accumgrad_chain_matches_optimisers_jl_docstring() {
        // Optimisers.jl's AccumGrad example: x = [1], y = [2]; gradients (33, 0) then (0, 444).
        let chain = [Rule::AccumGrad(AccumGrad { n: 2 }), Rule::WeightDecay(WeightDecay { lambd: 0.01 }), Rule::Descent(Descent { eta: 0.1 })];
        let x = Tensor::from_vec(vec![1.0f64], &[1]).unwrap();
        let y = Tensor::from_vec(vec![2.0f64], &[1]).unwrap();
        let (mut sx, mut sy) = (ParamState::init(&chain, &x), ParamState::init(&chain, &y));
        step(&chain, &x, &[33.0], &mut sx);
        step(&chain, &y, &[0.0], &mut sy);
        assert_eq!((x.item().unwrap(), y.item().unwrap()), (1.0, 2.0), "model unchanged while accumulating");
        step(&chain, &x, &[0.0], &mut sx);
        step(&chain, &y, &[444.0], &mut sy);
        assert!((x.item().unwrap() - -0.651).abs() < 1e-9, "{}", x.item().unwrap());
        assert!((y.item().unwrap() - -20.202).abs() < 1e-9, "{}", y.item().unwrap());
    }

    #[test]
    fn adam_first_step_is_eta_times_sign() {
        // After one step Adam's bias-corrected update is eta * g / (|g| + eps') ~ eta * sign(g).
        let chain = [Rule::Adam(Adam { eta: 0.1, beta: (0.9, 0.999), epsilon: 1e-8 })];
        let x = Tensor::from_vec(vec![1.0f64, 1.0], &[2]).unwrap();
        let mut st = ParamState::init(&chain, &x);
        step(&chain, &x, &[2.0, -3.0], &mut st);
        let v = x.to_vec::<f64>().unwrap();
        assert!((v[0] - 0.9).abs() < 1e-6 && (v[1] - 1.1).abs() < 1e-6, "{v:?}");
        assert!((st.scalars[0][0] - 0.81).abs() < 1e-12);
    }

    #[test]
    fn adam_alone_in_one_pass_equals_adam_in_the_general_chain_loop() {
        // [Adam] takes its one-pass path; [WeightDecay(0), Adam] the general loop with the
        // step buffer, and adds exactly 0 to each gradient: the numbers must be the same bits.
        let adam = Rule::Adam(Adam { eta: 0.01, beta: (0.9, 0.999), epsilon: 1e-8 });
        let (one, general) = ([adam], [Rule::WeightDecay(WeightDecay { lambd: 0.0 }), adam]);
        for n in [5usize, CHUNK + 3, PAR_CHUNKED + 17] {
            let init: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let (xa, xb) = (Tensor::from_vec(init.clone(), &[n]).unwrap(), Tensor::from_vec(init, &[n]).unwrap());
            let (mut sa, mut sb) = (ParamState::init(&one, &xa), ParamState::init(&general, &xb));
            for t in 0..4 {
                let g: Vec<f32> = (0..n).map(|i| ((i * 104729 + t * 31) % 997) as f32 / 400.0 - 1.2).collect();
                let dx = Tensor::from_vec(g, &[n]).unwrap();
                update(&one, std::slice::from_ref(&xa), std::slice::from_ref(&dx), &mut [&mut sa]).unwrap();
                update(&general, std::slice::from_ref(&xb), &[dx], &mut [&mut sb]).unwrap();
            }
            let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&xa), bits(&xb), "parameters, n = {n}");
            for (a, b) in sa.arrays[0].iter().zip(&sb.arrays[1]) {
                assert_eq!(bits(a), bits(b), "moments, n = {n}");
            }
            assert_eq!(sa.scalars[0], sb.scalars[1]);
        }
    }

    #[test]
    fn clipnorm_errors_on_nonfinite_and_leaves_model() {
        let chain = [Rule::ClipNorm(ClipNorm { omega: 1.0, p: 2.0, throw: true }), Rule::Descent(Descent { eta: 1.0 })];
        let x = Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
        let mut st = ParamState::init(&chain, &x);
        let dx = Tensor::from_vec(vec![f32::NAN], &[1]).unwrap();
        assert!(update(&chain, std::slice::from_ref(&x), &[dx], &mut [&mut st]).is_err());
        assert_eq!(x.item().unwrap(), 1.0);
    }

    #[test]
    fn chunked_update_equals_the_elements_updated_alone() {
        // A parameter large enough to be split into chunks (and chunks run in parallel) must
        // end exactly where its elements end when each is a parameter of its own: rules are
        // elementwise and each chunk starts from the same scalars. ClipNorm (a whole-gradient
        // norm) keeps one chunk; it is in the chain to check that path too.
        let n = PAR_CHUNKED + CHUNK + 7;
        let probes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, n / 2, n - 1];
        let ab = (0.9, 0.999);
        let chains: Vec<Vec<Rule>> = vec![
            vec![Rule::Adam(Adam { eta: 0.01, beta: ab, epsilon: 1e-8 })],
            vec![Rule::AccumGrad(AccumGrad { n: 2 }), Rule::WeightDecay(WeightDecay { lambd: 0.1 }), Rule::Momentum(Momentum { eta: 0.1, rho: 0.9 })],
            vec![Rule::ClipGrad(ClipGrad { delta: 0.5 }), Rule::RAdam(RAdam { eta: 0.01, beta: ab, epsilon: 1e-8 })],
            vec![Rule::AdamW(AdamW { eta: 0.01, beta: ab, lambd: 0.1, epsilon: 1e-8, couple: true })],
            vec![Rule::OAdam(OAdam { eta: 0.01, beta: ab, epsilon: 1e-8 })],
            vec![Rule::ClipNorm(ClipNorm { omega: 1.0, p: 2.0, throw: true }), Rule::Descent(Descent { eta: 0.1 })],
        ];
        let grad = |step: usize, i: usize| ((i * 7919 + step * 104729) % 1000) as f32 / 250.0 - 2.0;
        for chain in chains {
            let x = Tensor::from_vec((0..n).map(|i| (i % 13) as f32 * 0.1).collect::<Vec<_>>(), &[n]).unwrap();
            let mut st = ParamState::init(&chain, &x);
            let alone: Vec<Tensor> = probes.iter().map(|&i| Tensor::from_vec(vec![(i % 13) as f32 * 0.1], &[1]).unwrap()).collect();
            let mut st_alone: Vec<ParamState> = alone.iter().map(|t| ParamState::init(&chain, t)).collect();
            for step in 0..4 {
                let dx = Tensor::from_vec((0..n).map(|i| grad(step, i)).collect::<Vec<_>>(), &[n]).unwrap();
                update(&chain, std::slice::from_ref(&x), std::slice::from_ref(&dx), &mut [&mut st]).unwrap();
                let norm = dx.to_vec::<f32>().unwrap().iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
                for ((t, s), &i) in alone.iter().zip(st_alone.iter_mut()).zip(&probes) {
                    let mut g = grad(step, i);
                    if matches!(chain[0], Rule::ClipNorm { .. }) {
                        // alone, the element is its own whole gradient: give it the big one's scale
                        g = (g as f64 * (1.0f64 / norm).min(1.0)) as f32;
                    }
                    let chain_alone: Vec<Rule> = chain.iter().filter(|r| !matches!(r, Rule::ClipNorm { .. })).cloned().collect();
                    let mut s2 = if chain_alone.len() == chain.len() { None } else { Some(ParamState::init(&chain_alone, t)) };
                    let dxi = Tensor::from_vec(vec![g], &[1]).unwrap();
                    match s2.as_mut() {
                        Some(s2) => update(&chain_alone, std::slice::from_ref(t), &[dxi], &mut [s2]).unwrap(),
                        None => update(&chain, std::slice::from_ref(t), &[dxi], &mut [s]).unwrap(),
                    }
                }
            }
            let big = x.to_vec::<f32>().unwrap();
            for (t, &i) in alone.iter().zip(&probes) {
                let v = t.item().unwrap() as f32;
                if matches!(chain[0], Rule::ClipNorm { .. }) {
                    assert!((big[i] - v).abs() <= 1e-6 * (1.0 + v.abs()), "{chain:?} element {i}: {} vs {v}", big[i]);
                } else {
                    assert_eq!(big[i].to_bits(), v.to_bits(), "{chain:?} element {i}: {} vs {v}", big[i]);
                }
            }
            assert_eq!(st.scalars, st_alone[0].scalars, "{chain:?}: scalars advance once per step");
        }
    }

    #[test]
    fn mismatched_gradient_is_an_error_not_a_panic() {
        let chain = [Rule::Descent(Descent { eta: 0.1 })];
        let x = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let mut st = ParamState::init(&chain, &x);
        let dx = Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
        assert!(matches!(update(&chain, std::slice::from_ref(&x), &[dx], &mut [&mut st]), Err(Error::Shape { .. })));
    }
}

#[cfg(test)]
mod nan_tests {
    use super::*;

    fn run(chain: &[Rule], g: &[f64]) -> Vec<f64> {
        let x = Tensor::from_vec(vec![0.0f64; g.len()], &[g.len()]).unwrap();
        let mut st = ParamState::init(chain, &x);
        let dx = Tensor::from_vec(g.to_vec(), &[g.len()]).unwrap();
        update(chain, std::slice::from_ref(&x), &[dx], &mut [&mut st]).unwrap();
        x.to_vec::<f64>().unwrap()
    }

    #[test]
    fn nan_gradients_stay_visible_as_in_optimisers_jl() {
        let v = run(&[Rule::ClipGrad(ClipGrad { delta: 1.0 }), Rule::Descent(Descent { eta: 1.0 })], &[1.0, f64::NAN]);
        assert!(v[0] == -1.0 && v[1].is_nan(), "ClipGrad {v:?}");
        let v = run(&[Rule::ClipNorm(ClipNorm { omega: 1.0, p: 2.0, throw: false }), Rule::Descent(Descent { eta: 1.0 })], &[3.0, f64::NAN]);
        assert!(v.iter().all(|x| x.is_nan()), "ClipNorm {v:?}");
        let v = run(&[Rule::Lion(Lion { eta: 0.1, beta: (0.9, 0.999) })], &[1.0, f64::NAN]);
        assert!(v[0] == -0.1 && v[1].is_nan(), "Lion {v:?}");
    }
}
