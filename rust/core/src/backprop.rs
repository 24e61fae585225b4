//! Reverse-mode autodiff, define-by-run.
//!
//! There is no global tape: each recorded op stores a `Node` in its output (op + inputs),
//! so the graph lives exactly as long as the tensors that can reach it, and two threads
//! never share anything. What *is* per thread is the recording context: which tensors are
//! being differentiated ("watched") and whether recording is on at all. An op records
//! only if recording is on and one of its inputs is watched or already has a node, so
//! inference, or a thread reading a model another thread trains, records nothing.
//!
//! Backward rules are written with the same differentiable ops. When `grad` runs inside an
//! outer differentiation (a gradient of a gradient), the backward pass itself is recorded,
//! which is all that higher-order gradients need.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// A differentiable op's backward rule.
pub trait BackwardOp: Send + Sync {
    fn name(&self) -> &'static str;
    /// Gradients w.r.t. each input, given the output and the gradient flowing into it.
    /// `need[i]` is false for inputs that lead to no requested leaf: skip their work.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor, need: &[bool]) -> Result<Vec<Option<Tensor>>>;

    /// First-order fast path: add this op's gradient for input 0 straight into `acc`, the
    /// gradient accumulated so far for that input (exclusively owned, contiguous, zeros if
    /// new). Ops whose input gradient is mostly zeros (slices) opt in with `accumulates` and save a
    /// full-size allocation per call: without it a recurrent layer reading step t of a
    /// tracked sequence costs O(T) per step, O(T^2) per sequence.
    fn accumulate_into(&self, _inputs: &[Tensor], _grad: &Tensor, _acc: &Tensor) -> Result<()> {
        unreachable!("accumulate_into called on an op without accumulates()")
    }
    fn accumulates(&self) -> bool {
        false
    }

    /// The forward op again, on new inputs shaped as the recorded ones (`out`, the output
    /// it gave then, supplies what the op does not store, such as a reshape's target), so
    /// a recorded step runs again without the code that recorded it (`crate::trace`).
    /// Implemented with `replay!`, which also sets `replays`.
    fn replay(&self, _inputs: &[Tensor], _out: &Tensor) -> Result<Tensor> {
        Err(Error::Value { op: "compile", msg: format!("{} cannot be replayed", self.name()) })
    }
    fn replays(&self) -> bool {
        false
    }
}

/// Inside `impl BackwardOp`: `replay` as the forward call `f(op, inputs, recorded_out)`.
macro_rules! replay {
    ($f:expr) => {
        fn replays(&self) -> bool {
            true
        }
        fn replay(&self, inputs: &[Tensor], out: &Tensor) -> Result<Tensor> {
            let f: fn(&Self, &[Tensor], &Tensor) -> Result<Tensor> = $f;
            f(self, inputs, out)
        }
    };
}
pub(crate) use replay;

#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) op: Arc<dyn BackwardOp>,
    pub(crate) inputs: Vec<Tensor>,
}

impl Drop for Node {
    /// Free the graph behind this node iteratively. The default drop recurses once per
    /// node (tensor -> node -> input tensor -> ...), so the graph of a long unrolled loop
    /// overflowed the stack when its last tensor was dropped.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.inputs);
        while let Some(t) = stack.pop() {
            // Only where this was the last handle does the input's own node go with it:
            // move that node's inputs here, so it drops with nothing left to recurse into.
            if let Some(mut inner) = Arc::into_inner(t.0) {
                if let Some(mut node) = inner.node.take() {
                    stack.append(&mut node.inputs);
                }
            }
        }
    }
}

#[derive(Default)]
struct ThreadState {
    /// >0 inside `no_grad` scopes.
    paused: usize,
    /// Watched ids with a count (the same tensor may be watched by nested contexts).
    watched: HashMap<TensorId, usize>,
    /// One frame per `push_watch`, for `pop_watch`: its ids, and whether it opened a
    /// differentiation context (`watch_depth` counts those).
    frames: Vec<(Vec<TensorId>, bool)>,
}

thread_local! {
    static STATE: RefCell<ThreadState> = RefCell::new(ThreadState::default());
}

/// Whether an op on these inputs should record a node on this thread.
pub fn should_record(inputs: &[&Tensor]) -> bool {
    STATE.with(|s| {
        let s = s.borrow();
        if s.paused > 0 {
            return false;
        }
        inputs.iter().any(|t| t.has_node() || (!s.watched.is_empty() && s.watched.contains_key(&t.id())))
    })
}

