"""Taking gradients: the explicit style (`gradient(f, model)`, Flux 0.14) and the implicit
style (`gradient(lambda: ..., params(model))`, Flux 0.13) side by side.

Recording happens in the Rust core, per thread: while `f` runs, ops that touch the
arguments' tensors record how they were computed; the backward pass then runs in one call.

>>> import fluxrs as fx
>>> fx.gradient(lambda x: 3 * x ** 2, 2.0)
(12.0,)
>>> W = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> ps = fx.params(W)
>>> gs = fx.gradient(lambda: (W * W).sum(), ps)
>>> gs[W].tolist()
[[2.0, 4.0], [6.0, 8.0]]
"""

from __future__ import annotations

import numbers
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from fluxrs import _core, functor
from fluxrs._core import Tensor
from fluxrs.functor import _ATOMS, Layer, Plan, children, is_node, leaves, mirror, plan


class Params:
    """An ordered, identity-keyed collection of parameter tensors (references, not copies).

    >>> import fluxrs as fx
    >>> W = fx.ones((2, 2))
    >>> ps = fx.Params([W, W])
    >>> len(ps), W in ps
    (1, True)
    >>> fx.params(fx.Dense(3, 4))
    Params([(4, 3), (4,)])  # 16 parameters
    """

    def __init__(self, xs: Iterable[Tensor] = ()):
        self._order: list[Tensor] = []
        self._ids: set[int] = set()
        for x in xs:
            self.push(x)

    def push(self, x: Tensor) -> "Params":
        if not isinstance(x, Tensor):
            raise TypeError(f"Params holds tensors, got {type(x).__name__}")
        if id(x) not in self._ids:
            self._ids.add(id(x))
            self._order.append(x)
        return self

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: int) -> Tensor:
        return self._order[i]

    def __contains__(self, x: object) -> bool:
        return id(x) in self._ids

    def __repr__(self) -> str:
        # shapes, not values: a model's parameters are too many numbers to read
        n = sum(p.size for p in self._order)
        return "Params([" + ", ".join(repr(tuple(p.shape)) for p in self._order) + f"])  # {n:_} parameters"


class Grads:
    """Gradients from the implicit style, indexed by the parameter tensor itself.

    ``gs[W]`` is W's gradient, or None when the loss does not depend on W.
    """

    def __init__(self, params: Params, grads: list[Tensor | None]):
        self.params = params
        self._by_id = {id(p): g for p, g in zip(params, grads)}

    def __getitem__(self, p: Tensor) -> Tensor | None:
        try:
            return self._by_id[id(p)]
        except KeyError:
            shape = getattr(p, "shape", None)
            raise KeyError(f"no gradient was taken for this object (shape {shape}): it is not in the Params "
                           "given to gradient()") from None

    def __contains__(self, p: object) -> bool:
        return id(p) in self._by_id

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def keys(self) -> list[Tensor]:
        return list(self.params)

    def values(self) -> list[Tensor | None]:
        return [self._by_id[id(p)] for p in self.params]

    def items(self) -> list[tuple[Tensor, Tensor | None]]:
        return [(p, self._by_id[id(p)]) for p in self.params]

    def __repr__(self) -> str:
        return f"Grads(<{len(self)} params>)"


def params(*xs: Any) -> Params:
    """The trainable parameter tensors of models, layers, containers or tensors.

    Unpacks lists, tuples, dicts and layers; ignores numbers, strings and functions;
    skips non-trainable state (a BatchNorm's running statistics).

    >>> import fluxrs as fx
    >>> len(fx.params(fx.Chain(fx.Dense(2, 3), fx.softmax)))
    2
    >>> len(fx.params(1, [2.0, 2.0], {"alpha": fx.ones(3), "gamma": abs}))
    2
    """
    ps = Params()
    visiting: set[int] = set()  # containers being walked: a list holding itself is walked once

    def walk(x):
        if isinstance(x, Tensor):
            ps.push(x)
        elif isinstance(x, np.ndarray) and x.dtype.kind in "fiu":
            ps.push(_core.Tensor(x))
        elif isinstance(x, (list, tuple)) and x and all(isinstance(v, numbers.Real) for v in x):
            ps.push(_core.Tensor(np.asarray(x, dtype=np.float32)))  # a Julia array of numbers
        elif isinstance(x, (list, tuple, dict)):  # an array of arrays: unpacked, as Flux does; a
            if id(x) in visiting:                 # dict (a NamedTuple): its values, plain lists too
                return
            visiting.add(id(x))
            for v in (x.values() if isinstance(x, dict) else x):
                walk(v)
            visiting.discard(id(x))
        elif isinstance(x, _ATOMS):
            return
        else:
            for p in leaves(x, trainable_only=True):
                ps.push(p)

    for x in xs:
        walk(x)
    return ps


