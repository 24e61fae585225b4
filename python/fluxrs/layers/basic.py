"""The basic layers: `Dense` and `Chain`, as Flux defines them, batch-first.

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Dense((784, 32), fx.σ), fx.Dense(32, 10), fx.softmax)  # Flux: Dense(784 => 32, σ)
>>> m
Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax)  # 25_450 parameters
>>> m(fx.rand(784)).shape        # one sample
(10,)
>>> m(fx.rand(16, 784)).shape    # a batch of 16
(16, 10)
>>> m[0].weight.shape            # (out, in), as Flux stores it
(32, 784)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from fluxrs import _core
from fluxrs._checks import size, sizes_given, warn_caller
from fluxrs._core import Tensor
from fluxrs.activations import identity
from fluxrs.functor import Layer, short_repr
from fluxrs.layers.init import create_bias, create_weight, glorot_uniform
from fluxrs.tensor import host_like

__all__ = ["Dense", "Chain"]

_warned_f64 = False


def _warn_f64(who: Any) -> None:
    # One warning per process: a silent float64→float32 conversion hides precision loss,
    # a warning on every batch hides everything else.
    global _warned_f64
    if not _warned_f64:
        _warned_f64 = True
        warn_caller(f"{_who(who)}: float64 input converted to float32 to match the layer's parameters "
                    "(convert the data once with fx.tensor(x) or x.astype(np.float32) to avoid the copy; "
                    "this warning is shown once)")


def _who(who: Any) -> str:
    # the layer's short repr, built only when a message needs it (not on every call)
    return who if isinstance(who, str) else short_repr(who)


def as_input(x: Any, like: Tensor, who: Any, lend: bool = False) -> Tensor:
    """`x` as a tensor of `like`'s dtype (numpy arrays, lists and other tensors converted;
    host data is placed on `like`'s device); `who` (a layer or a name) is named in warnings
    and errors. `lend`: the caller only reads `x` and returns a new tensor, so a numpy batch
    may be read in place instead of copied (the result must not reach the user)."""
    if isinstance(x, np.ndarray) and x.dtype == like.dtype:  # the usual numpy batch: nothing to check
        return host_like(x, like, lend)
    if isinstance(x, Tensor):
        if x.dtype == like.dtype:
            return x
        if x.dtype == np.float64:
            _warn_f64(who)
        return x.astype(like.dtype.name)
    try:
        a = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{_who(who)}: the input is not a rectangular array of numbers ({e})") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{_who(who)}: expected a tensor or numeric array, got {type(x).__name__} of dtype {a.dtype}")
    if a.dtype == np.float64 and like.dtype != np.float64:
        _warn_f64(who)
    # host data follows the layer to its device; a tensor stays where it is (moving it is explicit)
    return host_like(a, like)


def _as_param(x: Any) -> Tensor:
    # A weight given as an array: float32 unless it is a float64 array, which stays float64
    # (Flux keeps the eltype of a matrix given to Dense; gradient checks rely on it).
    if isinstance(x, Tensor):
        return x
    a = np.asarray(x)
    return Tensor(a, dtype="float64" if a.dtype == np.float64 else "float32")


class Dense(Layer):
    """A fully connected layer: ``act(x @ weight.T + bias)``.

    ``Dense(in, out, act=identity, *, bias=True, init=glorot_uniform)``; Flux's
    ``Dense(in => out, act)`` is written ``Dense((in, out), act)``, and ``Dense(W, b=True,
    act=identity)`` builds the layer around an existing weight matrix of shape (out, in).
    `bias` may be False (no bias), True (zeros) or an array. The input is one vector
    ``(in,)`` or a batch ``(..., in)``; numpy input is converted to the weight's dtype.

    >>> import fluxrs as fx
    >>> d = fx.Dense(2, 3, fx.relu)
    >>> d
    Dense(2 => 3, relu)  # 9 parameters
    >>> d(fx.ones(5, 2)).shape
    (5, 3)
    >>> fx.Dense(fx.ones((2, 3)), act=fx.tanh).bias.tolist()
    [0.0, 0.0]
    """

    def __init__(self, in_: Any, out: Any = None, act: Callable = identity, *, bias: Any = True,
                 init: Callable = glorot_uniform):
        if isinstance(in_, (tuple, list)) and sizes_given(in_):
            # Dense(in => out, act): the pair form, with act in the second slot
            if out is not None:
                if act is not identity:
                    raise TypeError("Dense((in, out), act): too many positional arguments")
                act = out
            n_in = size("Dense((in, out))", "the input size", in_[0], 0)
            n_out = size("Dense((in, out))", "the output size", in_[1], 0)
            weight = None
        elif sizes_given(in_):
            n_in = size("Dense(in, out, act)", "the input size", in_, 0)
            n_out = size("Dense(in, out, act)", "out", out, 0,
                         hint="write Dense(784, 32) or Dense((784, 32))" if out is None else "")
            weight = None
        else:
            # Dense(W, bias=True, act=identity): Flux's matrix constructor
            weight = _as_param(in_)
            if weight.ndim != 2:
                raise ValueError(f"Dense(W): the weight must be a matrix (out, in), got shape {tuple(weight.shape)}")
            if out is not None:
                bias = out
            n_out, n_in = weight.shape
        if not callable(act):
            raise TypeError(f"Dense: the activation must be callable, got {act!r}")
        if weight is None:
            weight = create_weight(init, (n_out, n_in), f"Dense({n_in} => {n_out})")
        self.weight = weight
        self.bias = create_bias(weight, bias, (n_out,), "Dense")
        self.act = act

    @property
    def σ(self) -> Callable:  # Flux's field name for the activation
        return self.act

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: Any) -> Tensor:
        x = as_input(x, self.weight, self, lend=True)  # read by the product only
        n_in = self.weight.shape[1]
        if x.ndim == 0 or x.shape[-1] != n_in:
            shape = tuple(x.shape)
            hint = ""
            if x.ndim >= 2 and math.prod(shape[1:]) == n_in:
                hint = f"; flatten the sample axes first, e.g. x.reshape({shape[0]}, {n_in})"
            raise ValueError(f"{self._repr_inner()} expects input with {n_in} features on axis -1, "
                             f"got {shape}{hint}")
        # An activation the Rust kernel fuses runs as act(x @ W.T + b) in one call: one
        # Python→Rust crossing per layer instead of three.
        fused = getattr(self.act, "fused_name", None)
        if fused in _core.FUSED_ACTIVATIONS:
            return _core.dense(x, self.weight, self.bias, fused)
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y if self.act is identity else self.act(y)

    def _repr_inner(self) -> str:
        s = f"Dense({self.weight.shape[1]} => {self.weight.shape[0]}"
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if self.bias is None:
            s += ", bias=False"
        return s + ")"


class Chain(Layer):
    """Layers applied in sequence: ``Chain(f, g, h)(x) == h(g(f(x)))``.

    Called with several arguments, ``m(x, y)``, the first layer gets the tuple ``(x, y)``.
    Layers are positional (``Chain(l1, l2)``, stored as a tuple) or named
    (``Chain(enc=l1, dec=l2)``, stored as a dict); any callable works as a layer, e.g.
    `fx.softmax`. ``m[0]``, ``m[-1]``, ``m["enc"]`` give a layer; ``m[0:2]`` a new Chain
    sharing those layers (so their parameters, as in Flux).

    >>> import fluxrs as fx
    >>> m = fx.Chain(enc=fx.Dense(4, 2, fx.relu), dec=fx.Dense(2, 4))
    >>> m["enc"] is m[0], len(m)
    (True, 2)
    >>> m[0:1]
    Chain(enc=Dense(4 => 2, relu))  # 10 parameters
    >>> fx.gradient(lambda m: m(fx.ones(4)).sum(), m)[0].layers["dec"].bias.tolist()
    [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, *layers: Any, **named: Any):
        if layers and named:
            raise TypeError("Chain takes either positional layers or named layers, not both")
        if "layers" in named:  # Flux reserves it: the field that holds them
            raise ValueError("Chain: a layer cannot be named 'layers'")
        if len(layers) == 1 and isinstance(layers[0], list):
            # Chain([l1, l2]): Flux's vector form, which can grow
            self.layers: Any = list(layers[0])
        elif named:
            self.layers = dict(named)
        else:
            self.layers = tuple(layers)
        for i, l in self._items():
            if not callable(l):
                raise TypeError(f"Chain: layer {i!r} is not callable ({type(l).__name__})")

    def _items(self) -> list[tuple[Any, Any]]:
        return list(self.layers.items()) if isinstance(self.layers, dict) else list(enumerate(self.layers))

    def __call__(self, x: Any, *ys: Any) -> Any:
        if ys:  # Flux: several arguments reach the first layer as one tuple
            x = (x, *ys)
        for l in (self.layers.values() if isinstance(self.layers, dict) else self.layers):
            x = l(x)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers.values() if isinstance(self.layers, dict) else self.layers)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(self.layers, dict):
            if isinstance(key, str):
                try:
                    return self.layers[key]
                except KeyError:
                    raise KeyError(f"Chain has no layer named {key!r}; its names are {list(self.layers)}") from None
            items = list(self.layers.items())
            if isinstance(key, slice):
                return Chain(**dict(items[key]))
            return items[key][1]
        if isinstance(key, str):
            raise KeyError(f"this Chain's layers are not named; index it by position (0..{len(self) - 1})")
        if isinstance(key, slice):
            return Chain(*self.layers[key])
        return self.layers[key]

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        if isinstance(self.layers, dict):
            return "Chain(", [(f"{k}=", v) for k, v in self.layers.items()], ")"
        if isinstance(self.layers, list):
            return "Chain([", [("", v) for v in self.layers], "])"
        return "Chain(", [("", v) for v in self.layers], ")"
