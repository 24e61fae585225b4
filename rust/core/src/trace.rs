//! A recorded training step, run again without the code that recorded it.
//!
//! `train_(..., compile=True)` runs the loss in Python once, as usual, and keeps the graph
//! that call recorded: which op fed which, from the parameters, the data inputs and
//! constants. Later steps with data of the same shapes and dtypes replay those ops in order
//! (`BackwardOp::replay`), which records the same graph again, then take the gradient and
//! update as the eager step does: the same kernels in the same order, so the same numbers,
//! from one call instead of one per op and layer, with nothing held across it.
//!
//! As with `jax.jit`, this is right for a loss that is a fixed composition of tensor ops.
//! A tensor the loss builds some other way on each call (a dropout mask drawn in Python, a
//! target computed in numpy) would be frozen at its first value, so `build` refuses every
//! tensor of more than one element that appeared during the recorded call without coming
//! from an op, a detached copy of a value of the graph, and graph recorded before the call
//! (a recurrent state carried over without detaching). Scalars made during the call (a
//! Python number in `x * 0.5`) are kept as constants, and so would be a scalar detached from
//! a computation outside the graph; the Python side also refuses a loss that reads tensor
//! values while it records (`float(loss)`, `np.asarray(x)`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::backprop::{topo_order, BackwardOp, WatchGuard};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::optim::{self, ParamState, Rule};
use crate::tensor::{Tensor, TensorId};

/// Where an op's input comes from.
enum Src {
    Param(usize),
    Input(usize),
    Const(Tensor),
    Op(usize),
}

struct Step {
    op: Arc<dyn BackwardOp>,
    srcs: Vec<Src>,
    /// The recorded output's shape and dtype, as a one-element broadcast view (what
    /// `replay` reads from it), so the trace does not keep the recorded graph alive.
    out: Tensor,
}

pub struct Trace {
    steps: Vec<Step>,
    inputs: Vec<(Vec<usize>, DType)>,
    params: Vec<(Vec<usize>, DType)>,
}

fn signature(ts: &[Tensor]) -> Vec<(Vec<usize>, DType)> {
    ts.iter().map(|t| (t.shape().to_vec(), t.dtype())).collect()
}

/// `signature(ts) == sig` without building the signature (checked on every replayed step).
fn fits(ts: &[Tensor], sig: &[(Vec<usize>, DType)]) -> bool {
    ts.len() == sig.len() && ts.iter().zip(sig).all(|(t, (shape, dtype))| t.shape() == &shape[..] && t.dtype() == *dtype)
}

/// What a compiled step did.
pub enum Outcome {
    /// The parameters were updated; the loss.
    Updated(f64),
    /// The loss was not finite: nothing was updated.
    NotFinite(f64),
    /// Some parameter got no gradient: nothing was updated; the gradients for the caller.
    Ungraded(f64, Vec<Option<Tensor>>),
}

fn compile_err<T>(msg: String) -> Result<T> {
    Err(Error::Value { op: "compile", msg })
}

/// Whether leaf `c` shares its storage with a value the graph computes or with an input
/// (`y.detach()`), other than through a view of `c` itself (a broadcast constant).
fn detached_from_graph(c: &Tensor, order: &[Tensor], inputs: &[Tensor]) -> bool {
    let view_of_c = |g: &Tensor| g.node().is_some_and(|n| n.inputs.iter().any(|u| u.id() == c.id()));
    order.iter().any(|g| g.same_storage(c) && !view_of_c(g)) || inputs.iter().any(|g| g.same_storage(c))
}

