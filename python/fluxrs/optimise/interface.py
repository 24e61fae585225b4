"""Applying rules to models: `setup`, `update_`, and the implicit style's `update_(opt, ps, gs)`.

Explicit style (Flux 0.14, Optimisers.jl): the optimiser state is a tree mirroring the model,
with a `Leaf` per trainable tensor.

>>> import fluxrs as fx
>>> model = fx.Chain(fx.Dense(2, 3), fx.Dense(3, 1))
>>> opt = fx.setup(fx.Adam(0.01), model)
>>> opt.layers[0].weight
Leaf(Adam(0.01, (0.9, 0.999), 1e-08), <2 arrays (3, 2), β^t (0.9, 0.999)>)
>>> grads = fx.gradient(lambda m: m(fx.ones(2)).sum(), model)
>>> w = model[0].weight.tolist()
>>> _ = fx.update_(opt, model, grads[0])      # mutates model and opt
>>> model[0].weight.tolist() != w
True

Implicit style (Flux 0.13): the state lives inside the rule, keyed by parameter identity.

>>> ps = fx.params(model)
>>> gs = fx.gradient(lambda: model(fx.ones(2)).sum(), ps)
>>> rule = fx.Momentum()
>>> fx.update_(rule, ps, gs)
>>> len(rule._implicit)
4

Every form ends in `apply_all(rule, xs, dxs, states)`: one call per rule that updates all
parameters, for built-in rules a single call into the fused Rust kernel.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Iterable

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs._signals import deferred_interrupts
from fluxrs.autodiff import Grads, Params, flat_gradient, no_grad
from fluxrs import functor
from fluxrs.functor import _ATOMS, Struct, children, mirror
from fluxrs.optimise.rules import Rule

__all__ = ["Leaf", "setup", "update_", "apply_all", "freeze_", "thaw_", "adjust_", "adjust", "StateMismatchError"]


class StateMismatchError(ValueError):
    """The optimiser state (or gradient) tree does not fit the model it is used with."""


class Leaf:
    """The optimiser state of one parameter: its rule and the rule's state (Optimisers.Leaf).

    `frozen` leaves are skipped by `update_` (see `freeze_`)."""

    __slots__ = ("rule", "state", "frozen", "shape", "dtype")

    def __init__(self, rule: Rule, state: Any, shape: tuple[int, ...] = (), dtype: Any = None, frozen: bool = False):
        self.rule, self.state, self.shape, self.dtype, self.frozen = rule, state, tuple(shape), dtype, frozen

    def __repr__(self) -> str:
        s = self.state
        if isinstance(s, _core.OptState):
            arrays = [a for per_rule in s.arrays for a in per_rule]
            scalars = [v for per_rule in s.scalars for v in per_rule]
            if arrays or scalars:
                parts = []
                if arrays:
                    parts.append(f"{len(arrays)} array{'s' if len(arrays) > 1 else ''} {self.shape}")
                if scalars:
                    label = "β^t " if isinstance(self.rule, _adam_like()) else \
                        "counter " if isinstance(self.rule, _counted()) else ""
                    parts.append(label + "(" + ", ".join(f"{v:.6g}" for v in scalars) + ")")
                state = "<" + ", ".join(parts) + ">"
            else:
                state = "()"
        else:
            state = repr(s)
        frozen = ", frozen=True" if self.frozen else ""
        return f"Leaf({self.rule!r}, {state}{frozen})"


def _adam_like():
    from fluxrs.optimise.rules import _AdamLike, AdamW
    return (_AdamLike, AdamW)


def _counted():
    from fluxrs.optimise.rules import AccumGrad
    return (AccumGrad,)


# ---------------------------------------------------------------- setup

def setup(rule: Rule, model: Any) -> Any:
    """The optimiser state for `model`: a tree of the model's shape with a `Leaf(rule, state)`
    per trainable tensor and None elsewhere. A parameter shared by two layers has one Leaf,
    seen from both places.

    >>> import fluxrs as fx
    >>> st = fx.setup(fx.Descent(0.1), fx.Dense(2, 2))
    >>> st.weight, st.act
    (Leaf(Descent(0.1), ()), None)
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"setup(rule, model): the first argument must be an optimisation rule such as "
                        f"fx.Adam(), got {type(rule).__name__}")
    memo: dict[int, Leaf] = {}

    def at_leaf(t: Tensor) -> Leaf | None:
        if t.dtype.kind != "f":  # Optimisers.isnumeric: integer arrays are not trained
            return None
        leaf = memo.get(id(t))
        if leaf is None:
            leaf = memo[id(t)] = Leaf(rule, rule.init(t), tuple(t.shape), t.dtype)
        return leaf

    return mirror(model, at_leaf, trainable_only=True)


