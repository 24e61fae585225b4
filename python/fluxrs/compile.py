"""Compiled losses: the ops a loss runs, recorded once and replayed from Rust.

``fx.jit(loss)`` wraps a loss ``loss(model, *data)``. Called inside `gradient` (or `train_`,
`withgradient`, `pullback`, the implicit style), its first call runs the loss in Python and
records its ops; later calls with data of the same shapes, and the same model unchanged,
replay them in one call into the core, with the GIL released, and return the loss with its
graph, so the enclosing gradient differentiates it as usual. Outside a gradient it simply
calls the loss.

>>> import fluxrs as fx, numpy as np
>>> fx.seed_(0)
>>> model = fx.Chain(fx.Dense(3, 4, fx.relu), fx.Dense(4, 1))
>>> loss = fx.jit(lambda m, x, y: fx.mse(m(x), y))
>>> x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
>>> opt = fx.setup(fx.Adam(0.01), model)
>>> for step in range(3):
...     grads = fx.gradient(lambda m: loss(m, x, y), model)
...     _ = fx.update_(opt, model, grads[0])
>>> loss.recorded, loss.replayed
(1, 2)

As with ``jax.jit``, this is right for a loss that is a fixed composition of tensor ops of
its arguments: Python values it reads from elsewhere (a global factor, a counter) are frozen
at their first value, and its Python side effects happen only when it records. Compiling is
therefore asked for, never automatic: no check can see every Python value a loss reads. What
can be seen is refused, with one warning, after which the loss runs eagerly: tensor values
read into Python while recording (``float()``, numpy), tensors made outside the ops (a random
mask), ops without a replay, a model whose forward pass changes tensors (running statistics).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from fluxrs import _core
from fluxrs._checks import warn_caller
from fluxrs._core import Tensor
from fluxrs.functor import _ATOMS, Layer, plan

__all__ = ["jit"]

# A loss recorded this many times (new shapes, an edited model, static arguments that change)
# stops recording: replays would not pay for the recordings.
_MAX_TRACES = 16


def record(val: Any, params: list[Tensor], inputs: list[Tensor], mark: int, read: bool) -> tuple[Any, str | None]:
    """``(trace, None)`` for a loss value just computed from `params` and `inputs` (recorded
    with both watched, tensors made at or after `mark` counting as made by the loss), or
    ``(None, why)`` when its replay could be wrong. `read`: the loss read tensor values into
    Python while it ran."""
    if read:
        return None, ("the loss reads tensor values while it computes (float(), .item(), bool(), .numpy(), "
                      "np.asarray); a compiled step would freeze what it read")
    if not isinstance(val, Tensor):
        return None, f"the loss returned a {type(val).__name__}, not a tensor"
    try:
        return _core.Trace(val, params, inputs, mark), None
    except ValueError as e:
        return None, str(e).removeprefix("compile: ")


_STATIC = (int, float, bool, complex, str, bytes, type(None))


def _key(args: tuple) -> tuple[tuple, list]:
    """What a trace is kept for: the data's shapes and dtypes, the static values, which trees;
    and the trees (models) among the arguments."""
    key, trees = [], []
    for a in args:
        t = type(a)
        if t is Tensor or t is np.ndarray:
            key.append((a.shape, a.dtype))
        elif t in _STATIC:
            key.append((t, a))
        elif isinstance(a, _ATOMS):
            key.append(id(a))
        else:
            key.append(("tree", id(a)))
            trees.append(a)
    return tuple(key), trees


def _unchanged(p: Any, tree: Any) -> bool:
    """Whether `tree` is still what plan `p` walked when it was recorded. A layer keeps its
    plan (`plan` gives the same one back while nothing changed); another tree's plan holds
    the tree and compares its snapshots (`Plan.valid`)."""
    return plan(tree) is p if isinstance(tree, Layer) else p.valid()


def _parameters(trees: list) -> tuple[list, list[Tensor]]:
    """The trees' plans and their tensors (each once): the replay's parameters."""
    plans, params, seen = [], [], set()
    for a in trees:
        p = plan(a)
        if len(plan(a, True).leaves) != len(p.leaves):
            raise _Refused("the model has tensors its forward pass may change (running statistics, e.g. "
                           "BatchNorm), which a replay would not update")
        plans.append(p)
        for t in p.leaves:
            if id(t) not in seen:
                seen.add(id(t))
                params.append(t)
    return plans, params


def _inputs(args: tuple, params: list[Tensor], lend: bool = False) -> list[Tensor]:
    """The data arguments as tensors: numpy float arrays in the parameters' dtype. `lend`:
    arrays are read in place (`host_like`), for a replay, whose tensors no Python code sees."""
    out = []
    for a in args:
        t = type(a)
        if t is Tensor:
            out.append(a)
        elif t is np.ndarray:
            if a.dtype.kind != "f":
                raise _Refused(f"a data argument is a numpy array of {a.dtype}; only float data are compiled")
            out.append(_core.host_like(a, params[0], lend) if params else Tensor(a))
    return out


class _Refused(Exception):
    """A call that cannot be compiled; the message says why."""


class jit:
    """``fx.jit(loss)``: a loss whose ops are recorded on its first call inside a gradient and
    replayed from Rust on later calls (see the module's docstring). Arguments: models (any
    tree of tensors: their tensors are the parameters), data (tensors and float numpy arrays,
    converted to the parameters' dtype: the replay's inputs) and static values (numbers,
    strings, None: a new value records again). `recorded` and `replayed` count the calls.
    """

    def __init__(self, f: Callable):
        if not callable(f):
            raise TypeError(f"fx.jit(f): f must be a function (the loss), got {type(f).__name__}")
        self.f = f
        self.recorded = 0
        self.replayed = 0
        self._traces: dict[tuple, tuple[list, Any]] = {}  # key -> (the trees' plans, trace)
        self._eager: str | None = None  # why this loss runs eagerly from now on
        functools.update_wrapper(self, f)

    def __repr__(self) -> str:
        state = f"eager: {self._eager}" if self._eager else f"recorded {self.recorded}, replayed {self.replayed}"
        return f"jit({getattr(self.f, '__name__', self.f)!r}; {state})"

    def __get__(self, obj: Any, owner: Any = None) -> Any:  # a jitted method binds as a function does
        return self if obj is None else functools.partial(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._eager is not None or _core.watch_depth() == 0:
            return self.f(*args, **kwargs)
        if kwargs:
            return self._give_up("keyword arguments are not compiled; pass them positionally", args, kwargs)
        key, trees = _key(args)
        hit = self._traces.get(key)
        if hit is not None:
            plans, params, trace = hit
            if all(_unchanged(p, a) for p, a in zip(plans, trees)):
                self.replayed += 1
                return trace.forward(params, _inputs(args, params, lend=True))
        if len(self._traces) >= _MAX_TRACES:
            return self._give_up(f"it was recorded {_MAX_TRACES} times (new data shapes, static arguments or "
                                 "model edits on most calls)", args, kwargs)
        try:
            plans, params = _parameters(trees)
            inputs = _inputs(args, params)
        except _Refused as why:
            return self._give_up(str(why), args, kwargs)
        return self._record(key, plans, params, inputs, args)

    def _record(self, key, plans, params, inputs, args):
        it = iter(inputs)
        call_args = [next(it) if type(a) is np.ndarray or type(a) is Tensor else a for a in args]
        mark, reads = _core.tensor_mark(), _core.value_reads()
        # inside the gradient's context, not a context of its own: the loss's ops see the depth
        # of the gradient that will be taken (a fused recurrence runs only at the first order)
        _core.push_watch(params + inputs, context=False)
        try:
            val = self.f(*call_args)
        except Exception as e:
            if all(a is b for a, b in zip(args, call_args)):
                raise
            # numpy data were given as tensors: if the loss needs numpy, it runs eagerly
            return self._give_up(f"the loss fails when its numpy data are given as tensors ({type(e).__name__}: "
                                 f"{e})", args, {})
        finally:
            _core.pop_watch()
        trace, why = record(val, params, inputs, mark, _core.value_reads() != reads)
        if trace is None:
            self._refuse(why)
            return val
        self._traces[key] = (plans, params, trace)
        self.recorded += 1
        return val

    def _refuse(self, why: str) -> None:
        """Run eagerly from now on, saying why once."""
        self._eager = why
        warn_caller(f"fx.jit({getattr(self.f, '__name__', 'loss')}): {why}; running it eagerly")

    def _give_up(self, why: str, args: tuple, kwargs: dict) -> Any:
        self._refuse(why)
        return self.f(*args, **kwargs)
