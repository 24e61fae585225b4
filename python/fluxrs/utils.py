"""Model utilities from Flux and Optimisers.jl: `outputsize` (shape inference), `activations`
(every layer's output of a Chain) and `destructure` (all trainable parameters as one flat
vector, and back).

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Dense(10, 5, fx.relu), fx.Dense(5, 2))
>>> fx.outputsize(m, (64, 10))
(64, 2)
>>> flat, re = fx.destructure(m)
>>> flat.shape, re(flat)(fx.ones(3, 10)).shape
((67,), (3, 2))
"""

from __future__ import annotations

import numbers
import types
from typing import Any, Callable

import numpy as np

import fluxrs.activations as _activation_functions
from fluxrs._core import Tensor
from fluxrs.autodiff import no_grad, params
from fluxrs.functor import fmap, named_modules, short_repr
from fluxrs.layers.basic import Chain
from fluxrs.tensor import concat, tensor

__all__ = ["outputsize", "activations", "destructure", "Restructure"]


# ---------------------------------------------------------------- outputsize

def _shape_arg(s: Any, i: int) -> tuple[int, ...]:
    try:
        shape = tuple(s)
    except TypeError:
        raise TypeError(f"outputsize: input shape #{i} must be a tuple of ints, got {s!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in shape):
        raise ValueError(f"outputsize: input shape #{i} must hold non-negative ints, got {s!r}")
    return tuple(int(v) for v in shape)


def _shapes(y: Any) -> Any:
    """The shape of each tensor in the output, in the output's structure."""
    if isinstance(y, (Tensor, np.ndarray)):
        return tuple(y.shape)
    if isinstance(y, tuple):
        return tuple(_shapes(v) for v in y)
    if isinstance(y, list):
        return [_shapes(v) for v in y]
    if isinstance(y, dict):
        return {k: _shapes(v) for k, v in y.items()}
    if isinstance(y, numbers.Number):
        return ()
    raise TypeError(f"outputsize: the model returned {type(y).__name__}, which has no shape")


def _flat_shapes(s: Any) -> list[tuple[int, ...]]:
    if isinstance(s, tuple) and all(isinstance(v, int) for v in s):
        return [s]
    vals = s.values() if isinstance(s, dict) else s
    return [t for v in vals for t in _flat_shapes(v)]


def _with_batch(s: Any, n: int) -> Any:
    if isinstance(s, tuple) and all(isinstance(v, int) for v in s):
        return (n,) + s[1:]
    if isinstance(s, dict):
        return {k: _with_batch(v, n) for k, v in s.items()}
    return type(s)(_with_batch(v, n) for v in s)


def _failing_layer(model: Any, tb: Any) -> tuple[str, Any, Any] | None:
    """(path, layer, its input) of the innermost layer of `model` running where the traceback
    `tb` ends; for a Chain, the entry it was applying (a function as well as a layer)."""
    paths = {id(n): p for p, n in named_modules(model)}
    found = None
    while tb is not None:
        f = tb.tb_frame.f_locals
        node = f.get("self")
        if node is not None and id(node) in paths:
            path, x = paths[id(node)], f.get("x")
            if isinstance(node, Chain) and "l" in f:
                for k, l in node._items():
                    if l is f["l"]:
                        path, node = f"{path}.layers[{k!r}]", l
                        break
            found = (path, node, x)
        tb = tb.tb_next
    return found


def _run(model: Any, shapes: list[tuple[int, ...]], dtype: np.dtype, asked: list[tuple[int, ...]]) -> Any:
    if dtype.kind == "f":
        xs = [tensor(np.zeros(s, dtype=dtype), dtype=dtype) for s in shapes]
    else:  # integer input (indices for an Embedding): numpy, as the layer takes it
        xs = [np.zeros(s, dtype=dtype) for s in shapes]
    try:
        with no_grad():
            return _shapes(model(*xs))
    except Exception as e:
        where = _failing_layer(model, e.__traceback__)
        given = ", ".join(str(s) for s in asked)
        if shapes != asked:
            given += f", run as a batch of {shapes[0][0]}"
        if where is None:
            msg = f"outputsize: {short_repr(model)} fails on input of shape {given}: {e}"
        else:
            path, node, x = where
            at = f" on its input of shape {tuple(x.shape)}" if isinstance(x, (Tensor, np.ndarray)) else ""
            msg = (f"outputsize: layer {path} = {short_repr(node)} fails{at} (model input of shape {given}): "
                   f"{e}")
        kind = type(e) if type(e) in (ValueError, TypeError, IndexError) else ValueError
        raise kind(msg).with_traceback(None) from e


def outputsize(model: Callable, *input_shapes: Any, padbatch: bool = False, dtype: Any = None) -> Any:
    """The shape of ``model(x)`` for `x` of the given shape, batch-first: Flux's
    ``outputsize(m, inputsize; padbatch=false)``. With several shapes the model is called with
    several inputs; a model returning a tuple gives a tuple of shapes.

    With ``padbatch=True`` the shapes leave out the batch axis, and a batch of 1 is put in
    front of them (so the result has one too).

    How: Flux runs the model on a special number type that carries no data; there is none
    here, so the model runs on zeros, in `fx.no_grad` and test mode (a BatchNorm's running
    statistics stay as they are). The cost is one small forward pass: the batch is run as 1
    and as 2 and, when the output's leading axis follows the batch (the usual case), the
    batch size is put back, so a large batch allocates nothing. A model whose output shape
    depends otherwise on the batch is run on the full batch. `dtype` is the input's dtype:
    by default the model's parameters' (float32 without any); an integer dtype feeds integer
    zeros, for models that start with an `Embedding`.

    When the shape does not fit, the error names the failing layer by its path in the model
    and the shape it got.

    >>> import fluxrs as fx
    >>> fx.outputsize(fx.Dense(10, 4), (10,), padbatch=True)
    (1, 4)
    >>> m = fx.Chain(fx.Conv((3, 3), 3, 16), fx.Flatten())
    >>> fx.outputsize(m, (1, 3, 10, 10))
    (1, 1024)
    >>> fx.outputsize(m, (3, 10, 10), padbatch=True) == fx.outputsize(m, (1, 3, 10, 10))
    True
    >>> fx.outputsize(m, (1, 4, 10, 10))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: outputsize: layer model.layers[0] = Conv((3, 3), 3 => 16) fails on its input of shape (1, 4, 10, 10) ...
    """
    if not callable(model):
        raise TypeError(f"outputsize: the model must be callable, got {type(model).__name__}")
    if not input_shapes:
        raise TypeError("outputsize: give the input shape, e.g. outputsize(model, (batch, features))")
    shapes = [_shape_arg(s, i) for i, s in enumerate(input_shapes)]
    if padbatch:
        shapes = [(1,) + s for s in shapes]
    if dtype is None:
        ps = params(model)
        dtype = ps[0].dtype if len(ps) else np.float32
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiu":
        raise TypeError(f"outputsize: dtype must be a float or integer dtype, got {dtype}")
    restore = [(n, n.active) for _, n in named_modules(model) if getattr(n, "active", None) is True]
    try:
        for n, _ in restore:  # test mode: no running statistics updated by a forward pass on zeros
            n.active = False
        batches = {s[0] for s in shapes if s}
        if len(batches) == 1 and all(s for s in shapes) and (b := batches.pop()) > 2:
            one = _run(model, [(1,) + s[1:] for s in shapes], dtype, shapes)
            two = _run(model, [(2,) + s[1:] for s in shapes], dtype, shapes)
            ones, twos = _flat_shapes(one), _flat_shapes(two)
            if all(a and c and a[0] == 1 and c[0] == 2 and a[1:] == c[1:] for a, c in zip(ones, twos)):
                return _with_batch(one, b)
        return _run(model, shapes, dtype, shapes)
    finally:
        for n, a in restore:
            n.active = a


# ---------------------------------------------------------------- activations

def activations(chain: Chain, x: Any) -> tuple:
    """The output of every layer of `chain` on input `x`, in order: Flux's
    ``activations(c::Chain, x)``. The last is ``chain(x)``. Differentiable.

    >>> import fluxrs as fx
    >>> c = fx.Chain(fx.Dense(3, 5, fx.relu), fx.Dense(5, 1, fx.relu))
    >>> [a.shape for a in fx.activations(c, fx.rand(7, 3))]
    [(7, 5), (7, 1)]
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"activations: the first argument must be a Chain, got {type(chain).__name__}")
    out = []
    for layer in chain:
        x = layer(x)
        out.append(x)
    return tuple(out)


class _CallableModule(types.ModuleType):
    # Flux has both the activation functions and `activations(chain, x)`; in Python one name
    # cannot be a module and a function, unless the module is callable.
    def __call__(self, chain: Any, x: Any) -> tuple:
        return activations(chain, x)


_activation_functions.__class__ = _CallableModule


# ---------------------------------------------------------------- destructure

class Restructure:
    """The second result of `destructure`: ``re(flat)`` rebuilds the model with the values
    of `flat`, a vector of ``length`` numbers (Optimisers.jl's ``Restructure``)."""

    def __init__(self, model: Any, tensors: list[Tensor], dtype: str):
        self._model = model
        self._dtype = dtype
        self._index: dict[int, tuple[int, int, tuple[int, ...], str]] = {}
        off = 0
        for t in tensors:
            self._index[id(t)] = (off, off + t.size, tuple(t.shape), t.dtype.name)
            off += t.size
        self._tensors = tensors  # kept alive: the index is by id
        self.length = off

    def __call__(self, flat: Any) -> Any:
        v = flat if isinstance(flat, Tensor) else tensor(np.asarray(flat), dtype=self._dtype)
        if v.ndim != 1 or v.shape[0] != self.length:
            raise ValueError(f"destructure: re(flat) needs a flat vector of length {self.length} (the model's "
                             f"trainable parameters), got shape {tuple(v.shape)}")
        index = self._index

        def place(t: Tensor) -> Tensor:
            e = index.get(id(t))
            if e is None:  # not trainable (running statistics): kept, as Optimisers does
                return t
            lo, hi, shape, dt = e
            piece = v.slice(0, lo, hi).reshape(shape)  # recorded ops: gradients reach `flat`
            return piece if piece.dtype.name == dt else piece.astype(dt)

        return fmap(place, self._model)

    def __repr__(self) -> str:
        return f"Restructure({type(self._model).__name__}, ..., {self.length})"


def destructure(model: Any) -> tuple[Tensor, Restructure]:
    """All trainable parameters of `model` as one flat vector, and a function rebuilding the
    model from such a vector: Optimisers.jl's ``destructure``. `flat` holds the tensors of
    `fx.params(model)` in that order, flattened row-major, shared ones once (float64 if any
    is, else float32). ``re(v)`` returns a copy of the model whose trainable tensors are
    pieces of `v` (non-trainable ones are the original's), built by recorded ops, so
    ``fx.gradient(lambda v: loss(re(v)), flat)`` is the flat gradient.

    >>> import fluxrs as fx
    >>> m = fx.Chain(fx.Dense(2, 2, fx.tanh), fx.Dense(2, 1))
    >>> flat, re = fx.destructure(m)
    >>> re
    Restructure(Chain, ..., 9)
    >>> m2 = re(fx.zeros(9))
    >>> m2[0].weight.tolist(), m[0].weight is m2[0].weight
    ([[0.0, 0.0], [0.0, 0.0]], False)
    >>> g = fx.gradient(lambda v: re(v)(fx.ones(2)).sum(), flat)[0]
    >>> g.shape
    (9,)
    >>> re(fx.zeros(8))
    Traceback (most recent call last):
    ...
    ValueError: destructure: re(flat) needs a flat vector of length 9 (the model's trainable parameters), got shape (8,)
    """
    ps = list(params(model))
    dt = "float64" if any(p.dtype.name == "float64" for p in ps) else "float32"
    if ps:
        flat = concat([(p if p.dtype.name == dt else p.astype(dt)).reshape(-1) for p in ps], 0)
    else:
        flat = tensor(np.zeros(0), dtype=dt)
    return flat, Restructure(model, ps, dt)