# ---------------------------------------------------------------- the one update function

def apply_all(rule: Rule, xs: list[Tensor], dxs: list[Tensor], states: list[Any]) -> list[Any]:
    """``xs[i] -= rule(dxs[i])`` in place for every i, advancing ``states[i]``; returns the
    new states (the same objects for built-in rules, which advance in place).

    Built-in rules go to the fused Rust kernel in one call (all parameters checked before any
    changes, the GIL released); custom rules run their `apply` per parameter.
    """
    if not xs:
        return list(states)
    batched = rule.apply_batch(xs, dxs, states)
    if batched is not None:
        return batched
    chain = rule.chain()
    if chain is not None and all(isinstance(s, _core.OptState) for s in states) \
            and all(x.is_contiguous for x in xs):
        _core.optim_update(chain, xs, dxs, states)
        return list(states)
    for i, (x, dx) in enumerate(zip(xs, dxs)):  # check all before touching any
        if tuple(x.shape) != tuple(dx.shape):
            raise ValueError(f"update: parameter #{i} has shape {tuple(x.shape)} but its gradient has shape "
                             f"{tuple(dx.shape)}")
    new = []
    with no_grad():
        for x, dx, s in zip(xs, dxs, states):
            s, step = rule.apply(s, x, dx)
            if step is not None:  # None: no update this time (AccumGrad accumulating)
                x.assign_(x - step)
            new.append(s)
    return new


def _as_grad(dx: Any, x: Tensor, where: str) -> Tensor:
    if isinstance(dx, Tensor):
        return dx if dx.dtype == x.dtype else dx.astype(x.dtype.name)
    if isinstance(dx, (list, tuple)):
        try:
            a = np.asarray(dx, dtype=x.dtype)
        except (TypeError, ValueError):
            a = None
        if a is not None and a.shape == tuple(x.shape):
            return Tensor(a, dtype=x.dtype.name)
    if isinstance(dx, (Struct, dict, list, tuple)):
        raise StateMismatchError(f"update_: the gradient at {where or 'the root'} is a {type(dx).__name__} but the "
                                 f"model has a parameter of shape {tuple(x.shape)} there; is the gradient for "
                                 "this model?")
    return Tensor(np.asarray(dx), dtype=x.dtype.name)


def _run_groups(triples: list[tuple[Tensor, Tensor, Any]], rule_of, set_state) -> None:
    """Group (x, dx, key) by rule and call `apply_all` once per rule. Ctrl-C is held back
    until every group is done, so that a step is applied whole or not at all."""
    groups: dict[int, tuple[Rule, list]] = {}
    for t in triples:
        r = rule_of(t[2])
        groups.setdefault(id(r), (r, []))[1].append(t)
    if len(groups) == 1:
        # The common case, one built-in rule: one fused Rust call, which a Ctrl-C cannot cut in
        # half (Python runs signal handlers between bytecodes only), so no deferral is needed;
        # swapping the SIGINT handler twice per step cost more than the update itself.
        ((r, items),) = groups.values()
        keys = [t[2] for t in items]
        states = [_state_of(k) for k in keys]
        if type(r).apply_batch is Rule.apply_batch and all(isinstance(s, _core.OptState) for s in states) \
                and all(t[0].is_contiguous for t in items):
            chain = r.chain()
            if chain is not None:
                _core.optim_update(chain, [t[0] for t in items], [t[1] for t in items], states)
                return
    with deferred_interrupts():
        for r, items in groups.values():
            xs = [t[0] for t in items]
            dxs = [t[1] for t in items]
            keys = [t[2] for t in items]
            states = apply_all(r, xs, dxs, [_state_of(k) for k in keys])
            for k, s in zip(keys, states):
                set_state(k, s)


