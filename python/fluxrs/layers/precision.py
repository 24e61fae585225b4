"""`f32` and `f64`: convert every floating-point parameter of a model, as Flux's do.

>>> import fluxrs as fx
>>> m = fx.f64(fx.Dense(2, 3))
>>> m.weight.dtype.name, m.bias.dtype.name
('float64', 'float64')
"""

from __future__ import annotations

from typing import Any

from fluxrs._core import Tensor
from fluxrs.functor import fmap

__all__ = ["f32", "f64"]


def _convert(model: Any, dtype: str) -> Any:
    def conv(p: Tensor) -> Tensor:
        if p.dtype.kind != "f" or p.dtype.name == dtype:
            return p
        # detach: the converted tensor is a new leaf, not a function of the old parameter
        return p.astype(dtype).detach()
    return fmap(conv, model)


def f32(model: Any) -> Any:
    """A copy of `model` with float32 parameters."""
    return _convert(model, "float32")


def f64(model: Any) -> Any:
    """A copy of `model` with float64 parameters (for gradient checks)."""
    return _convert(model, "float64")
