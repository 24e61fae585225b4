"""Flux-style printing of models: the layer as you would write it, then the parameter count.

>>> import fluxrs as fx
>>> fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)
Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax)  # 25_450 parameters
"""

from __future__ import annotations

from typing import Any

from fluxrs.functor import leaves

__all__ = ["short_repr", "param_count", "show"]


def short_repr(x: Any) -> str:
    """How `x` reads inside a model's repr: a layer as constructed, a function by the name
    Flux prints (``σ`` for sigmoid), anything else by its own repr."""
    inner = getattr(x, "_repr_inner", None)
    if callable(inner) and not isinstance(x, type):
        return inner()
    name = getattr(x, "flux_name", None) or getattr(x, "__name__", None)
    if name is not None and callable(x):
        return name if name != "<lambda>" else "<lambda>"
    return repr(x)


def param_count(x: Any) -> tuple[int, int]:
    """(trainable, non-trainable) number of parameters of a model."""
    trainable = leaves(x, trainable_only=True)
    ids = {id(t) for t in trainable}
    n = sum(t.size for t in trainable)
    other = sum(t.size for t in leaves(x, trainable_only=False) if id(t) not in ids)
    return n, other


def show(x: Any) -> str:
    """The top-level repr: the short form plus ``# N parameters`` (and the non-trainable
    count when there is any, as Flux prints for BatchNorm)."""
    n, other = param_count(x)
    s = short_repr(x)
    if n or other:
        s += f"  # {n:_} parameters"
        if other:
            s += f", plus {other:_} non-trainable"
    return s