def _state_of(key: Any) -> Any:
    return key.state if isinstance(key, Leaf) else key[1]


# ---------------------------------------------------------------- explicit walk

def _path(path: str, k: Any) -> str:
    """Where we are in the model, as Python would reach it: ``.layers[0].weight``."""
    if isinstance(k, str) and k.isidentifier():
        return f"{path}.{k}"
    return f"{path}[{k!r}]"


def _sub(tree: Any, k: Any, path: str, what: str) -> Any:
    """Child `k` of a state or gradient tree node (Struct, list, tuple, dict); None stays None."""
    if tree is None:
        return None
    if isinstance(tree, (list, tuple)):
        if not isinstance(k, int) or k >= len(tree):
            raise StateMismatchError(f"{what} does not match the model at {path or 'the root'}: it has "
                                     f"{len(tree)} entries where the model has more")
        return tree[k]
    if isinstance(tree, dict):
        if k not in tree:
            raise StateMismatchError(f"{what} does not match the model at {_path(path, k)}: no entry {k!r}")
        return tree[k]
    if isinstance(tree, Struct):
        if str(k) not in vars(tree):
            raise StateMismatchError(f"{what} does not match the model at {_path(path, k)}: the model has a "
                                     f"child {str(k)!r} that the {what} lacks (fields: {list(vars(tree))})")
        return getattr(tree, str(k))
    raise StateMismatchError(f"{what} does not match the model at {path or 'the root'}: found "
                             f"{type(tree).__name__} where the model has a layer or container")


def _size(tree: Any) -> int | None:
    if isinstance(tree, (list, tuple, dict)):
        return len(tree)
    if isinstance(tree, Struct):
        return len(vars(tree))
    return None


def _gather(state: Any, model: Any, grad: Any, everything: bool = False) -> list[tuple[Tensor, Any, Leaf]]:
    """Walk state, model and gradient together; return (x, dx, leaf) per parameter to update.
    Raises StateMismatchError naming the path where the trees disagree. With `everything`,
    every parameter with a Leaf is returned (dx None), frozen or not: `train_`'s plan."""
    out: list[tuple[Tensor, Tensor, Leaf]] = []
    seen: set[int] = set()
    visiting: set[int] = set()

    def walk(s, m, g, path):
        if s is None:
            return  # nothing trainable here
        if isinstance(s, Leaf):
            if not isinstance(m, Tensor):
                raise StateMismatchError(
                    f"optimiser state does not match the model at {path or 'the root'}: the state has a parameter "
                    f"of shape {s.shape} there, the model has {type(m).__name__}. Was it made by fx.setup(rule, "
                    "model) for this model?")
            if tuple(m.shape) != s.shape:
                raise StateMismatchError(
                    f"optimiser state does not match the model at {path or 'the root'}: the state was set up for a "
                    f"parameter of shape {s.shape}, the model's has shape {tuple(m.shape)}. Was it made by "
                    "fx.setup(rule, model) for this model?")
            if id(m) in seen:
                return  # a shared parameter, already collected
            if everything:
                seen.add(id(m))
                out.append((m, None, s))
                return
            if g is None or s.frozen:
                return  # no gradient, or frozen
            seen.add(id(m))
            out.append((m, _as_grad(g, m, path), s))
            return
        if isinstance(m, Tensor) or isinstance(m, _ATOMS):
            raise StateMismatchError(
                f"optimiser state does not match the model at {path or 'the root'}: the state has a "
                f"{type(s).__name__} subtree there, the model has {type(m).__name__}. Was it made by "
                "fx.setup(rule, model) for this model?")
        if isinstance(g, Tensor):
            raise StateMismatchError(f"gradient does not match the model at {path or 'the root'}: a tensor where the "
                                     f"model has a {type(m).__name__}")
        if id(m) in visiting:
            return
        visiting.add(id(m))
        ch = children(m, trainable_only=True)
        n = _size(s)
        if n is not None and n != len(ch):
            raise StateMismatchError(
                f"optimiser state does not match the model at {path or 'the root'}: the state has {n} children, "
                f"the model's {type(m).__name__} has {len(ch)}. Was it made by fx.setup(rule, model) for this model?")
        for k, child in ch.items():
            p = _path(path, k)
            walk(_sub(s, k, path, "optimiser state"), child, _sub(g, k, path, "gradient"), p)
        visiting.discard(id(m))

    walk(state, model, grad, "")
    return out


