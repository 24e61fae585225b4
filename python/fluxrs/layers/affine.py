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

from fluxrs._checks import size, sizes_given
from fluxrs._core import Tensor
from fluxrs.activations import identity
from fluxrs.functor import Layer
from fluxrs.layers.basic import _as_param, as_input
from fluxrs.layers.init import glorot_uniform, ones32
from fluxrs.layers.show import short_repr
from fluxrs.random import default_rng
from fluxrs.tensor import host_like

__all__ = ["Scale", "Bilinear", "Embedding"]


def _randn32(*dims: int) -> Tensor:
    return Tensor(default_rng().standard_normal(dims), dtype="float32")


def _bias(bias: Any, shape: tuple[int, ...], like: Tensor, who: str) -> Tensor | None:
    if bias is False or bias is None:
        return None
    if bias is True:
        return Tensor(np.zeros(shape), dtype=like.dtype.name)
    b = bias if isinstance(bias, Tensor) else Tensor(np.asarray(bias), dtype=like.dtype.name)
    if tuple(b.shape) != shape:
        raise ValueError(f"{who}: bias must have shape {shape}, got {tuple(b.shape)}")
    return b


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
        self.bias = _bias(bias, shape, self.scale, f"Scale{shape}")
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

    def __init__(self, in_: Any, out: Any = None, act: Callable = identity, *, bias: Any = True,
                 init: Callable = glorot_uniform):
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
            weight = init(n_out, n1, n2)
            if not isinstance(weight, Tensor):
                weight = Tensor(np.asarray(weight, dtype=np.float32))
        if not callable(act):
            raise TypeError(f"Bilinear: the activation must be callable, got {act!r}")
        self.weight = weight
        self.bias = _bias(bias, (n_out,), weight, "Bilinear")
        self.act = act

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
        if isinstance(in_, (tuple, list)) and sizes_given(in_) and out is None:
            n_in = size("Embedding((in, out))", "in", in_[0])
            n_out = size("Embedding((in, out))", "out", in_[1])
            weight = None
        elif sizes_given(in_):
            n_in = size("Embedding(in, out)", "in", in_)
            n_out = size("Embedding(in, out)", "out", out)
            weight = None
        else:
            weight = _as_param(in_)
            if weight.ndim != 2:
                raise ValueError(f"Embedding(W): the weight must be a matrix (out, in), got {tuple(weight.shape)}")
        if weight is None:
            weight = init(n_out, n_in)
            if not isinstance(weight, Tensor):
                weight = Tensor(np.asarray(weight, dtype=np.float32))
            if tuple(weight.shape) != (n_out, n_in):
                raise ValueError(f"Embedding({n_in} => {n_out}): init returned shape {tuple(weight.shape)}, "
                                 f"expected {(n_out, n_in)}")
        self.weight = weight

    def __call__(self, x: Any) -> Tensor:
        n_out, n_in = self.weight.shape
        if isinstance(x, Tensor):
            if x.ndim == 0 or x.shape[-1] != n_in:
                raise TypeError(f"{self._repr_inner()}: a float tensor is taken as one-hot input and needs {n_in} "
                                f"entries on its last axis, got {tuple(x.shape)}; pass integer indices as a "
                                "numpy integer array")
            return as_input(x, self.weight, self) @ self.weight.T
        a = np.asarray(x)
        if a.dtype == bool:
            if a.ndim == 0 or a.shape[-1] != n_in:
                raise ValueError(f"{self._repr_inner()}: one-hot input needs {n_in} entries on its last axis, "
                                 f"got {a.shape}")
            return host_like(a, self.weight) @ self.weight.T
        if a.dtype.kind == "f" and a.ndim and a.shape[-1] == n_in:
            return as_input(a, self.weight, self) @ self.weight.T
        if a.dtype.kind not in "iu":
            raise TypeError(f"{self._repr_inner()} takes integer indices (or one-hot input), got {a.dtype} "
                            f"of shape {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= n_in):
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise IndexError(f"{self._repr_inner()}: index {bad} is out of range 0..{n_in - 1}")
        cols = self.weight.index_select(1, a.reshape(-1).tolist())  # (out, K)
        return cols.T.reshape(list(a.shape) + [n_out])

    def _repr_inner(self) -> str:
        n_out, n_in = self.weight.shape
        return f"Embedding({n_in} => {n_out})"