def trainables(x: Any) -> list[Tensor]:
    """The trainable tensors of a model, as a list: those `fx.params` gives, in the same order,
    each once (Optimisers.jl's ``trainables``).

    >>> import fluxrs as fx
    >>> [tuple(p.shape) for p in fx.trainables(fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3)))]
    [(3, 2), (3,), (3,), (3,)]
    """
    return list(params(x))


class no_grad:
    """Context manager (and decorator) that turns recording off on this thread.

    Differentiating inside it raises, as PyTorch's ``backward`` does: nothing would be
    recorded, so every gradient would be None and nothing would train.

    >>> import fluxrs as fx
    >>> x = fx.ones(2)
    >>> with fx.no_grad():
    ...     y = x * 3                       # a constant: no gradient flows through y
    >>> fx.gradient(lambda x: (x * y).sum(), x)[0].tolist()
    [3.0, 3.0]
    >>> fx.gradient(lambda x: (x * x).sum() + fx.no_grad()(lambda: (x * x).sum())(), x)[0].tolist()
    [2.0, 2.0]
    """

    def __enter__(self):
        self._g = _core.NoGrad().__enter__()
        return self

    def __exit__(self, *exc):
        self._g.__exit__()
        return False

    def __call__(self, f):
        def wrapped(*a, **k):
            with no_grad():
                return f(*a, **k)
        wrapped.__wrapped__ = f
        return wrapped


def in_gradient() -> bool:
    """Whether code is running inside `gradient` on this thread (layers such as Dropout
    use this to switch to training behaviour automatically, as Flux does)."""
    return _core.watch_depth() > 0


def _as_root(y: Any, who: str) -> Tensor | None:
    """The scalar tensor to differentiate, or None for a constant."""
    if isinstance(y, Tensor):
        if y.size != 1:
            raise ValueError(f"{who}: the function must return a scalar (the loss), got a tensor of shape "
                             f"{tuple(y.shape)}; reduce it first, e.g. with .sum() or .mean()")
        return y
    if isinstance(y, numbers.Real):
        return None
    raise TypeError(f"{who}: the function must return a scalar (the loss), got {type(y).__name__}")


def check_recording(who: str) -> None:
    """Refuse to differentiate inside `no_grad`, where every gradient would silently be None."""
    if not _core.is_recording():
        raise RuntimeError(f"{who}: called inside fx.no_grad(), where no operation is recorded, so every gradient "
                           f"would be None and nothing would train (PyTorch raises here too: 'element 0 of tensors "
                           f"does not require grad'); call {who} outside the no_grad block")


def _check_f(f: Any, who: str) -> None:
    check_recording(who)
    if not callable(f):
        raise TypeError(f"{who}(f, args...): f must be a function (the loss), got {type(f).__name__}; "
                        f"write {who}(lambda m: loss(m, x, y), model)")


def _value(y: Any) -> Any:
    if isinstance(y, Tensor):
        return y if _core.watch_depth() > 0 else float(y)
    return y


def _prepare(a: Any) -> Any:
    """Numbers and arrays passed straight to `gradient` become tensor leaves, and so do float
    arrays inside list, tuple and dict arguments (as JAX and Zygote differentiate them);
    integer arrays there stay as they are (labels, indices)."""
    if isinstance(a, bool):
        return a
    if isinstance(a, numbers.Real):
        return _core.Tensor(np.asarray(float(a)), dtype="float64")
    if isinstance(a, np.ndarray) and a.dtype.kind in "fiu":
        return _as_leaf(a)
    if isinstance(a, (list, tuple, dict)):
        return _prepare_nested(a)
    return a