def _pairs(model: Any, grad: Any) -> list[tuple[Tensor, Tensor]]:
    """(x, dx) for every trainable tensor of `model` with a gradient in `grad` (each once)."""
    out: list[tuple[Tensor, Tensor]] = []
    seen: set[int] = set()
    visiting: set[int] = set()

    def walk(m, g, path):
        if g is None:
            return
        if isinstance(m, Tensor):
            if id(m) not in seen and m.dtype.kind == "f":
                seen.add(id(m))
                out.append((m, _as_grad(g, m, path)))
            return
        if isinstance(m, _ATOMS) or id(m) in visiting:
            return
        if isinstance(g, Tensor):
            raise StateMismatchError(f"gradient does not match the model at {path or 'the root'}: a tensor where the "
                                     f"model has a {type(m).__name__}")
        visiting.add(id(m))
        for k, child in children(m, trainable_only=True).items():
            walk(child, _sub(g, k, path, "gradient"), _path(path, k))
        visiting.discard(id(m))

    walk(model, grad, "")
    return out


def fused_plan(xs: list[Tensor], leaves: list[Leaf]) -> tuple[list, list] | None:
    """``(chain, states)`` when one fused Rust call can update all of `xs`: the usual step,
    where no leaf is frozen and all share one built-in rule. None otherwise."""
    if not leaves:
        return None
    r = leaves[0].rule
    if type(r).apply_batch is not Rule.apply_batch:
        return None
    states = []
    for x, leaf in zip(xs, leaves):
        s = leaf.state
        if leaf.frozen or leaf.rule is not r or type(s) is not _core.OptState or not x.is_contiguous:
            return None
        states.append(s)
    chain = r.chain()
    return None if chain is None else (chain, states)


def update_leaves(xs: list[Tensor], dxs: list[Tensor | None], leaves: list[Leaf]) -> None:
    """Update parameters already matched to their Leafs (``train_``'s fast path, which
    matches them once per epoch instead of walking the trees on every step)."""
    if all(dx is not None for dx in dxs):
        plan = fused_plan(xs, leaves)
        if plan is not None:
            _core.optim_update(plan[0], xs, dxs, plan[1])
            return
    triples = [(x, dx, leaf) for x, dx, leaf in zip(xs, dxs, leaves) if dx is not None and not leaf.frozen]

    def set_state(leaf, s):
        leaf.state = s

    _run_groups(triples, lambda leaf: leaf.rule, set_state)


# ---------------------------------------------------------------- update_

def _implicit_update(rule: Rule, pairs: Iterable[tuple[Tensor, Any]]) -> None:
    """Update with state held in `rule`, keyed by parameter identity (Flux 0.13)."""
    triples = []
    store = rule._implicit
    for x, dx in pairs:
        if dx is None:
            continue
        entry = store.get(id(x))
        if entry is None or entry[0] is not x:
            # keep x itself in the entry: its id cannot be reused while the state lives
            entry = store[id(x)] = (x, rule.init(x))
        triples.append((x, _as_grad(dx, x, ""), entry))

    def set_state(entry, s):
        store[id(entry[0])] = (entry[0], s)

    _run_groups(triples, lambda _: rule, set_state)


