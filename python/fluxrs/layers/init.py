"""Weight initialisers, as Flux defines them.

Each is called with the dimensions of the array to make, Flux's order: a `Dense` weight is
``init(out, in)``. Random ones draw from this thread's generator (`fx.random.default_rng()`),
so `fx.seed_(n)` makes model creation reproducible and threads never share a stream.
Keyword `dtype` (default float32) and `rng` (a `numpy.random.Generator`) are accepted by all.

>>> import fluxrs as fx
>>> W = fx.glorot_uniform(32, 784)
>>> W.shape, W.dtype.name
((32, 784), 'float32')
>>> bool(abs(W).max() <= (6 / (784 + 32)) ** 0.5)
True
"""

from __future__ import annotations

import math

import numpy as np

from fluxrs._core import Tensor
from fluxrs.random import default_rng
from fluxrs.tensor import float32
from fluxrs.tensor import ones as _ones
from fluxrs.tensor import zeros as _zeros

__all__ = ["glorot_uniform", "glorot_normal", "kaiming_uniform", "kaiming_normal", "zeros32", "ones32",
           "zeros", "ones", "nfan"]


def nfan(*dims: int) -> tuple[int, int]:
    """(fan_in, fan_out) of an array of shape `dims`, as Flux's `nfan`: a vector is one
    output row, a matrix is (out, in), and a convolution kernel (out, in, k...) multiplies
    both by the receptive field size (batch-first layout: channels lead)."""
    if len(dims) == 0:
        return 1, 1
    if len(dims) == 1:
        return 1, dims[0]
    if len(dims) == 2:
        return dims[1], dims[0]
    field = math.prod(dims[2:])
    return dims[1] * field, dims[0] * field


def _dims(dims) -> tuple[int, ...]:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return tuple(int(d) for d in dims)


def _make(a: np.ndarray, dtype) -> Tensor:
    return Tensor(a, dtype=np.dtype(dtype).name)


def glorot_uniform(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Uniform on ±gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio 2010); Flux's default."""
    dims = _dims(dims)
    fan_in, fan_out = nfan(*dims)
    bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))  # no fans: an empty array, any bound
    rng = rng or default_rng()
    return _make((rng.random(dims) - 0.5) * (2.0 * bound), dtype)


def glorot_normal(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Normal with std gain·√(2 / (fan_in + fan_out))."""
    dims = _dims(dims)
    fan_in, fan_out = nfan(*dims)
    std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    rng = rng or default_rng()
    return _make(rng.standard_normal(dims) * std, dtype)


def kaiming_uniform(*dims, gain: float = math.sqrt(2.0), dtype=float32,
                    rng: np.random.Generator | None = None) -> Tensor:
    """Uniform on ±gain·√(3 / fan_in) (He et al. 2015), default gain √2 as Flux."""
    dims = _dims(dims)
    fan_in, _ = nfan(*dims)
    bound = gain * math.sqrt(3.0 / max(fan_in, 1))
    rng = rng or default_rng()
    return _make((rng.random(dims) - 0.5) * (2.0 * bound), dtype)


def kaiming_normal(*dims, gain: float = math.sqrt(2.0), dtype=float32,
                   rng: np.random.Generator | None = None) -> Tensor:
    """Normal with std gain / √fan_in."""
    dims = _dims(dims)
    fan_in, _ = nfan(*dims)
    rng = rng or default_rng()
    return _make(rng.standard_normal(dims) * (gain / math.sqrt(max(fan_in, 1))), dtype)


def zeros32(*dims, dtype=float32, rng=None) -> Tensor:
    """All zeros (Flux's `zeros32`); `rng` is accepted and ignored so every init has one signature."""
    return _zeros(*_dims(dims), dtype=dtype)


def ones32(*dims, dtype=float32, rng=None) -> Tensor:
    """All ones (Flux's `ones32`)."""
    return _ones(*_dims(dims), dtype=dtype)


# `init=fx.layers.init.zeros` reads naturally; the top level keeps `fx.zeros` as the tensor constructor.
zeros = zeros32  # noqa: F811
ones = ones32  # noqa: F811
