"""Parameterised maps beside `Dense`: `Scale` (elementwise), `Bilinear` and `Embedding`,
as Flux defines them, batch-first.

>>> import fluxrs as fx, numpy as np
>>> fx.Embedding((10, 4))                      # Flux: Embedding(10 => 4)
Embedding(10 => 4)  # 40 parameters
>>> fx.Embedding(10, 4)(np.array([[1, 2, 3]])).shape
(1, 3, 4)
>>> fx.Bilinear((5, 3), 2)                     # Flux: Bilinear((5, 3) => 2)
Bilinear((5, 3) => 2)  # 32 parameters
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fluxrs._checks import is_int, size, sizes_given
from fluxrs._core import Tensor
from fluxrs.activations import identity
from fluxrs.functor import Layer, short_repr
from fluxrs.layers.basic import _as_param, _who, as_input
from fluxrs.layers.init import create_bias, create_weight, glorot_uniform, ones32
from fluxrs.random import default_rng
from fluxrs.tensor import host_like, stack

__all__ = ["Scale", "Bilinear", "Embedding", "EmbeddingBag"]


def _randn32(*dims: int) -> Tensor:
    return Tensor(default_rng().standard_normal(dims), dtype="float32")


def _table(in_: Any, out: Any, init: Callable, who: str) -> Tensor:
    """The (out, in) weight of an Embedding-like layer from ``(in, out)``, ``in, out`` or a
    weight matrix."""
    if isinstance(in_, (tuple, list)) and sizes_given(in_) and out is None:
        n_in = size(f"{who}((in, out))", "in", in_[0])
        n_out = size(f"{who}((in, out))", "out", in_[1])
    elif sizes_given(in_):
        n_in = size(f"{who}(in, out)", "in", in_)
        n_out = size(f"{who}(in, out)", "out", out)
    else:
        weight = _as_param(in_)
        if weight.ndim != 2:
            raise ValueError(f"{who}(W): the weight must be a matrix (out, in), got {tuple(weight.shape)}")
        return weight
    return create_weight(init, (n_out, n_in), f"{who}({n_in} => {n_out})")


def _embed(weight: Tensor, x: Any, who: Any) -> Tensor:
    """Embedding's lookup: integer indices of shape S give S + (out,); one-hot input (bool,
    or float with `in` entries on the last axis) is multiplied by the weight."""
    n_out, n_in = weight.shape
    if isinstance(x, Tensor):
        if x.ndim == 0 or x.shape[-1] != n_in:
            # a wrong size is a shape error (Flux: DimensionMismatch); a float scalar is no index
            raise (TypeError if x.ndim == 0 else ValueError)(f"{_who(who)}: a float tensor is taken as one-hot input and needs {n_in} "
                            f"entries on its last axis, got {tuple(x.shape)}; pass integer indices as a "
                            "numpy integer array")
        return as_input(x, weight, who) @ weight.T
    a = np.asarray(x)
    if a.dtype == bool:
        if a.ndim == 0 or a.shape[-1] != n_in:
            raise ValueError(f"{_who(who)}: one-hot input needs {n_in} entries on its last axis, got {a.shape}")
        return host_like(a, weight) @ weight.T
    if a.dtype.kind == "f" and a.ndim and a.shape[-1] == n_in:
        return as_input(a, weight, who) @ weight.T
    if a.dtype.kind not in "iu":
        raise TypeError(f"{_who(who)} takes integer indices (or one-hot input), got {a.dtype} of shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n_in):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise IndexError(f"{_who(who)}: index {bad} is out of range 0..{n_in - 1}")
    cols = weight.index_select(1, a.reshape(-1).tolist())  # (out, K)
    return cols.T.reshape(list(a.shape) + [n_out])


class Scale(Layer):
    """Elementwise ``act(scale * x + bias)`` with `scale` and `bias` of shape `size`,
    broadcast against the trailing axes of the input: ``Scale(size..., act=identity, *,
    bias=True, init=ones32)``.

    >>> import fluxrs as fx
    >>> fx.Scale(3, fx.relu)
    Scale(3, relu)  # 6 parameters
    """

    def __init__(self, *size_act: Any, bias: Any = True, init: Callable = ones32):
        args = list(size_act)
        act: Callable = identity
        if args and callable(args[-1]) and not isinstance(args[-1], Tensor):
            act = args.pop()
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = list(args[0])
        if not args:
            raise TypeError(f"Scale(size..., act): give at least one size, got {tuple(size_act)!r}")
        shape = tuple(size("Scale(size..., act)", "each size", a) for a in args)
        scale = init(*shape)
        self.scale = scale if isinstance(scale, Tensor) else _as_param(scale)
        self.bias = create_bias(self.scale, bias, shape, f"Scale{shape}")
        self.act = act

    def __call__(self, x: Any) -> Tensor:
        x = as_input(x, self.scale, self)
        try:
            np.broadcast_shapes(tuple(x.shape), tuple(self.scale.shape))
        except ValueError:
            raise ValueError(f"{self._repr_inner()} expects input whose trailing axes broadcast against its size "
                             f"{tuple(self.scale.shape)}, got {tuple(x.shape)}") from None
        y = x * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y if self.act is identity else self.act(y)

    def _repr_inner(self) -> str:
        s = "Scale(" + ", ".join(str(v) for v in self.scale.shape)
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if self.bias is None:
            s += ", bias=False"
        return s + ")"


class Bilinear(Layer):
    """A bilinear map of two inputs: ``z[n, o] = act(Σᵢⱼ x[n, i] W[o, i, j] y[n, j] + b[o])``.

    ``Bilinear((in1, in2), out, act=identity, *, bias=True, init=glorot_uniform)`` is Flux's
    ``Bilinear((in1, in2) => out, act)``; ``Bilinear(in, out)`` has ``in1 == in2 == in``;
    ``Bilinear(W, bias=True, act=identity)`` wraps a weight of shape (out, in1, in2).
    Call it as ``m(x, y)``, ``m((x, y))``, or ``m(x)`` for ``m(x, x)``; inputs are
    ``(N, in1)`` and ``(N, in2)`` (or single vectors).

    >>> import fluxrs as fx
    >>> fx.Bilinear(3, 2)(fx.ones(5, 3)).shape
    (5, 2)
    """

    def __init__(self, in_: Any, out: Any = None, act: Callable = identity, *more: Any, bias: Any = True,
                 init: Callable = glorot_uniform):
        if is_int(act) and is_int(in_) and is_int(out):
            # Bilinear(in1, in2, out, act=identity): Flux's three-size form
            if len(more) > 1:
                raise TypeError("Bilinear(in1, in2, out, act): too many positional arguments")
            in_, out, act = (in_, out), act, (more[0] if more else identity)
        elif more:
            raise TypeError("Bilinear((in1, in2), out, act): too many positional arguments")
        if isinstance(in_, (tuple, list)) and sizes_given(in_):
            n1 = size("Bilinear((in1, in2), out)", "in1", in_[0])
            n2 = size("Bilinear((in1, in2), out)", "in2", in_[1])
            weight = None
        elif sizes_given(in_):
            n1 = n2 = size("Bilinear(in, out)", "the input size", in_)
            weight = None
        else:
            weight = _as_param(in_)
            if weight.ndim != 3:
                raise ValueError(f"Bilinear(W): the weight must have shape (out, in1, in2), got {tuple(weight.shape)}")
            if out is not None:
                bias = out
            n_out, n1, n2 = weight.shape
        if weight is None:
            n_out = size("Bilinear((in1, in2), out, act)", "out", out)
            weight = create_weight(init, (n_out, n1, n2), f"Bilinear(({n1}, {n2}) => {n_out})")
        if not callable(act):
            raise TypeError(f"Bilinear: the activation must be callable, got {act!r}")
        self.weight = weight
        self.bias = create_bias(weight, bias, (n_out,), "Bilinear")
        self.act = act

    @property
    def σ(self) -> Callable:  # Flux's field name for the activation
        return self.act

    def __call__(self, x: Any, y: Any = None) -> Tensor:
        if y is None and isinstance(x, tuple):
            if len(x) != 2:
                raise ValueError(f"{self._repr_inner()} takes a pair (x, y), got a tuple of {len(x)}")
            x, y = x
        x = as_input(x, self.weight, self)
        y = x if y is None else as_input(y, self.weight, self)
        n_out, n1, n2 = self.weight.shape
        if x.ndim == 0 or x.shape[-1] != n1 or y.ndim == 0 or y.shape[-1] != n2:
            raise ValueError(f"{self._repr_inner()} expects inputs with {n1} and {n2} features on axis -1, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        lead = tuple(x.shape[:-1])
        if tuple(y.shape[:-1]) != lead:
            raise ValueError(f"{self._repr_inner()}: the two inputs must have the same batch shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        k = int(np.prod(lead)) if lead else 1
        x2 = x.reshape(k, n1)
        # A[n, o, i] = Σⱼ W[o, i, j] y[n, j]; then z[n, o] = Σᵢ A[n, o, i] x[n, i]
        a = (y.reshape(k, n2) @ self.weight.reshape(n_out * n1, n2).T).reshape(k, n_out, n1)
        z = (a * x2.reshape(k, 1, n1)).sum(2)
        if self.bias is not None:
            z = z + self.bias
        z = z.reshape(list(lead) + [n_out])
        return z if self.act is identity else self.act(z)

    def _repr_inner(self) -> str:
        n_out, n1, n2 = self.weight.shape
        s = f"Bilinear({n1} => {n_out}" if n1 == n2 else f"Bilinear(({n1}, {n2}) => {n_out}"
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if self.bias is None:
            s += ", bias=False"
        return s + ")"


class Embedding(Layer):
    """A lookup table: integer index ``i`` (0-based) maps to column ``i`` of `weight`, of shape
    ``(out, in)`` as Flux stores it (so ``Embedding(in => out)`` equals ``Dense(in => out,
    bias=false)`` on one-hot input).

    ``Embedding(in, out, *, init=randn)`` or ``Embedding((in, out))`` is Flux's
    ``Embedding(in => out)``; ``Embedding(W)`` wraps a weight. Integer input of any shape
    ``S`` gives ``S + (out,)``; one-hot input (bool, or float with `in` entries on the last
    axis, as `fx.onehotbatch` makes) is multiplied by the weight. Gradients reach only the
    columns that were looked up.

    >>> import fluxrs as fx, numpy as np
    >>> e = fx.Embedding(3, 2, init=lambda *d: fx.tensor(np.arange(6, dtype=np.float32).reshape(d)))
    >>> e(1).tolist(), e(np.array([0, 2])).tolist()
    ([1.0, 4.0], [[0.0, 3.0], [2.0, 5.0]])
    """

    def __init__(self, in_: Any, out: Any = None, *, init: Callable = _randn32):
        self.weight = _table(in_, out, init, "Embedding")

    def __call__(self, x: Any) -> Tensor:
        return _embed(self.weight, x, self)

    def _repr_inner(self) -> str:
        n_out, n_in = self.weight.shape
        return f"Embedding({n_in} => {n_out})"


_REDUCTIONS = {"mean": "mean", "sum": "sum", "max": "max", "maximum": "max"}


def _reduction(r: Any) -> str:
    if isinstance(r, str) and r in _REDUCTIONS:
        return _REDUCTIONS[r]
    named = {np.mean: "mean", np.sum: "sum", np.max: "max", np.amax: "max", sum: "sum", max: "max"}
    try:
        if r in named:
            return named[r]
    except TypeError:  # unhashable
        pass
    raise ValueError(f"EmbeddingBag: reduction must be \"mean\", \"sum\" or \"maximum\" (or np.mean, np.sum, "
                     f"np.max), got {r!r}")


class EmbeddingBag(Layer):
    """A lookup table like `Embedding` that acts on "bags" of indices: the embeddings of a
    bag's indices are reduced to one vector, by their mean (the default), sum or maximum.

    ``EmbeddingBag(in, out, reduction="mean", *, init=randn)`` or ``EmbeddingBag((in, out),
    reduction)`` is Flux's ``EmbeddingBag(in => out, reduction)``; ``EmbeddingBag(W,
    reduction)`` wraps a weight of shape (out, in). Indices are 0-based. Batch-first, a bag
    runs along the last axis of the input (Flux: the first):

    * a 1-D integer array is one bag: ``(L,) -> (out,)``;
    * a 2-D integer array is one bag per row: ``(B, L) -> (B, out)``, and generally
      ``(..., L) -> (..., out)``;
    * a list of 1-D integer arrays is ragged bags: ``B`` bags -> ``(B, out)``;
    * ``m(data, offsets)`` splits the 1-D `data` at the 0-based `offsets` (the start of each
      bag; the first is 0) into bags;
    * one-hot input ``(..., L, in)`` (bool, or float) is a bag of `L` one-hot vectors.

    >>> import fluxrs as fx, numpy as np
    >>> eb = fx.EmbeddingBag((26, 3), init=lambda *d: fx.identity_init(*d, gain=100))
    >>> eb
    EmbeddingBag(26 => 3)  # 78 parameters
    >>> eb([1]).tolist()                               # one bag of 1 item (Flux: eb([2]))
    [0.0, 100.0, 0.0]
    >>> [round(v, 3) for v in eb([2, 2, 0]).tolist()]   # one bag of 3 items, their mean
    [33.333, 0.0, 66.667]
    >>> [[round(v, 2) for v in r] for r in eb([[2, 0, 2], [1, 0]]).tolist()]  # two bags
    [[33.33, 0.0, 66.67], [50.0, 50.0, 0.0]]
    >>> eb(np.array([[0, 0], [0, 1], [0, 2], [0, 3]])).tolist()  # 4 bags of 2 items, as rows
    [[100.0, 0.0, 0.0], [50.0, 50.0, 0.0], [50.0, 0.0, 50.0], [50.0, 0.0, 0.0]]
    >>> eb(np.random.randint(0, 26, (5, 5, 10))).shape  # 25 bags of 10 items
    (5, 5, 3)
    >>> [[round(v, 2) for v in r] for r in eb([10, 0, 11, 1, 12, 2, 13], [0, 3]).tolist()]
    [[33.33, 0.0, 0.0], [0.0, 25.0, 25.0]]
    """

    def __init__(self, in_: Any, out: Any = None, reduction: Any = "mean", *, init: Callable = _randn32):
        if out is not None and not is_int(out):  # EmbeddingBag((in, out), reduction) or (W, reduction)
            out, reduction = None, out
        self.reduction = _reduction(reduction)
        self.weight = _table(in_, out, init, "EmbeddingBag")

    def _reduce(self, e: Tensor, axis: int) -> Tensor:
        return getattr(e, self.reduction)(axis)

    def __call__(self, x: Any, offsets: Any = None) -> Tensor:
        if offsets is not None:
            return self._ragged(self._split(x, offsets))
        if isinstance(x, (list, tuple)) and x and all(np.ndim(b) == 1 for b in x if not isinstance(b, Tensor)):
            lengths = {len(b) for b in x if isinstance(b, (list, tuple, np.ndarray))}
            if len(lengths) > 1:  # ragged: numpy cannot make one array of it
                return self._ragged([np.asarray(b) for b in x])
        if not isinstance(x, Tensor):
            a = np.asarray(x)
            if a.ndim == 0:
                raise ValueError(f"{self._repr_inner()} expects an array of indices (a bag), not just one: "
                                 f"write [{a.item()!r}]")
            if a.dtype.kind in "iu" and a.shape[-1] == 0:
                raise ValueError(f"{self._repr_inner()}: the bags of input {a.shape} are empty")
            x = a
        n_in = self.weight.shape[1]
        if (isinstance(x, Tensor) or x.dtype.kind not in "iu") and x.ndim < 2:
            raise ValueError(f"{self._repr_inner()}: one-hot input needs a bag axis, shape (..., L, {n_in}), "
                             f"got {tuple(x.shape)}")
        return self._reduce(_embed(self.weight, x, self), -2)

    def _split(self, data: Any, offsets: Any) -> list[np.ndarray]:
        d, at = np.asarray(data), np.asarray(offsets)
        if d.ndim != 1 or at.ndim != 1 or d.dtype.kind not in "iu" or at.dtype.kind not in "iu":
            raise ValueError(f"{self._repr_inner()}(data, offsets): both must be 1-D integer arrays, got shapes "
                             f"{d.shape} and {at.shape}")
        if at.size == 0 or at[0] != 0 or np.any(np.diff(at) <= 0) or at[-1] >= d.size:
            raise ValueError(f"{self._repr_inner()}(data, offsets): offsets must start at 0 and increase strictly, "
                             f"each below len(data) = {d.size}, got {at.tolist()}")
        return np.split(d, at[1:])

    def _ragged(self, bags: list[np.ndarray]) -> Tensor:
        for i, b in enumerate(bags):
            if b.ndim != 1 or b.size == 0 or b.dtype.kind not in "iu":
                raise ValueError(f"{self._repr_inner()}: bag {i} must be a non-empty 1-D integer array, got "
                                 f"{b.dtype} of shape {b.shape}")
        e = _embed(self.weight, np.concatenate(bags), self)  # one lookup for all bags: (K, out)
        ends = np.cumsum([b.size for b in bags])
        return stack([self._reduce(e.slice(0, int(hi - b.size), int(hi)), 0) for b, hi in zip(bags, ends)], 0)

    def _repr_inner(self) -> str:
        n_out, n_in = self.weight.shape
        r = "" if self.reduction == "mean" else f", \"{'maximum' if self.reduction == 'max' else self.reduction}\""
        return f"EmbeddingBag({n_in} => {n_out}{r})"