def update_(opt: Any, model: Any, grad: Any = None) -> Any:
    """Update parameters in place from their gradients.

    * ``update_(opt_state, model, grads[0])``: explicit style, `opt_state` from `setup`;
      mutates the model's tensors and the state; returns ``(opt_state, model)`` as
      Optimisers.jl does.
    * ``update_(rule, model, grads[0])``: a bare rule (``Descent(0.01)``); a rule with
      momentum keeps it inside itself between calls.
    * ``update_(opt, ps, gs)``: implicit style with `Params` and `Grads`; state in `opt`.
    * ``update_(opt, x, dx)``: one tensor and its gradient.
    * ``update_(opt, gs)``: for a rule bound to its parameters (``Descent(0.1, ps)``).

    >>> import fluxrs as fx
    >>> x = fx.tensor([1.0, 2.0])
    >>> _ = fx.update_(fx.Descent(0.1), x, fx.tensor([10.0, 10.0]))
    >>> x.tolist()
    [0.0, 1.0]
    """
    if isinstance(opt, Rule):
        if grad is None and isinstance(model, Grads):
            ps = opt.params if opt.params is not None else model.params
            return _implicit_update(opt, ((p, model[p] if p in model else None) for p in ps))
        if isinstance(model, Params):
            if grad is None:
                raise TypeError("update_(opt, ps, gs): the gradients gs are missing")
            if isinstance(grad, Grads):
                pairs = ((p, grad[p] if p in grad else None) for p in model)
            elif isinstance(grad, dict):
                pairs = ((p, grad.get(p)) for p in model)
            else:
                raise TypeError(f"update_(opt, ps, gs): gs must be the Grads from gradient(f, ps), got "
                                f"{type(grad).__name__}")
            return _implicit_update(opt, pairs)
        if isinstance(model, Tensor):
            return _implicit_update(opt, [(model, grad)])
        _check_grad_arg(model, grad)
        _implicit_update(opt, _pairs(model, grad))
        return opt, model
    if isinstance(model, Params):
        raise TypeError(f"update_(opt, ps, gs) with Params needs a rule such as fx.Adam() as opt, got "
                        f"{type(opt).__name__}; for a state from fx.setup, pass the model instead of params")
    if not (opt is None or isinstance(opt, (Leaf, Struct, list, tuple, dict))):
        raise TypeError(f"update_(opt_state, model, grad): opt_state must come from fx.setup(rule, model) (or be a "
                        f"rule), got {type(opt).__name__}")
    check_state_not_none(opt, model, "update_(opt_state, model, grad)")
    _check_grad_arg(model, grad)
    if grad is None:
        raise TypeError("update_(opt_state, model, grad): the gradient is missing; pass grads[0] from "
                        "fx.gradient(loss, model)")
    found = _matched(opt, model, grad)
    if found is not None:
        update_leaves(*found)
        return opt, model
    triples = _gather(opt, model, grad)

    def set_state(leaf, s):
        leaf.state = s

    _run_groups(triples, lambda leaf: leaf.rule, set_state)
    return opt, model