impl Trace {
    /// The trace of the graph behind `root`, recorded from `params` (watched) and `inputs`
    /// (the step's data); tensors made at or after `mark` count as made during the call.
    pub fn build(root: &Tensor, params: &[Tensor], inputs: &[Tensor], mark: TensorId) -> Result<Trace> {
        let (order, _) = topo_order(root, &Default::default());
        if order.last().map(|t| t.id()) != Some(root.id()) {
            return compile_err("the loss is not computed by recorded ops from the parameters".into());
        }
        let find = |ts: &[Tensor], id: TensorId| ts.iter().position(|t| t.id() == id);
        let known: Vec<&Tensor> = params.iter().chain(inputs).collect();
        if known.iter().enumerate().any(|(i, t)| known[..i].iter().any(|u| u.id() == t.id())) {
            return compile_err("the same tensor is passed twice among the data and the parameters".into());
        }
        let mut index: HashMap<TensorId, usize> = HashMap::with_capacity(order.len());
        let mut steps = Vec::with_capacity(order.len());
        for t in &order {
            let node = t.node().expect("ordered tensors have nodes");
            if t.id() < mark {
                return compile_err(format!(
                    "the loss uses a tensor of shape {:?} recorded before this step (a state carried over from an \
                     earlier step without detaching?); a compiled step would recompute it",
                    t.shape()
                ));
            }
            if !node.op.replays() {
                return compile_err(format!("the loss uses {}, which a compiled step cannot run", node.op.name()));
            }
            let mut srcs = Vec::with_capacity(node.inputs.len());
            for i in &node.inputs {
                let id = i.id();
                srcs.push(if let Some(k) = find(params, id) {
                    Src::Param(k)
                } else if let Some(k) = find(inputs, id) {
                    Src::Input(k)
                } else if let Some(&j) = index.get(&id) {
                    Src::Op(j)
                } else if id >= mark && i.numel() > 1 {
                    return compile_err(format!(
                        "the loss makes a tensor of shape {:?} on each call other than from the data and the parameters \
                         (a random mask, or values computed in numpy?); a compiled step would freeze it at its first value",
                        i.shape()
                    ));
                } else if id >= mark && detached_from_graph(i, &order, inputs) {
                    return compile_err("the loss uses a detached value of its own graph; a compiled step would freeze it".into());
                } else {
                    Src::Const(i.detach())
                });
            }
            let out = crate::backprop::no_grad(|| Tensor::full(&[], 0.0, t.dtype()).broadcast_to(t.shape()))?;
            index.insert(t.id(), steps.len());
            steps.push(Step { op: node.op.clone(), srcs, out });
        }
        Ok(Trace { steps, inputs: signature(inputs), params: signature(params) })
    }

    /// Whether `inputs` have the shapes and dtypes the trace was recorded with.
    pub fn matches(&self, inputs: &[Tensor]) -> bool {
        fits(inputs, &self.inputs)
    }

    /// The recorded forward pass on new `inputs`, recording its graph from `params`.
    pub fn forward(&self, params: &[Tensor], inputs: &[Tensor]) -> Result<Tensor> {
        self.check_params(params)?;
        if !self.matches(inputs) {
            return compile_err(format!("recorded for inputs {:?}, called with {:?}", self.inputs, signature(inputs)));
        }
        self.replay(params, inputs)
    }

    fn check_params(&self, params: &[Tensor]) -> Result<()> {
        if !fits(params, &self.params) {
            return compile_err(format!("recorded for parameters {:?}, called with {:?}", self.params, signature(params)));
        }
        Ok(())
    }