def _as_leaf(a: np.ndarray) -> Tensor:
    return _core.Tensor(a, dtype="float64" if a.dtype == np.float64 else "float32")


def _prepare_nested(a: Any) -> Any:
    """`a` with its float numpy arrays as tensors: the same object when it holds none."""
    if type(a) is np.ndarray:
        return _as_leaf(a) if a.dtype.kind == "f" else a
    if isinstance(a, dict):
        new = {k: _prepare_nested(v) for k, v in a.items()}
        return a if all(new[k] is v for k, v in a.items()) else new
    if isinstance(a, (list, tuple)):
        vals = [_prepare_nested(v) for v in a]
        if all(n is v for n, v in zip(vals, a)):
            return a
        if isinstance(a, list):
            return vals
        return type(a)(*vals) if hasattr(a, "_fields") else type(a)(vals)
    return a


def _all_leaves(args: tuple) -> list[Tensor]:
    out, seen = [], set()
    for a in args:
        for t in plan(a).leaves:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _run(f: Callable, args: tuple, watched: list[Tensor]):
    _core.push_watch(watched)
    try:
        return f(*args)
    finally:
        _core.pop_watch()


def _watch_list(prepared: tuple) -> tuple[list[Tensor], Plan | None]:
    """The tensors to differentiate with respect to, and for one argument (a model: the usual
    call) its plan, whose `build` makes the gradient's tree from them in one pass."""
    if len(prepared) == 1:
        p = plan(prepared[0])
        return list(p.leaves), p
    return _all_leaves(prepared), None


# The gradient tree this thread built last, with the flat list it was built from, so that
# `update_` can take the gradients from the list instead of walking the tree.
_last = threading.local()


def flat_gradient(tree: Any) -> tuple[Plan, list[Tensor | None]] | None:
    """``(plan, gradients)`` when `tree` is the gradient tree `gradient` built last on this
    thread and nothing has been edited since (`tree` mirrors ``plan``, with ``gradients[i]``
    for ``plan.leaves[i]``); None otherwise."""
    got = getattr(_last, "built", None)
    if got is None or got[0] is not tree or got[3] != functor._generation or got[1].checks:
        return None  # a plan with checks has lists or dicts, which can change unseen
    return got[1], got[2]


def _explicit_result(orig: tuple, prepared: tuple, watched: list[Tensor], gs: list[Tensor | None],
                     one: Plan | None) -> tuple:
    if one is not None and not isinstance(orig[0], numbers.Real):
        generation = functor._generation
        tree = one.build(gs)
        _last.built = (tree, one, gs, generation)
        return (tree,)
    gmap = {id(t): g for t, g in zip(watched, gs)}
    nested = _core.watch_depth() > 0
    out = []
    for o, p in zip(orig, prepared):
        if isinstance(o, numbers.Real) and not isinstance(o, bool) and isinstance(p, Tensor):
            g = gmap.get(id(p))
            out.append(None if g is None else (g if nested else float(g)))
        else:
            out.append(mirror(p, lambda t: gmap.get(id(t))))
    return tuple(out)


def withgradient(f: Callable, *args: Any):
    """Like `gradient`, but also returns the value of ``f``: ``(val, grads)``.

    >>> import fluxrs as fx
    >>> r = fx.withgradient(lambda x: x ** 3, 2.0)
    >>> r.val, r.grad
    (8.0, (12.0,))
    """
    _check_f(f, "withgradient")
    y, grads = _differentiate(f, args, "withgradient")
    return ValGrad(_value(y), grads)


