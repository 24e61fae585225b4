"""Weight initialisers, as Flux defines them.

Each is called with the dimensions of the array to make, Flux's order: a `Dense` weight is
``init(out, in)``. Random ones draw from this thread's generator (`fx.random.default_rng()`),
so `fx.seed_(n)` makes model creation reproducible and threads never share a stream.
Keyword `dtype` (default float32) and `rng` (a `numpy.random.Generator`) are accepted by all;
the generator may also come first, as in Flux's ``init(rng, dims...)``.

Called without dimensions, an initialiser returns itself with the arguments given fixed
(Flux's partial application), to pass as a layer's `init`; later keywords override them.

>>> import fluxrs as fx, numpy as np
>>> W = fx.glorot_uniform(32, 784)
>>> W.shape, W.dtype.name
((32, 784), 'float32')
>>> bool(abs(W).max() <= (6 / (784 + 32)) ** 0.5)
True
>>> init = fx.kaiming_uniform(gain=2.0)
>>> init
kaiming_uniform(gain=2.0)
>>> fx.Dense(3, 2, init=init).weight.shape, fx.glorot_uniform(np.random.default_rng(0))(2, 3).shape
((2, 3), (2, 3))
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
from typing import Any, Callable

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs.random import default_rng
from fluxrs.tensor import float32
from fluxrs.tensor import ones as _ones
from fluxrs.tensor import zeros as _zeros

__all__ = ["glorot_uniform", "glorot_normal", "kaiming_uniform", "kaiming_normal", "zeros32", "ones32",
           "zeros", "ones", "nfan", "orthogonal", "sparse_init", "truncated_normal", "lecun_normal", "identity_init"]


def _size(d: Any, dims: tuple, who: str) -> int:
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
        raise TypeError(f"{who}: dims must be whole numbers, got {dims!r}")
    if d < 0:
        raise ValueError(f"{who}: dims must be >= 0, got {dims!r}")
    return int(d)


def nfan(*dims: Any) -> tuple[int, int]:
    """(fan_in, fan_out) of an array of shape `dims`, as Flux's `nfan`: a vector is one
    output row, a matrix is (out, in), and a convolution kernel (out, in, k...) multiplies
    both by the receptive field size (batch-first layout: channels lead). The shape may
    also be one tuple, as Flux's ``nfan(dims::Tuple)``.

    >>> from fluxrs.layers.init import nfan
    >>> nfan(100, 200) == nfan((100, 200)) == (200, 100), nfan(50, 40, 2, 3)  # Conv((2, 3), 40 => 50)
    (True, (240, 300))
    """
    dims = _dims(dims, "nfan")
    if len(dims) == 0:
        return 1, 1
    if len(dims) == 1:
        return 1, dims[0]
    if len(dims) == 2:
        return dims[1], dims[0]
    field = math.prod(dims[2:])
    return dims[1] * field, dims[0] * field


def _dims(dims: tuple, who: str) -> tuple[int, ...]:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return tuple(_size(d, dims, who) for d in dims)


def _make(a: np.ndarray, dtype) -> Tensor:
    return Tensor(a, dtype=np.dtype(dtype).name)


class _Partial:
    """An initialiser with some arguments fixed: what ``init(**kw)`` or ``init(rng)`` returns."""

    def __init__(self, init: Callable, kwargs: dict):
        self.init, self.kwargs = init, kwargs
        functools.update_wrapper(self, init)

    def __call__(self, *dims: Any, **kwargs: Any) -> Any:
        return self.init(*dims, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.init.__name__}({args})"


def _initialiser(f: Callable) -> Callable:
    """Flux's calling conventions for the initialiser `f(*dims, rng=, **kw)`: the generator
    may come first (``init(rng, dims...)``), and without dimensions the call returns the
    initialiser with its arguments fixed (``init(gain=2)``, ``init(rng)``)."""
    accepted = {k for k, p in inspect.signature(f).parameters.items() if p.kind is p.KEYWORD_ONLY}

    @functools.wraps(f)
    def init(*dims: Any, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(f"{f.__name__}: unexpected keyword argument {unknown[0]!r}; it takes "
                            f"{', '.join(sorted(accepted))}")
        if dims and isinstance(dims[0], np.random.Generator):
            if kwargs.get("rng") is not None:
                raise TypeError(f"{f.__name__}(rng, dims...): a generator given twice, first and as rng=")
            kwargs["rng"], dims = dims[0], dims[1:]
        rng = kwargs.get("rng")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"{f.__name__}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if not dims:
            return _Partial(init, kwargs)
        return f(*_dims(dims, f.__name__), **kwargs)

    return init


@_initialiser
def glorot_uniform(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Uniform on ±gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio 2010); Flux's default."""
    fan_in, fan_out = nfan(*dims)
    bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))  # no fans: an empty array, any bound
    rng = rng or default_rng()
    return _make((rng.random(dims) - 0.5) * (2.0 * bound), dtype)