class _Matching:
    """The parameters of a model matched to their Leafs in its optimiser state, each with
    the keys that lead to it from the root (the same keys lead to its gradient): `_gather`'s
    walk done once and kept while neither tree changes (see `functor.plan`)."""

    __slots__ = ("opt", "model", "generation", "checks", "items", "full", "unique")

    def __init__(self, opt: Any, model: Any):
        self.opt, self.model = weakref.ref(opt), weakref.ref(model)
        self.generation = functor._generation
        # Snapshots of what the generation does not cover: the state's lists and dicts, and
        # the nodes the model's plans compare (their other condition is the same generation).
        self.checks = list(functor.plan(model, True).checks)
        self.items: list[tuple[Tensor, Leaf, tuple]] = []
        visiting: set[int] = set()

        def walk(st, m, keys):
            if st is None:
                return
            if isinstance(st, Leaf):
                if not isinstance(m, Tensor) or tuple(m.shape) != st.shape:
                    raise StateMismatchError  # _gather says where
                self.items.append((m, st, keys))
                return
            if isinstance(st, (list, dict)):
                self.checks.append(functor.snapshot(st, False))
            if isinstance(m, Tensor) or isinstance(m, _ATOMS) or id(m) in visiting:
                if id(m) in visiting:
                    return
                raise StateMismatchError
            visiting.add(id(m))
            ch = children(m, trainable_only=True)
            n = _size(st)
            if n is not None and n != len(ch):
                raise StateMismatchError
            for k, child in ch.items():
                walk(_sub(st, k, "", "optimiser state"), child, keys + (k,))
            visiting.discard(id(m))

        walk(opt, model, ())
        # where each parameter is among the tensors `gradient` differentiates (`flat_gradient`),
        # each parameter once (a shared one has the same gradient wherever it appears there)
        self.full = functor.plan(model)
        self.checks += self.full.checks
        index = {id(t): i for i, t in enumerate(self.full.leaves)}
        seen: set[int] = set()
        self.unique = [(x, leaf, index[id(x)]) for x, leaf, _ in self.items if not (id(x) in seen or seen.add(id(x)))]

    def valid(self, opt: Any, model: Any) -> bool:
        return self.generation == functor._generation and self.opt() is opt and self.model() is model \
            and functor.unchanged(self.checks)


_matchings: dict[int, _Matching] = {}


def _matched(opt: Any, model: Any, grad: Any) -> tuple[list, list, list] | None:
    """``(xs, dxs, leaves)`` to update, from the kept matching of `opt` to `model`, or None
    where the slow walk must decide (trees that cannot be kept or do not fit, a gradient
    that is not plain tensors where the model has parameters: `_gather` then names the problem)."""
    old = m = _matchings.get(id(opt))
    if m is None or not m.valid(opt, model):
        try:
            m = _Matching(opt, model)
        except (TypeError, StateMismatchError):  # not weakly referable, or a mismatch to report
            return None
        _matchings[id(opt)] = m
        if old is None or old.opt() is not opt:  # one finalizer per state tree
            weakref.finalize(opt, _matchings.pop, id(opt), None)
    flat = flat_gradient(grad)
    if flat is not None and flat[0] is m.full:  # the tree gradient() just built for this model
        gs = flat[1]  # each the gradient of that very tensor: its dtype
        todo = [(x, gs[i], leaf) for x, leaf, i in m.unique if gs[i] is not None and not leaf.frozen]
        return [t[0] for t in todo], [t[1] for t in todo], [t[2] for t in todo]
    xs, dxs, leaves, seen = [], [], [], set()
    for x, leaf, keys in m.items:
        if leaf.frozen or id(x) in seen:
            continue
        g = grad
        try:
            for k in keys:
                g = _sub(g, k, "", "gradient")
        except StateMismatchError:
            return None  # _gather says where
        if g is None:
            continue
        if type(g) is not Tensor or g.dtype != x.dtype:
            return None
        seen.add(id(x))
        xs.append(x)
        dxs.append(g)
        leaves.append(leaf)
    return xs, dxs, leaves



def check_state_not_none(opt: Any, model: Any, who: str) -> None:
    """A None state for a model with trainable parameters would train nothing, silently."""
    if opt is None and functor.plan(model, True).leaves:
        raise TypeError(f"{who}: opt_state is None, so nothing would be trained. Pass the state fx.setup(rule, model) "
                        "returned; fx.adjust_ and fx.freeze_ change it in place and return None, so keep the state "
                        "rather than their result (fx.optimise.adjust returns a new one)")