/// Attach a node to a fresh kernel output when the inputs call for it.
pub(crate) fn record(out: Tensor, op: impl BackwardOp + 'static, inputs: &[&Tensor]) -> Tensor {
    if !should_record(inputs) {
        return out;
    }
    let inner = Arc::try_unwrap(out.0).unwrap_or_else(|arc| crate::tensor::Inner {
        id: arc.id,
        storage: arc.storage.clone(),
        layout: arc.layout.clone(),
        dtype: arc.dtype,
        node: arc.node.clone(),
    });
    let node = Node { op: Arc::new(op), inputs: inputs.iter().map(|t| (*t).clone()).collect() };
    Tensor::from_parts(inner.storage, inner.layout, inner.dtype, Some(node))
}

/// Begin a differentiation context: ops touching these tensors record from now on.
pub fn push_watch(tensors: &[Tensor]) {
    push_frame(tensors, true);
}

/// Ops touching these tensors record from now on, inside the differentiation context that
/// is already open, without opening one (`pop_watch` ends it): a recorded trace watches its
/// data so, and the ops it records see the depth of the gradient that will be taken (a
/// fused recurrence runs only where no second derivative can follow).
pub fn push_record_watch(tensors: &[Tensor]) {
    push_frame(tensors, false);
}

fn push_frame(tensors: &[Tensor], context: bool) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let ids: Vec<TensorId> = tensors.iter().map(|t| t.id()).collect();
        for &id in &ids {
            *s.watched.entry(id).or_insert(0) += 1;
        }
        s.frames.push((ids, context));
    })
}

/// End the innermost `push_watch` or `push_record_watch`.
pub fn pop_watch() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((ids, _)) = s.frames.pop() {
            for id in ids {
                if let Some(c) = s.watched.get_mut(&id) {
                    *c -= 1;
                    if *c == 0 {
                        s.watched.remove(&id);
                    }
                }
            }
        }
    })
}

/// A differentiation context (`push_watch`) until the guard drops, so an error or a panic
/// cannot leave the tensors watched on this thread.
pub struct WatchGuard(());

impl WatchGuard {
    pub fn new(tensors: &[Tensor]) -> WatchGuard {
        push_watch(tensors);
        WatchGuard(())
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        pop_watch();
    }
}

/// How many differentiation contexts are open on this thread.
pub fn watch_depth() -> usize {
    STATE.with(|s| s.borrow().frames.iter().filter(|f| f.1).count())
}

pub fn is_recording() -> bool {
    STATE.with(|s| s.borrow().paused == 0)
}

/// Recording is off until the guard drops.
pub struct NoGradGuard(());

impl NoGradGuard {
    pub fn new() -> NoGradGuard {
        STATE.with(|s| s.borrow_mut().paused += 1);
        NoGradGuard(())
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        STATE.with(|s| s.borrow_mut().paused -= 1);
    }
}

pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

/// Tensors reachable from `root` through nodes, parents after children (post-order),
/// with the set of those that lie on a path to one of `leaves`.
pub(crate) fn topo_order(root: &Tensor, leaves: &HashSet<TensorId>) -> (Vec<Tensor>, HashSet<TensorId>) {
    let mut order = Vec::new();
    let mut visited: HashSet<TensorId> = HashSet::new();
    let mut needs: HashSet<TensorId> = HashSet::new();
    // Iterative DFS: recurrent models build graphs deep enough to overflow a recursive walk.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            let leads = leaves.contains(&t.id()) || t.node().is_some_and(|n| n.inputs.iter().any(|i| needs.contains(&i.id())));
            if leads {
                needs.insert(t.id());
            }
            if t.has_node() {
                order.push(t);
            }
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for i in node.inputs.iter().rev() {
                if !visited.contains(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
        }
    }
    (order, needs)
}

/// Gradients of `root` w.r.t. each of `leaves` (None where `root` does not depend on it).
/// `seed` is the gradient flowing into `root` (ones when None, which needs a scalar root).
/// When called inside an outer differentiation context, the backward pass is itself
/// recorded, so its results can be differentiated again.
pub fn grad(root: &Tensor, leaves: &[Tensor], seed: Option<&Tensor>) -> Result<Vec<Option<Tensor>>> {
    grad_with(root, leaves, seed, None)
}

/// Called by `grad_with` with a leaf's index in `leaves` and its gradient, as soon as that
/// gradient is final. An error stops the backward pass and is returned by `grad_with`.
pub type OnFinal<'a> = &'a mut dyn FnMut(usize, &Tensor) -> Result<()>;

