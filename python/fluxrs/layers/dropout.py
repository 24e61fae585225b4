"""Dropout and AlphaDropout, as Flux defines them.

Both are active in training mode only: automatically inside `fx.gradient` (and so in
`train_`), or as set by `fx.trainmode_` / `fx.testmode_`. Random masks come from this
thread's generator (`fx.random.default_rng()`, reseeded by `fx.seed_`) unless the layer was
given its own ``rng``.

>>> import fluxrs as fx
>>> d = fx.Dropout(0.5)
>>> d
Dropout(0.5)
>>> d(fx.ones(2, 3)).tolist()            # outside gradient: the identity
[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
>>> y = fx.trainmode_(d)(fx.ones(1000))
>>> sorted(set(y.tolist()))              # kept values are scaled by 1 / (1 - p)
[0.0, 2.0]
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from fluxrs._core import Tensor
from fluxrs.layers.mode import ModalLayer
from fluxrs.random import default_rng
from fluxrs.tensor import host_like, tensor

__all__ = ["Dropout", "AlphaDropout"]


def _check_p(p: Any, who: str) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{who}: the dropout probability p must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_active(active: Any, who: str) -> Any:
    if active not in (None, True, False):
        raise TypeError(f"{who}: active must be None, True or False, got {active!r}")
    return active


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else tensor(x)


class Dropout(ModalLayer):
    """Dropout (Srivastava et al. 2014): in training mode each entry is zeroed with
    probability `p` and the survivors scaled by ``1 / (1 - p)``; in test mode, the identity.

    ``Dropout(p, *, dims=None, rng=None, active=None)``. `dims` (an axis or a tuple of axes)
    makes the mask vary only along those axes and be shared along the others, as Flux's
    ``dims``: ``Dropout(0.2, dims=(0, 1))`` on ``(N, C, H, W)`` drops whole channels of each
    sample. `rng` is a ``numpy.random.Generator``; by default this thread's generator.
    """

    def __init__(self, p: float, *, dims: Any = None, rng: np.random.Generator | None = None,
                 active: bool | None = None):
        self.p = _check_p(p, "Dropout")
        if dims is not None:
            ds = (dims,) if isinstance(dims, numbers.Integral) else tuple(dims) if isinstance(dims, (tuple, list)) \
                else None
            if ds is None or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in ds):
                raise TypeError(f"Dropout: dims must be an axis or a tuple of axes, got {dims!r}")
            dims = tuple(int(d) for d in ds)
        self.dims = dims
        self.active = _check_active(active, "Dropout")
        self._rng = rng

    def _mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.dims is None:
            return shape
        nd = len(shape)
        keep = set()
        for d in self.dims:
            if not -nd <= d < nd:
                raise ValueError(f"{self._repr_inner()}: dims {self.dims} out of range for input of shape {shape}")
            keep.add(d % nd)
        return tuple(s if i in keep else 1 for i, s in enumerate(shape))

    def __call__(self, x: Any) -> Any:
        if not self._is_active() or self.p == 0.0:
            return x
        x = _as_tensor(x)
        shape = self._mask_shape(tuple(x.shape))
        if self.p == 1.0:
            return x * 0.0
        rng = self._rng or default_rng()
        # Flux's kernel: keep where rand > p, scaled by 1/(1-p)
        mask = (rng.random(shape) > self.p) * (1.0 / (1.0 - self.p))
        return x * host_like(mask, x)

    def _repr_inner(self) -> str:
        s = f"Dropout({self.p:g}"
        if self.dims is not None:
            s += f", dims={self.dims[0] if len(self.dims) == 1 else self.dims}"
        return s + self._mode_repr() + ")"


_ALPHA_PRIME = -1.7580993408473766  # selu(-inf) = -λα


class AlphaDropout(ModalLayer):
    """Alpha dropout (Klambauer et al. 2017), for self-normalising networks with `selu`: dropped
    entries are set to selu's negative saturation value and the result is affinely
    corrected so that zero mean and unit variance are kept. ``AlphaDropout(p, *, rng=None,
    active=None)``; the identity in test mode.

    >>> import fluxrs as fx
    >>> fx.AlphaDropout(0.2)
    AlphaDropout(0.2)
    """

    def __init__(self, p: float, *, rng: np.random.Generator | None = None, active: bool | None = None):
        self.p = _check_p(p, "AlphaDropout")
        self.active = _check_active(active, "AlphaDropout")
        self._rng = rng

    def __call__(self, x: Any) -> Any:
        if not self._is_active() or self.p == 0.0:
            return x
        x = _as_tensor(x)
        p = self.p
        if p == 1.0:
            return x.sign() * 0.0
        a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * _ALPHA_PRIME ** 2))
        b = -a * _ALPHA_PRIME * p
        keep = (self._rng or default_rng()).random(tuple(x.shape)) > p
        # A * (keep ? x : α′) + B, as two tensor ops: x * (A keep) + (A α′ (1 - keep) + B)
        return x * host_like(keep * a, x) + host_like(np.where(keep, b, a * _ALPHA_PRIME + b), x)

    def _repr_inner(self) -> str:
        return f"AlphaDropout({self.p:g}{self._mode_repr()})"