@_initialiser
def glorot_normal(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Normal with std gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = nfan(*dims)
    std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    rng = rng or default_rng()
    return _make(rng.standard_normal(dims) * std, dtype)


@_initialiser
def kaiming_uniform(*dims, gain: float = math.sqrt(2.0), dtype=float32,
                    rng: np.random.Generator | None = None) -> Tensor:
    """Uniform on ±gain·√(3 / fan_in) (He et al. 2015), default gain √2 as Flux."""
    fan_in, _ = nfan(*dims)
    bound = gain * math.sqrt(3.0 / max(fan_in, 1))
    rng = rng or default_rng()
    return _make((rng.random(dims) - 0.5) * (2.0 * bound), dtype)


@_initialiser
def kaiming_normal(*dims, gain: float = math.sqrt(2.0), dtype=float32,
                   rng: np.random.Generator | None = None) -> Tensor:
    """Normal with std gain / √fan_in."""
    fan_in, _ = nfan(*dims)
    rng = rng or default_rng()
    return _make(rng.standard_normal(dims) * (gain / math.sqrt(max(fan_in, 1))), dtype)


@_initialiser
def orthogonal(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """A random orthogonal matrix times `gain` (Saxe et al. 2014), Flux's ``orthogonal``: the
    QR decomposition of a normal matrix, signs fixed so that the result is uniform over
    orthogonal matrices. A matrix ``(rows, cols)`` has orthonormal rows (``W Wᵀ = I``) when
    ``rows < cols``, else orthonormal columns (``Wᵀ W = I``); a vector has norm `gain`. More dimensions: the matrix
    ``(dims[0], prod(dims[1:]))``, reshaped (a conv weight ``(out, in, k...)``: one row per
    output channel; Flux's column-major array holds the same numbers).

    >>> import fluxrs as fx, numpy as np
    >>> W = fx.orthogonal(5, 3).numpy()
    >>> bool(np.allclose(W.T @ W, np.eye(3), atol=1e-5))
    True
    >>> fx.orthogonal(4, 3, 3, 3, gain=2).shape
    (4, 3, 3, 3)
    """
    if not dims:
        raise ValueError("orthogonal: needs at least 1 dimension, got shape ()")
    rows, cols = dims[0], math.prod(dims[1:])  # a vector: one column, a unit vector times gain
    rng = rng or default_rng()
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # Flux's sign fix: Q * sign.(Diagonal(R))
    w = q if rows >= cols else q.T
    return _make((w * gain).reshape(dims), dtype)


@_initialiser
def sparse_init(*dims, sparsity: float, std: float = 0.01, dtype=float32,
                rng: np.random.Generator | None = None) -> Tensor:
    """A sparse matrix (Martens 2010), Flux's ``sparse_init``: normal with standard deviation
    `std`, with exactly ``ceil(sparsity * rows)`` zeros in each column, at random places.
    Only for matrices (a `Dense` weight ``(out, in)``: each input feeds a fraction
    ``1 - sparsity`` of the outputs).

    >>> import fluxrs as fx, numpy as np
    >>> W = fx.sparse_init(10, 4, sparsity=0.3).numpy()
    >>> (W == 0).sum(axis=0).tolist()
    [3, 3, 3, 3]
    """
    if len(dims) != 2:
        raise ValueError(f"sparse_init: only matrices (2 dimensions) are supported, got shape {dims}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparse_init: sparsity must be a real number, got {sparsity!r}")
    rows, cols = dims
    n_zero = max(0, math.ceil(min(1.0, float(sparsity)) * rows))
    rng = rng or default_rng()
    a = rng.standard_normal(dims) * std
    a[:n_zero] = 0.0
    return _make(rng.permuted(a, axis=0), dtype)  # each column shuffled on its own


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@_initialiser
def truncated_normal(*dims, mean: float = 0.0, std: float = 1.0, lo: float = -2.0, hi: float = 2.0,
                     dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Normal with `mean` and `std`, truncated to ``[lo, hi]`` (Flux's ``truncated_normal``,
    same defaults). Flux inverts the CDF with ``erfinv``; numpy has none, so this draws by
    rejection, which gives the same distribution. As Flux, it warns when the mean is more
    than 2 std outside the limits.

    >>> import fluxrs as fx
    >>> W = fx.truncated_normal(100, 100)
    >>> bool(-2 <= W.min() and W.max() <= 2)
    True
    """
    if not std > 0 or not lo < hi:
        raise ValueError(f"truncated_normal: need std > 0 and lo < hi, got std={std}, lo={lo}, hi={hi}")
    if mean < lo - 2 * std or mean > hi + 2 * std:
        warnings.warn("truncated_normal: the mean is more than 2 std outside the limits, so the distribution of "
                      "values may be inaccurate", stacklevel=2)
    p = _norm_cdf((hi - mean) / std) - _norm_cdf((lo - mean) / std)  # the chance a draw lands inside
    if p < 1e-6:
        raise ValueError(f"truncated_normal: [lo, hi] = [{lo}, {hi}] holds a fraction {p:.1e} of N({mean}, {std}²); "
                         "move the limits or the mean")
    rng = rng or default_rng()
    n = math.prod(dims)
    out = np.empty(n)
    filled = 0
    while filled < n:
        draw = rng.normal(mean, std, size=int((n - filled) / p * 1.1) + 16)
        draw = draw[(draw >= lo) & (draw <= hi)][:n - filled]
        out[filled:filled + draw.size] = draw
        filled += draw.size
    return _make(out.reshape(dims), dtype)


# std of the standard normal truncated to [-2, 2]: lecun_normal divides by it so that the
# truncated draw has the variance asked for, as JAX and Keras do.
_TRUNC2_STD = 0.87962566103423978


@_initialiser
def lecun_normal(*dims, gain: float = 1.0, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """LeCun normal (LeCun et al. 1998; the init for `selu` networks): standard deviation
    ``gain / √fan_in``, truncated at ±2σ and rescaled so that the variance is exactly
    ``gain² / fan_in``. Flux has no ``lecun_normal``; this is JAX's and Keras's.

    >>> import fluxrs as fx
    >>> W = fx.lecun_normal(300, 400)
    >>> round(float(W.numpy().std() * 400 ** 0.5), 1)
    1.0
    """
    fan_in, _ = nfan(*dims)
    std = gain / math.sqrt(max(fan_in, 1)) / _TRUNC2_STD
    return truncated_normal(dims, std=std, lo=-2 * std, hi=2 * std, dtype=dtype, rng=rng)


@_initialiser
def identity_init(*dims, gain: float = 1.0, shift=0, dtype=float32, rng=None) -> Tensor:
    """An array that makes most layers an identity map (times `gain`), Flux's
    ``identity_init``: a vector is zeros (a bias), a matrix ``(out, in)`` the identity
    (padded with zeros when out ≠ in), and a conv weight ``(out, in, k...)`` a centre tap
    ``W[i, i, centre...] = gain`` (an identity with odd kernels and ``pad=fx.SamePad()``).
    `shift` rolls the result (numpy's ``roll`` over the leading axes; Flux's ``circshift``).
    `rng` is accepted and ignored: nothing is random.

    >>> import fluxrs as fx
    >>> fx.identity_init(3, 5).tolist()
    [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]]
    >>> fx.Dense(5, 3, fx.relu, init=fx.identity_init)(fx.tensor([1.0, -2.0, 3.0, -4.0, 5.0])).tolist()
    [1.0, 0.0, 3.0]
    >>> fx.identity_init(2, 2, 3, gain=1.5)[:, :, 1].tolist()   # a (3,) kernel: centre tap 1
    [[1.5, 0.0], [0.0, 1.5]]
    """
    a = np.zeros(dims)
    if len(dims) == 2:
        np.fill_diagonal(a, gain)
    elif len(dims) > 2:
        centre = tuple((d - 1) // 2 for d in dims[2:])  # Flux's cld(d, 2), 0-based
        for i in range(min(dims[0], dims[1])):
            a[(i, i) + centre] = gain
    if shift:
        shifts = (shift,) if isinstance(shift, numbers.Integral) else tuple(shift)
        a = np.roll(a, shifts, axis=tuple(range(len(shifts))))
    return _make(a, dtype)


def zeros32(*dims, dtype=float32, rng=None) -> Tensor:
    """All zeros (Flux's `zeros32`); `rng` is accepted and ignored so every init has one signature."""
    return _zeros(*_dims(dims, "zeros32"), dtype=dtype)


def ones32(*dims, dtype=float32, rng=None) -> Tensor:
    """All ones (Flux's `ones32`)."""
    return _ones(*_dims(dims, "ones32"), dtype=dtype)


# `init=fx.layers.init.zeros` reads naturally; the top level keeps `fx.zeros` as the tensor constructor.
zeros = zeros32  # noqa: F811
ones = ones32  # noqa: F811


# ---------------------------------------------------------------- a layer's parameters

def create_weight(init: Callable, shape: tuple[int, ...], who: str) -> Tensor:
    """``init(*shape)`` as a tensor (an array becomes float32), checked to have `shape`;
    `who` (the layer as constructed) names it in the error."""
    w = init(*shape)
    if not isinstance(w, Tensor):
        w = Tensor(np.asarray(w, dtype=np.float32))
    if tuple(w.shape) != shape:
        raise ValueError(f"{who}: init returned shape {tuple(w.shape)}, expected {shape}")
    return w


def create_bias(weight: Tensor, bias: Any, shape: tuple[int, ...], who: str) -> Tensor | None:
    """A layer's bias, as Flux's ``create_bias``: None for False (or None), zeros of
    `weight`'s dtype for True, else the array given (converted to `weight`'s dtype unless it is
    a tensor), checked to have `shape`."""
    if bias is False or bias is None:
        return None
    if bias is True:
        return _core.full(list(shape), 0.0, weight.dtype.name)
    b = bias if isinstance(bias, Tensor) else Tensor(np.asarray(bias), dtype=weight.dtype.name)
    if tuple(b.shape) != shape:
        raise ValueError(f"{who}: bias must have shape {shape}, got {tuple(b.shape)}")
    return b