/// `grad`, calling `on_final(i, gradient)` for each leaf `i` that gets a gradient as soon as
/// no later step of the backward pass can change it: right after the last node that feeds
/// it (data-parallel training starts sending a gradient while the rest are computed). Leaves
/// are reported in the order their gradients complete, roughly the reverse of the forward
/// pass; each once, and only those whose result is not None.
pub fn grad_with(root: &Tensor, leaves: &[Tensor], seed: Option<&Tensor>, mut on_final: Option<OnFinal<'_>>) -> Result<Vec<Option<Tensor>>> {
    let seed = match seed {
        Some(s) => {
            if s.shape() != root.shape() {
                return Err(Error::Autodiff(format!("the gradient seed has shape {:?} but the output has shape {:?}", s.shape(), root.shape())));
            }
            s.cast(root.dtype())?
        }
        None => {
            if root.numel() != 1 {
                return Err(Error::Autodiff(format!("gradient needs a function returning a scalar, got a tensor of shape {:?}", root.shape())));
            }
            root.ones_like()
        }
    };
    let leaf_ids: HashSet<TensorId> = leaves.iter().map(|t| t.id()).collect();
    let (order, needs) = topo_order(root, &leaf_ids);

    // For the callback: the step of the backward pass (index into the reversed order) after
    // which each leaf's gradient is final, i.e. the last node reading that leaf.
    let mut final_at: HashMap<usize, Vec<TensorId>> = HashMap::new();
    if on_final.is_some() {
        let mut last: HashMap<TensorId, usize> = HashMap::new();
        for (k, t) in order.iter().rev().enumerate() {
            if !needs.contains(&t.id()) {
                continue;
            }
            for i in &t.node().expect("ordered tensors have nodes").inputs {
                if leaf_ids.contains(&i.id()) {
                    last.insert(i.id(), k);
                }
            }
        }
        for (id, k) in last {
            final_at.entry(k).or_default().push(id);
        }
    }
    let mut positions: HashMap<TensorId, Vec<usize>> = HashMap::new();
    if on_final.is_some() {
        for (i, l) in leaves.iter().enumerate() {
            positions.entry(l.id()).or_default().push(i);
        }
    }
    let mut reported: HashSet<TensorId> = HashSet::new();
    let mut report = |ids: &[TensorId], grads: &HashMap<TensorId, Tensor>, reported: &mut HashSet<TensorId>| -> Result<()> {
        let Some(cb) = on_final.as_mut() else { return Ok(()) };
        for id in ids {
            let Some(g) = grads.get(id) else { continue };
            if reported.insert(*id) {
                for &i in &positions[id] {
                    cb(i, g)?;
                }
            }
        }
        Ok(())
    };

    let create_graph = watch_depth() > 0 && is_recording();
    let _guard = if create_graph { None } else { Some(NoGradGuard::new()) };

    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    for (k, t) in order.iter().rev().enumerate() {
        if needs.contains(&t.id()) {
            backward_step(t, &leaf_ids, &needs, create_graph, &mut grads)?;
        }
        if let Some(ids) = final_at.get(&k) {
            report(ids, &grads, &mut reported)?;
        }
    }
    // Leaves no node reads (the root itself, when it is watched) are final now.
    let rest: Vec<TensorId> = leaves.iter().map(|l| l.id()).filter(|id| !reported.contains(id)).collect();
    report(&rest, &grads, &mut reported)?;
    Ok(leaves.iter().map(|l| grads.get(&l.id()).cloned()).collect())
}

/// One node of the backward pass: push the gradient of `t` back to its inputs.
fn backward_step(t: &Tensor, leaf_ids: &HashSet<TensorId>, needs: &HashSet<TensorId>, create_graph: bool, grads: &mut HashMap<TensorId, Tensor>) -> Result<()> {
    let node = t.node().expect("ordered tensors have nodes");
    let g = if leaf_ids.contains(&t.id()) {
        match grads.get(&t.id()) {
            Some(g) => g.clone(),
            None => return Ok(()),
        }
    } else {
        // Intermediate gradients are freed as soon as they have been pushed back.
        match grads.remove(&t.id()) {
            Some(g) => g,
            None => return Ok(()),
        }
    };
    if !create_graph && node.op.accumulates() && needs.contains(&node.inputs[0].id()) && !node.inputs[0].is_gpu() {
        let input = &node.inputs[0];
        let acc = match grads.remove(&input.id()) {
            Some(a) => a.into_exclusive()?,
            None => Tensor::zeros(input.shape(), input.dtype()),
        };
        node.op.accumulate_into(&node.inputs, &g, &acc)?;
        grads.insert(input.id(), acc);
        return Ok(());
    }
    let need: Vec<bool> = node.inputs.iter().map(|i| needs.contains(&i.id())).collect();
    let input_grads = node.op.backward(&node.inputs, t, &g, &need)?;
    for ((input, ig), &nd) in node.inputs.iter().zip(input_grads).zip(&need) {
        let Some(ig) = ig else { continue };
        if !nd {
            continue;
        }
        if ig.shape() != input.shape() {
            return Err(Error::Autodiff(format!(
                "internal: backward of {} gave a gradient of shape {:?} for an input of shape {:?}",
                node.op.name(),
                ig.shape(),
                input.shape()
            )));
        }
        let acc = match grads.remove(&input.id()) {
            Some(prev) => prev.add(&ig)?,
            None => ig,
        };
        grads.insert(input.id(), acc);
    }
    Ok(())
}