def _differentiate(f: Callable, args: tuple, who: str) -> tuple[Any, Any]:
    """``(f(*args), gradients)`` for `gradient`, `withgradient`: the value as `f` returned it."""
    if len(args) == 1 and isinstance(args[0], Params):
        ps = args[0]
        y = _run(f, (), list(ps))
        root = _as_root(y, who)
        gs = _core.grad(root, list(ps)) if root is not None else [None] * len(ps)
        return y, Grads(ps, gs)
    # gradient(loss, model), the usual call, has nothing to prepare
    prepared = args if len(args) == 1 and isinstance(args[0], Layer) else tuple(_prepare(a) for a in args)
    watched, one = _watch_list(prepared)
    y = _run(f, prepared, watched)
    root = _as_root(y, who)
    gs = _core.grad(root, watched) if root is not None and watched else [None] * len(watched)
    return y, _explicit_result(args, prepared, watched, gs, one)


class ValGrad(tuple):
    """``(val, grad)`` with `.val` and `.grad` attributes, as Zygote's withgradient returns."""

    def __new__(cls, val, grad):
        return super().__new__(cls, (val, grad))

    @property
    def val(self):
        return self[0]

    @property
    def grad(self):
        return self[1]


def gradient(f: Callable, *args: Any):
    """Gradient of the scalar ``f(*args)`` with respect to each argument.

    Explicit style: returns a tuple with one entry per argument, each mirroring that
    argument's structure (a model gives a tree of `Struct`s with a tensor per parameter and
    None where nothing is differentiable). Implicit style: ``gradient(lambda: loss, ps)``
    with ``ps = params(model)`` returns `Grads`, indexed by parameter.

    >>> import fluxrs as fx
    >>> m = fx.Dense(3, 2)
    >>> g = fx.gradient(lambda m: m(fx.ones(3)).sum(), m)[0]
    >>> tuple(g.weight.shape), g.bias.tolist()
    ((2, 3), [1.0, 1.0])
    """
    _check_f(f, "gradient")
    return _differentiate(f, args, "gradient")[1]


def pullback(f: Callable, *args: Any):
    """``(val, back)``: the value of ``f(*args)`` and a function mapping the output's
    gradient (``1.0`` for a loss) to the inputs' gradients.

    >>> import fluxrs as fx
    >>> W = fx.ones((2,))
    >>> ps = fx.params(W)
    >>> l, back = fx.pullback(lambda: (W * 3).sum(), ps)
    >>> l, back(1.0)[W].tolist()
    (6.0, [3.0, 3.0])
    """
    _check_f(f, "pullback")
    implicit = len(args) == 1 and isinstance(args[0], Params)
    prepared = args if implicit else tuple(_prepare(a) for a in args)
    watched, one = (list(args[0]), None) if implicit else _watch_list(prepared)
    y = _run(f, () if implicit else prepared, watched)

    def back(dy=1.0):
        if not isinstance(y, Tensor):
            gs = [None] * len(watched)
        else:
            gs = _core.grad(y, watched, _seed(dy, y)) if watched else []
        if implicit:
            return Grads(args[0], gs)
        return _explicit_result(args, prepared, watched, gs, one)

    # a scalar value as a number (as gradient's), any other output as the tensor it is
    return (_value(y) if not isinstance(y, Tensor) or y.size == 1 else y), back


def _seed(dy: Any, y: Tensor) -> Tensor:
    """The output gradient given to pullback's `back`, as a tensor of y's shape and dtype."""
    shape = tuple(y.shape)
    if isinstance(dy, Tensor):
        if tuple(dy.shape) != shape:
            raise ValueError(f"pullback: the output gradient dy must have the output's shape {shape}, got "
                             f"{tuple(dy.shape)}")
        return dy if dy.dtype == y.dtype else dy.astype(y.dtype.name)
    a = np.asarray(dy)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"pullback: the output gradient dy must be a number or an array of numbers, got "
                        f"{type(dy).__name__} of dtype {a.dtype}")
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"pullback: the output gradient dy must have the output's shape {shape} (or broadcast "
                         f"to it), got {a.shape}") from None
    return _core.Tensor(np.array(a, order="C"), dtype=y.dtype.name)  # a copy, C-ordered, 0-d kept


__all__ = ["Params", "Grads", "params", "trainables", "gradient", "withgradient", "pullback", "no_grad", "in_gradient",
           "ValGrad", "children", "is_node"]