    /// `forward` once the parameters and inputs are known to fit.
    fn replay(&self, params: &[Tensor], inputs: &[Tensor]) -> Result<Tensor> {
        let _watching = WatchGuard::new(params);
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.steps.len());
        for s in &self.steps {
            let args: Vec<Tensor> = s
                .srcs
                .iter()
                .map(|src| match src {
                    Src::Param(k) => params[*k].clone(),
                    Src::Input(k) => inputs[*k].clone(),
                    Src::Const(t) => t.clone(),
                    Src::Op(j) => outs[*j].clone(),
                })
                .collect();
            let o = s.op.replay(&args, &s.out)?;
            if o.shape() != s.out.shape() {
                return compile_err(format!("internal: {} replayed to shape {:?}, recorded {:?}", s.op.name(), o.shape(), s.out.shape()));
            }
            outs.push(o);
        }
        Ok(outs.pop().expect("a trace has at least one step"))
    }

    /// One training step: the forward pass, and when its loss is finite the gradients and
    /// `params[i] -= chain(grad_i)`, as `train_`'s eager step does it.
    pub fn step(&self, params: &[Tensor], inputs: &[Tensor], chain: &[Rule], states: &mut [&mut ParamState]) -> Result<Outcome> {
        let root = self.forward(params, inputs)?;
        self.finish(&root, params, chain, states)
    }

    fn finish(&self, root: &Tensor, params: &[Tensor], chain: &[Rule], states: &mut [&mut ParamState]) -> Result<Outcome> {
        let loss = root.item()?;
        if !loss.is_finite() {
            return Ok(Outcome::NotFinite(loss));
        }
        Ok(match optim::grad_update(root, chain, params, states)? {
            None => Outcome::Updated(loss),
            Some(gs) => Outcome::Ungraded(loss, gs),
        })
    }

    /// `step` on each batch in turn, for as long as they match the trace and update: the
    /// losses of the steps that updated, and the outcome of the step that stopped the run if
    /// it did not update (a non-finite loss, a parameter without gradient). A batch of other
    /// shapes stops the run before it, with no outcome. One call for many steps is what lets
    /// threads training side by side run without waiting on each other between steps.
    pub fn steps(&self, params: &[Tensor], batches: &[Vec<Tensor>], chain: &[Rule], states: &mut [&mut ParamState]) -> Result<(Vec<f64>, Option<Outcome>)> {
        self.check_params(params)?;
        let mut losses = Vec::with_capacity(batches.len());
        for inputs in batches {
            if !self.matches(inputs) {
                break;
            }
            let root = self.replay(params, inputs)?;
            match self.finish(&root, params, chain, states)? {
                Outcome::Updated(v) => losses.push(v),
                stopped => return Ok((losses, Some(stopped))),
            }
        }
        Ok((losses, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backprop::{grad, pop_watch, push_watch};
    use crate::ops::nn::Act;
    use crate::optim::{Adam, Descent};

    fn t(n: usize, shape: &[usize], seed: u64) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| ((i as u64 * 2654435761 + seed * 40503) % 1000) as f32 / 500.0 - 1.0).collect();
        Tensor::from_vec(v, shape).unwrap()
    }

    /// The seed model's loss, mse(softmax(dense(dense(x, σ))), y), recorded eagerly.
    fn loss(ps: &[Tensor], x: &Tensor, y: &Tensor) -> Tensor {
        let h = Tensor::dense(x, &ps[0], Some(&ps[1]), Act::Sigmoid).unwrap();
        let o = Tensor::dense(&h, &ps[2], Some(&ps[3]), Act::Identity).unwrap().softmax(-1).unwrap();
        // a Python-number constant and a reduction, as composed losses have them
        o.sub(y).unwrap().mul(&Tensor::full(&[], 0.5, o.dtype())).unwrap().sum_axes(Some(&[1]), true).unwrap().mean_axes(None, false).unwrap()
    }

    fn params() -> Vec<Tensor> {
        vec![t(6 * 4, &[4, 6], 1), t(4, &[4], 2), t(3 * 4, &[3, 4], 3), t(3, &[3], 4)]
    }

    #[test]
    fn replayed_steps_equal_eager_steps_bit_for_bit() {
        let chain = [Rule::Adam(Adam { eta: 0.01, beta: (0.9, 0.999), epsilon: 1e-8 })];
        let (pe, pc) = (params(), params());
        let mut se: Vec<ParamState> = pe.iter().map(|p| ParamState::init(&chain, p)).collect();
        let mut sc: Vec<ParamState> = pc.iter().map(|p| ParamState::init(&chain, p)).collect();
        let data: Vec<(Tensor, Tensor)> = (0..4).map(|k| (t(5 * 6, &[5, 6], 10 + k), t(5 * 3, &[5, 3], 20 + k))).collect();
        let mut trace: Option<Trace> = None;
        for (x, y) in &data {
            // eager: record, differentiate, update
            push_watch(&pe);
            let l = loss(&pe, x, y);
            pop_watch();
            let gs: Vec<Tensor> = grad(&l, &pe, None).unwrap().into_iter().flatten().collect();
            optim::update(&chain, &pe, &gs, &mut se.iter_mut().collect::<Vec<_>>()).unwrap();
            // compiled: the first step is recorded (and updated eagerly), the rest replayed
            let lc = match &trace {
                None => {
                    let mark = TensorId::mark();
                    push_watch(&pc);
                    let l = loss(&pc, x, y);
                    pop_watch();
                    trace = Some(Trace::build(&l, &pc, &[x.clone(), y.clone()], mark).unwrap());
                    let gs: Vec<Tensor> = grad(&l, &pc, None).unwrap().into_iter().flatten().collect();
                    optim::update(&chain, &pc, &gs, &mut sc.iter_mut().collect::<Vec<_>>()).unwrap();
                    l.item().unwrap()
                }
                Some(tr) => match tr.step(&pc, &[x.clone(), y.clone()], &chain, &mut sc.iter_mut().collect::<Vec<_>>()).unwrap() {
                    Outcome::Updated(v) => v,
                    _ => panic!("expected an update"),
                },
            };
            assert_eq!(lc.to_bits(), l.item().unwrap().to_bits());
            for (a, b) in pe.iter().zip(&pc) {
                assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
            }
        }
        let tr = trace.unwrap();
        assert!(!tr.matches(&[t(4 * 6, &[4, 6], 1), data[0].1.clone()]), "another batch size is not this trace");
        assert!(tr.forward(&pc, &[t(4 * 6, &[4, 6], 1), t(4 * 3, &[4, 3], 1)]).is_err());
    }

    #[test]
    fn a_tensor_made_during_the_call_is_refused_and_a_nonfinite_loss_updates_nothing() {
        let ps = params();
        let (x, y) = (t(5 * 6, &[5, 6], 7), t(5 * 3, &[5, 3], 8));
        let mark = TensorId::mark();
        push_watch(&ps);
        let mask = t(5 * 4, &[5, 4], 9); // a "dropout mask" drawn during the call
        let h = Tensor::dense(&x, &ps[0], Some(&ps[1]), Act::Relu).unwrap().mul(&mask).unwrap();
        let l = Tensor::dense(&h, &ps[2], Some(&ps[3]), Act::Identity).unwrap().sq_err(&y, true).unwrap();
        pop_watch();
        let err = Trace::build(&l, &ps, &[x.clone(), y.clone()], mark).err().unwrap();
        assert!(err.to_string().contains("shape [5, 4]"), "{err}");

        // a detached value of the graph (frozen at its first value) and graph recorded
        // before the step (recomputed by a replay) are refused too
        push_watch(&ps);
        let h = Tensor::dense(&x, &ps[0], Some(&ps[1]), Act::Relu).unwrap();
        let s = h.sum_all().unwrap();
        let l = s.div(&s.detach()).unwrap();
        pop_watch();
        let err = Trace::build(&l, &ps, &[x.clone(), y.clone()], mark).err().unwrap();
        assert!(err.to_string().contains("detached"), "{err}");
        let late = TensorId::mark();
        push_watch(&ps);
        let l = h.sum_all().unwrap();
        pop_watch();
        let err = Trace::build(&l, &ps, &[x.clone(), y.clone()], late).err().unwrap();
        assert!(err.to_string().contains("recorded before this step"), "{err}");

        push_watch(&ps);
        let l = loss(&ps, &x, &y);
        pop_watch();
        let tr = Trace::build(&l, &ps, &[x.clone(), y.clone()], mark).unwrap();
        let chain = [Rule::Descent(Descent { eta: 0.1 })];
        let mut st: Vec<ParamState> = ps.iter().map(|p| ParamState::init(&chain, p)).collect();
        let before = ps[0].to_vec::<f32>().unwrap();
        let bad = Tensor::from_vec(vec![f32::NAN; 15], &[5, 3]).unwrap();
        let out = tr.step(&ps, &[x, bad], &chain, &mut st.iter_mut().collect::<Vec<_>>()).unwrap();
        assert!(matches!(out, Outcome::NotFinite(v) if v.is_nan()));
        assert_eq!(ps[0].to_vec::<f32>().unwrap(), before);
    }

    #[test]
    fn steps_run_like_single_steps_until_other_shapes_or_a_step_that_does_not_update() {
        let chain = [Rule::Adam(Adam { eta: 0.01, beta: (0.9, 0.999), epsilon: 1e-8 })];
        let batch = |k: u64, rows: usize| vec![t(rows * 6, &[rows, 6], 10 + k), t(rows * 3, &[rows, 3], 20 + k)];
        let pr = params();
        let mark = TensorId::mark();
        let first = batch(0, 5);
        push_watch(&pr);
        let l = loss(&pr, &first[0], &first[1]);
        pop_watch();
        let tr = Trace::build(&l, &pr, &first, mark).unwrap();

        // four batches, then one of another size: four steps, as `step` makes them one by one
        let data: Vec<Vec<Tensor>> = (0..4).map(|k| batch(k, 5)).chain([batch(9, 4), batch(5, 5)]).collect();
        let (pa, pb) = (params(), params());
        let mut sa: Vec<ParamState> = pa.iter().map(|p| ParamState::init(&chain, p)).collect();
        let mut sb: Vec<ParamState> = pb.iter().map(|p| ParamState::init(&chain, p)).collect();
        let (losses, stop) = tr.steps(&pa, &data, &chain, &mut sa.iter_mut().collect::<Vec<_>>()).unwrap();
        assert!(stop.is_none());
        assert_eq!(losses.len(), 4);
        for (x, v) in data.iter().zip(&losses) {
            match tr.step(&pb, x, &chain, &mut sb.iter_mut().collect::<Vec<_>>()).unwrap() {
                Outcome::Updated(u) => assert_eq!(u.to_bits(), v.to_bits()),
                _ => panic!("expected an update"),
            }
        }
        for (a, b) in pa.iter().zip(&pb) {
            assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        }

        // a non-finite loss in the second batch: one update, then the run stops before the second's
        let nan = vec![batch(1, 5)[0].clone(), Tensor::from_vec(vec![f32::NAN; 15], &[5, 3]).unwrap()];
        let (losses, stop) = tr.steps(&pa, &[batch(0, 5), nan, batch(2, 5)], &chain, &mut sa.iter_mut().collect::<Vec<_>>()).unwrap();
        tr.step(&pb, &batch(0, 5), &chain, &mut sb.iter_mut().collect::<Vec<_>>()).unwrap();
        assert_eq!(losses.len(), 1);
        assert!(matches!(stop, Some(Outcome::NotFinite(v)) if v.is_nan()));
        for (a, b) in pa.iter().zip(&pb) {
            assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        }
        assert!(tr.steps(&pa[..3], &data, &chain, &mut sa.iter_mut().collect::<Vec<_>>()).is_err(), "other parameters");
    }
}