def _check_grad_arg(model: Any, grad: Any) -> None:
    if isinstance(grad, tuple) and len(grad) == 1 and not isinstance(model, tuple) \
            and not hasattr(grad, "_fields") and not isinstance(model, Tensor):
        raise TypeError("update_: the gradient is the tuple returned by gradient(); pass its first entry, "
                        "grads[0], which mirrors the model")


# ---------------------------------------------------------------- state utilities

def _leaves_of(tree: Any, who: str) -> list[Leaf]:
    """Every Leaf under `tree` (each once), which must be (part of) a `setup` state tree."""
    out, seen = [], set()

    def walk(t, path):
        if isinstance(t, Leaf):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        elif t is None:
            return
        elif isinstance(t, (list, tuple)):
            for i, v in enumerate(t):
                walk(v, _path(path, i))
        elif isinstance(t, dict):
            for k, v in t.items():
                walk(v, _path(path, k))
        elif isinstance(t, Struct):
            for k, v in vars(t).items():
                walk(v, _path(path, k))
        else:
            what = "a tensor" if isinstance(t, Tensor) else f"a {type(t).__name__}"
            raise TypeError(f"{who} must be given the optimiser state from fx.setup(rule, model) (or a part of it, "
                            f"such as opt_state.layers[0]), not the model: found {what} at {path or 'the root'}")

    walk(tree, "")
    return out


def freeze_(tree: Any) -> None:
    """Stop `update_` (and `train_`) changing the parameters under this part of the state
    tree, as Optimisers.freeze! does: ``freeze_(opt_state.layers[0])``, or a single Leaf.
    The state is kept as it is, and a frozen parameter's state does not advance; `thaw_`
    undoes it. A Leaf shared by tied parameters is frozen everywhere it appears.

    >>> import fluxrs as fx
    >>> m = fx.Chain(fx.Dense(2, 2), fx.Dense(2, 1))
    >>> st = fx.setup(fx.Adam(), m)
    >>> fx.freeze_(st.layers[0])
    >>> st.layers[0].bias.frozen, st.layers[1].bias.frozen
    (True, False)
    >>> fx.thaw_(st)
    >>> st.layers[0].bias.frozen
    False
    """
    for leaf in _leaves_of(tree, "freeze_"):
        leaf.frozen = True


def thaw_(tree: Any) -> None:
    """Undo `freeze_` for every parameter under this part of the state tree."""
    for leaf in _leaves_of(tree, "thaw_"):
        leaf.frozen = False


def _adjusted_rules(leaves: list[Leaf], eta: float | None, changes: dict[str, Any], who: str) -> dict[int, Rule]:
    """The new rule for each distinct rule of `leaves` (rules shared by several Leafs stay
    shared). A hyperparameter that no rule has is an error, not silently ignored."""
    from fluxrs.optimise.rules import _has, _for_rule
    if eta is not None:
        changes = {"eta": eta, **changes}
    if not changes:
        raise TypeError(f"{who} must be given something to change: a learning rate or keywords such as beta=...")
    rules = {id(leaf.rule): leaf.rule for leaf in leaves}
    for k in changes:
        if rules and not any(_has(r, k) for r in rules.values()):
            names = ", ".join(sorted({repr(r) for r in rules.values()}))
            what = "a learning rate eta" if k == "eta" else f"a hyperparameter {k!r}"
            raise TypeError(f"{who}: no rule in this optimiser state has {what} (rules: {names})")
    return {i: r.adjust(**_for_rule(r, changes)) for i, r in rules.items()}


