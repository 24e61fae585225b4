"""Layers that wire other layers together: `Parallel`, `SkipConnection`, `PairwiseFusion` and
`Maxout`, as Flux defines them. Any callable works as a sub-layer or connection.

>>> import fluxrs as fx, operator
>>> m = fx.SkipConnection(fx.Dense(3, 3), operator.add)      # x + Dense(x): a residual block
>>> m
SkipConnection(Dense(3 => 3), add)  # 12 parameters
>>> p = fx.Parallel(lambda a, b: fx.concat([a, b], axis=-1), fx.Dense(2, 3), fx.Dense(2, 4))
>>> p(fx.ones(5, 2)).shape
(5, 7)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from fluxrs._core import Tensor
from fluxrs.functor import Layer
from fluxrs.ops import maximum

__all__ = ["Parallel", "SkipConnection", "PairwiseFusion", "Maxout"]


def _collect(who: str, layers: tuple, named: dict) -> Any:
    if layers and named:
        raise TypeError(f"{who} takes either positional layers or named layers, not both")
    if "layers" in named:  # Flux reserves it: the field that holds them
        raise ValueError(f"{who}: a layer cannot be named 'layers'")
    out = dict(named) if named else tuple(layers)
    for k, l in (out.items() if isinstance(out, dict) else enumerate(out)):
        if not callable(l):
            raise TypeError(f"{who}: layer {k!r} is not callable ({type(l).__name__})")
    return out


class _Multi(Layer):
    """Positional (tuple) or named (dict) sub-layers, indexable like `Chain`."""

    layers: Any

    def _values(self) -> list[Any]:
        return list(self.layers.values()) if isinstance(self.layers, dict) else list(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values())

    def __getitem__(self, key: Any) -> Any:
        if isinstance(self.layers, dict):
            if isinstance(key, str):
                return self.layers[key]
            return self._values()[key]
        if isinstance(key, str):
            raise KeyError(f"this {type(self).__name__}'s layers are not named; index it by position")
        return self.layers[key]

    def _layer_parts(self) -> list[tuple[str, Any]]:
        if isinstance(self.layers, dict):
            return [(f"{k}=", v) for k, v in self.layers.items()]
        return [("", v) for v in self.layers]


class Parallel(_Multi):
    """Each layer applied to the input, the results combined: ``Parallel(connection, f, g)(x)
    == connection(f(x), g(x))``. With several inputs, ``m(x1, x2)`` (or ``m((x1, x2))``)
    gives ``connection(f(x1), g(x2))``; a single layer is applied to every input. A
    `connection` of None returns the tuple of results. Layers may be named:
    ``Parallel(connection, a=f, b=g)``.

    >>> import fluxrs as fx
    >>> m = fx.Parallel(lambda a, b: a + b, fx.Dense(2, 3), fx.Dense(2, 3))
    >>> m
    Parallel(<lambda>, Dense(2 => 3), Dense(2 => 3))  # 18 parameters
    >>> m(fx.ones(2)).shape
    (3,)
    """

    def __init__(self, connection: Callable | None, *layers: Any, **named: Any):
        if connection is not None and not callable(connection):
            raise TypeError(f"Parallel(connection, layers...): connection must be callable, got {connection!r}")
        self.connection = connection
        self.layers = _collect("Parallel", layers, named)

    def __call__(self, *xs: Any) -> Any:
        if len(xs) == 1 and isinstance(xs[0], tuple):
            xs = xs[0]
        if not xs:
            raise TypeError("Parallel needs an input: call it as m(x), or m(x1, ..., xn) with one input per layer")
        layers = self._values()
        if len(xs) == 1:  # one input, every layer (no layer at all: connection())
            ys = [l(xs[0]) for l in layers]
        elif len(layers) == 1:  # one layer, every input; the connection is still called once
            ys = [layers[0](x) for x in xs]
        elif len(xs) == len(layers):
            ys = [l(x) for l, x in zip(layers, xs)]
        else:
            raise ValueError(f"Parallel with {len(layers)} layers takes 1 or {len(layers)} inputs, got {len(xs)}")
        return tuple(ys) if self.connection is None else self.connection(*ys)

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        return "Parallel(", [("", self.connection)] + self._layer_parts(), ")"


class SkipConnection(Layer):
    """``connection(layers(x), x)``: a residual block with ``operator.add``, a DenseNet-style
    concatenation with ``lambda y, x: fx.concat([y, x], axis=1)``.

    >>> import fluxrs as fx, operator
    >>> fx.SkipConnection(fx.Dense(2, 2), operator.add)(fx.ones(2)).shape
    (2,)
    """

    def __init__(self, layers: Callable, connection: Callable):
        if not callable(layers) or not callable(connection):
            raise TypeError("SkipConnection(layers, connection): both must be callable")
        self.layers = layers
        self.connection = connection

    def __call__(self, x: Any) -> Any:
        return self.connection(self.layers(x), x)

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        return "SkipConnection(", [("", self.layers), ("", self.connection)], ")"


class PairwiseFusion(_Multi):
    """A chain whose every layer also sees one extra input: with inputs ``(x1, ..., xn)``,
    ``y1 = f1(x1)`` and ``yi = fi(connection(y(i-1), xi))``; returns ``(y1, ..., yn)``.
    A single (non-tuple) input is used as every ``xi``.

    >>> import fluxrs as fx, operator
    >>> m = fx.PairwiseFusion(operator.add, fx.Dense(2, 2), fx.Dense(2, 2))
    >>> [tuple(y.shape) for y in m((fx.ones(2), fx.ones(2)))]
    [(2,), (2,)]
    """

    def __init__(self, connection: Callable, *layers: Any, **named: Any):
        if not callable(connection):
            raise TypeError(f"PairwiseFusion(connection, layers...): connection must be callable, got {connection!r}")
        self.connection = connection
        self.layers = _collect("PairwiseFusion", layers, named)
        if not self.layers:
            raise TypeError("PairwiseFusion needs at least one layer")

    def __call__(self, *xs: Any) -> tuple:
        layers = self._values()
        if len(xs) == 1 and isinstance(xs[0], tuple):
            xs = xs[0]
        if len(xs) == 1:
            xs = xs * len(layers)
        if len(xs) != len(layers):
            raise ValueError(f"PairwiseFusion with {len(layers)} layers takes 1 or {len(layers)} inputs, "
                             f"got {len(xs)}")
        ys = [layers[0](xs[0])]
        for l, x in zip(layers[1:], xs[1:]):
            ys.append(l(self.connection(ys[-1], x)))
        return tuple(ys)

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        return "PairwiseFusion(", [("", self.connection)] + self._layer_parts(), ")"


class Maxout(_Multi):
    """The elementwise maximum of several layers' outputs (Goodfellow et al. 2013):
    ``Maxout(layers...)``, or ``Maxout(make, n)`` calling ``make()`` n times for the layers.

    >>> import fluxrs as fx
    >>> m = fx.Maxout(lambda: fx.Dense(3, 2), 4)
    >>> len(m), m(fx.ones(5, 3)).shape
    (4, (5, 2))
    """

    def __init__(self, *layers: Any):
        if len(layers) == 2 and isinstance(layers[1], int) and not isinstance(layers[1], bool) \
                and callable(layers[0]) and not isinstance(layers[0], Layer):
            make, n = layers
            if n < 1:
                raise ValueError(f"Maxout(make, n): n must be positive, got {n}")
            layers = tuple(make() for _ in range(n))
        self.layers = _collect("Maxout", layers, {})
        if not self.layers:
            raise TypeError("Maxout needs at least one layer")

    def __call__(self, x: Any) -> Tensor:
        y = None
        for l in self.layers:
            z = l(x)
            y = z if y is None else maximum(y, z)  # any layer output: arrays too
        return y

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        return "Maxout(", self._layer_parts(), ")"