def adjust_(tree: Any, eta: float | None = None, **changes: Any) -> Any:
    """Change hyperparameters in place, keeping the state (momenta, step counts): as
    Optimisers.adjust!, ``adjust_(opt_state, 0.001)`` sets the learning rate,
    ``adjust_(opt_state, beta=(0.8, 0.99))`` others; any part of the tree may be given. Rules
    without the hyperparameter are left alone (in a chain, only the rules that have it
    change); a name that no rule of the tree has raises TypeError, and a bad value raises
    ValueError before anything changes.

    Returns `tree` itself (Optimisers.adjust! returns nothing), so that the PyTorch-style
    ``opt = fx.adjust_(opt, 1e-3)`` keeps working instead of leaving ``opt`` None.

    >>> import fluxrs as fx
    >>> st = fx.setup(fx.OptimiserChain(fx.ClipGrad(2.0), fx.Adam()), fx.Dense(2, 1))
    >>> fx.adjust_(st, 0.2) is st
    True
    >>> st.weight.rule
    OptimiserChain(ClipGrad(2.0), Adam(0.2, (0.9, 0.999), 1e-08))
    >>> _ = fx.adjust_(st, delta=2.5, beta=(0.8, 0.99))
    >>> st.weight.rule
    OptimiserChain(ClipGrad(2.5), Adam(0.2, (0.8, 0.99), 1e-08))
    """
    leaves = _leaves_of(tree, "adjust_")
    new = _adjusted_rules(leaves, eta, changes, "adjust_")
    for leaf in leaves:
        leaf.rule = new[id(leaf.rule)]
    return tree


def _copy_state(s: Any) -> Any:
    """An independent copy of one Leaf's state."""
    if isinstance(s, _core.OptState):
        arrays = [[Tensor(a.numpy(), dtype=a.dtype.name) for a in per] for per in s.arrays]
        out = _core.OptState([], arrays[0][0] if arrays and arrays[0] else Tensor(np.zeros(1), dtype="float32"))
        out.arrays = arrays
        out.scalars = [list(per) for per in s.scalars]
        return out
    if isinstance(s, Tensor):
        return Tensor(s.numpy(), dtype=s.dtype.name)
    if isinstance(s, tuple):
        vals = [_copy_state(v) for v in s]
        return type(s)(*vals) if hasattr(s, "_fields") else tuple(vals)
    if isinstance(s, list):
        return [_copy_state(v) for v in s]
    if isinstance(s, dict):
        return {k: _copy_state(v) for k, v in s.items()}
    return copy.deepcopy(s)


def adjust(tree: Any, eta: float | None = None, **changes: Any) -> Any:
    """Like `adjust_`, but returns a new state tree (or a new rule, given a rule) and leaves
    `tree` as it was, as Optimisers.adjust does. The new tree's state is a copy, so updating
    with one does not advance the other; tied parameters stay tied.

    >>> import fluxrs as fx
    >>> st = fx.setup(fx.Momentum(0.1, 0.9), fx.Dense(2, 1))
    >>> st2 = fx.optimise.adjust(st, eta=0.3, rho=0.7)
    >>> st2.weight.rule, st.weight.rule
    (Momentum(0.3, 0.7), Momentum(0.1, 0.9))
    >>> fx.optimise.adjust(fx.Adam(), 0.01)
    Adam(0.01, (0.9, 0.999), 1e-08)
    """
    if isinstance(tree, Rule):
        if eta is not None:
            changes = {"eta": eta, **changes}
        return tree.adjust(**changes)
    leaves = _leaves_of(tree, "adjust")
    new_rules = _adjusted_rules(leaves, eta, changes, "adjust")
    memo: dict[int, Leaf] = {}

    def walk(t):
        if isinstance(t, Leaf):
            if id(t) not in memo:
                memo[id(t)] = Leaf(new_rules[id(t.rule)], _copy_state(t.state), t.shape, t.dtype, t.frozen)
            return memo[id(t)]
        if isinstance(t, tuple):
            vals = [walk(v) for v in t]
            return type(t)(*vals) if hasattr(t, "_fields") else tuple(vals)
        if isinstance(t, list):
            return [walk(v) for v in t]
        if isinstance(t, dict):
            return {k: walk(v) for k, v in t.items()}
        if isinstance(t, Struct):
            return Struct(**{k: walk(v) for k, v in vars(t).items()})
        return t

    return walk(tree)
