"""Normalisation layers: BatchNorm, LayerNorm, GroupNorm and InstanceNorm, as Flux defines
them, batch-first: the channel axis is 1 (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``).

Running statistics (BatchNorm, and InstanceNorm with ``track_stats=True``) are model state
but not trainable: `fx.params` and `fx.setup` skip them, `fx.state` and `fx.save` keep them.
They are updated in training mode (see `fx.trainmode_`; automatic inside `fx.gradient`),
without recording, so no graph ever chains from one step to the next.

Flux's documented example: BatchNorm on 3 samples of 2 channels, in training mode.

>>> import fluxrs as fx
>>> bn = fx.BatchNorm(2)
>>> bn
BatchNorm(2)  # 4 parameters, plus 4 non-trainable
>>> y = fx.trainmode_(bn)(fx.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
>>> [[round(v, 4) for v in row] for row in y.tolist()]
[[-1.2247, -1.2247], [0.0, 0.0], [1.2247, 1.2247]]
>>> [round(v, 4) for v in bn.running_mean.tolist()], [round(v, 4) for v in bn.running_var.tolist()]
([0.3, 0.4], [1.3, 1.3])
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from fluxrs._checks import size
from fluxrs._core import Tensor
from fluxrs.activations import identity
from fluxrs.autodiff import no_grad
from fluxrs.layers.basic import as_input
from fluxrs.layers.init import create_weight, ones32, zeros32
from fluxrs.functor import Layer, short_repr
from fluxrs.layers.mode import ModalLayer
from fluxrs.tensor import tensor

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "normalise"]


def _check_real(v: Any, what: str, who: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (lo <= v <= hi):
        raise ValueError(f"{who}: {what} must be a real number in [{lo}, {hi}], got {v!r}")
    return float(v)


class _Norm(Layer):
    """Shared machinery: affine parameters ``scale`` (γ) and ``bias`` (β), the activation
    ``act`` (λ); `_Stats` adds running statistics and a training mode."""

    def _init_common(self, shape: tuple[int, ...], act: Callable, affine: bool, eps: float,
                     init_bias: Callable, init_scale: Callable, who: str) -> None:
        if not callable(act):
            raise TypeError(f"{who}: the activation must be callable, got {act!r}")
        # creation order is parameter order: Flux's params(BatchNorm(2)) is [β, γ]
        self.bias = create_weight(init_bias, shape, who) if affine else None
        self.scale = create_weight(init_scale, shape, who) if affine else None
        self.act = act
        self.eps = _check_real(eps, "eps", who)
        self.affine = bool(affine)

    # Flux's field names, for code ported from Julia
    @property
    def λ(self) -> Callable:
        return self.act

    @property
    def β(self) -> Tensor | None:
        return self.bias

    @property
    def γ(self) -> Tensor | None:
        return self.scale

    def trainable(self) -> tuple[str, ...]:
        return ("bias", "scale")

    def _input(self, x: Any) -> Tensor:
        like = self.scale if self.scale is not None else getattr(self, "running_mean", None)
        if like is not None:
            return as_input(x, like, self)
        return x if isinstance(x, Tensor) else tensor(x)

    def _affine_act(self, y: Tensor, pshape: list[int], inv_std: Tensor | None = None) -> Tensor:
        # y * (γ / std) + β: the per-channel factors are combined on the small tensors first
        if self.affine:
            g = self.scale.reshape(pshape)
            y = y * (g if inv_std is None else inv_std * g) + self.bias.reshape(pshape)
        elif inv_std is not None:
            y = y * inv_std
        return y if self.act is identity else self.act(y)

    def _flags_repr(self, affine_default: bool = True) -> str:
        s = ""
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if self.affine != affine_default:
            s += f", affine={self.affine}"
        return s


class _Stats(_Norm, ModalLayer):
    """A normalisation layer with running statistics ``running_mean`` (μ) and
    ``running_var`` (σ²), non-trainable, and a training mode (``active``)."""

    def _init_stats(self, ch: int, track_stats: bool, momentum: float, active: bool | None, who: str) -> None:
        if track_stats:
            dt = self.scale.dtype.name if self.affine else "float32"
            self.running_mean = Tensor(np.zeros(ch), dtype=dt)
            self.running_var = Tensor(np.ones(ch), dtype=dt)
        else:
            self.running_mean = self.running_var = None
        self.momentum = _check_real(momentum, "momentum", who, 0.0, 1.0)
        self.track_stats = bool(track_stats)
        if active not in (None, True, False):
            raise TypeError(f"{who}: active must be None, True or False, got {active!r}")
        self.active = active

    @property
    def μ(self) -> Tensor | None:
        return self.running_mean

    @property
    def σ2(self) -> Tensor | None:
        return self.running_var

    def _track(self, mean: Tensor, var: Tensor, m: int) -> None:
        """running = (1 - momentum) running + momentum batch (unbiased variance), unrecorded."""
        mom = self.momentum
        with no_grad():
            mean = mean.detach().reshape(self.running_mean.shape)
            var = var.detach().reshape(self.running_var.shape)
            self.running_mean.assign_(self.running_mean * (1.0 - mom) + mean * mom)
            self.running_var.assign_(self.running_var * (1.0 - mom) + var * (mom * m / (m - 1)))

    def _stats_repr(self, affine_default: bool = True, track_default: bool = True) -> str:
        s = self._flags_repr(affine_default)
        if self.track_stats != track_default:
            s += f", track_stats={self.track_stats}"
        return s + self._mode_repr()


def _moments(x: Tensor, axes: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean, mean, biased variance) over `axes`, keeping dims."""
    mean = x.mean(axes, True)
    xc = x - mean
    return xc, mean, (xc * xc).mean(axes, True)


def _standardise(x: Tensor, axes: tuple[int, ...], eps: float) -> Tensor:
    """Flux's ``normalise`` formula, ``(x - μ) / (σ + eps)`` with the population σ over `axes`
    (also LayerNorm's, which Flux defines by it). The smallest normal number under the square
    root keeps the gradient finite where σ = 0 (a constant slice), where ∂σ/∂var is infinite
    and ∂var/∂x zero, and changes no value."""
    xc, _, var = _moments(x, axes)
    return xc / ((var + float(np.finfo(x.dtype.name).tiny)).sqrt() + eps)


def normalise(x: Any, dims: Any = 0, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit standard deviation along `dims`: ``(x - μ) / (σ + eps)`` with the
    population σ, as Flux's ``normalise(x; dims=ndims(x), eps=1e-5)``. Flux's default, its
    last axis, is the batch axis; batch-first, that is axis 0, the default here: each feature
    is normalised across the batch. `dims` is an axis or a tuple of axes. Differentiable.

    >>> import fluxrs as fx
    >>> x = fx.tensor([90.0, 100.0, 110.0, 130.0, 70.0])   # mean 100, std 20
    >>> [round(v, 5) for v in fx.normalise(x).tolist()]
    [-0.5, 0.0, 0.5, 1.5, -1.5]
    >>> y = fx.normalise(fx.rand(10, 3) * 90 + 10)     # each of 3 features over a batch of 10
    >>> [round(v, 3) for v in ((y * y).mean(0) ** 0.5).tolist()]
    [1.0, 1.0, 1.0]
    """
    x = x if isinstance(x, Tensor) else tensor(x)
    if x.ndim == 0:
        raise ValueError("normalise: x must have at least one axis, got a 0-d tensor")
    axes = (dims,) if isinstance(dims, numbers.Integral) and not isinstance(dims, bool) else dims
    try:
        axes = tuple(axes) if not isinstance(axes, (str, bytes)) else None
    except TypeError:
        axes = None
    if axes is None:
        raise TypeError(f"normalise: dims must be an axis or a tuple of axes, got {dims!r}")
    if not axes or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) and -x.ndim <= a < x.ndim
                           for a in axes):
        raise ValueError(f"normalise: dims {dims!r} are not axes of x of shape {tuple(x.shape)}")
    eps = _check_real(eps, "eps", "normalise")
    return _standardise(x, tuple(int(a) % x.ndim for a in axes), eps)


class BatchNorm(_Stats):
    """Batch normalisation (Ioffe & Szegedy 2015) over the batch and spatial axes, per channel
    (axis 1): ``act(γ (x - μ) / √(σ² + ε) + β)``.

    ``BatchNorm(ch, act=identity, *, affine=True, track_stats=True, eps=1e-5, momentum=0.1,
    init_bias=zeros32, init_scale=ones32, active=None)``. In training mode it normalises with
    the batch's statistics and updates the running ones (``momentum`` weight on the batch,
    unbiased variance, as Flux); in test mode it uses the running statistics.

    >>> import fluxrs as fx
    >>> fx.BatchNorm(3, fx.relu)(fx.ones(4, 3, 5)).shape
    (4, 3, 5)
    """

    def __init__(self, ch: int, act: Callable = identity, *, affine: bool = True, track_stats: bool = True,
                 eps: float = 1e-5, momentum: float = 0.1, init_bias: Callable = zeros32,
                 init_scale: Callable = ones32, active: bool | None = None):
        ch = size("BatchNorm", "the number of channels", ch)
        who = f"BatchNorm({ch})"
        self._init_common((ch,), act, affine, eps, init_bias, init_scale, who)
        self._init_stats(ch, track_stats, momentum, active, who)
        self.chs = ch

    def __call__(self, x: Any) -> Tensor:
        x = self._input(x)
        if x.ndim < 2 or x.shape[1] != self.chs:
            raise ValueError(f"{self._repr_inner()} expects input (N, {self.chs}, ...) with {self.chs} channels "
                             f"on axis 1, got {tuple(x.shape)}")
        axes = (0,) + tuple(range(2, x.ndim))
        pshape = [1, self.chs] + [1] * (x.ndim - 2)
        active = self._is_active()
        if active or not self.track_stats:
            m = x.size // self.chs
            if active and m < 2:
                raise ValueError(f"{self._repr_inner()} in training mode needs more than one value per channel "
                                 f"to estimate the variance, got input of shape {tuple(x.shape)}; use "
                                 "fx.testmode_(model) to evaluate single samples")
            xc, mean, var = _moments(x, axes)
            if active and self.track_stats:
                self._track(mean, var, m)
            return self._affine_act(xc, pshape, (var + self.eps) ** -0.5)
        inv_std = (self.running_var.reshape(pshape) + self.eps) ** -0.5
        return self._affine_act(x - self.running_mean.reshape(pshape), pshape, inv_std)

    def _repr_inner(self) -> str:
        return f"BatchNorm({self.chs}{self._stats_repr()})"


class InstanceNorm(_Stats):
    """Instance normalisation (Ulyanov et al. 2016): each sample's each channel normalised over
    its spatial axes; input ``(N, C, L)``, ``(N, C, H, W)``, ...

    ``InstanceNorm(ch, act=identity, *, affine=False, track_stats=False, eps=1e-5,
    momentum=0.1, ...)`` (Flux's defaults: no affine parameters, no running statistics).

    >>> import fluxrs as fx
    >>> fx.InstanceNorm(2, affine=True)
    InstanceNorm(2, affine=True)  # 4 parameters
    """

    def __init__(self, ch: int, act: Callable = identity, *, affine: bool = False, track_stats: bool = False,
                 eps: float = 1e-5, momentum: float = 0.1, init_bias: Callable = zeros32,
                 init_scale: Callable = ones32, active: bool | None = None):
        ch = size("InstanceNorm", "the number of channels", ch)
        who = f"InstanceNorm({ch})"
        self._init_common((ch,), act, affine, eps, init_bias, init_scale, who)
        self._init_stats(ch, track_stats, momentum, active, who)
        self.chs = ch

    def __call__(self, x: Any) -> Tensor:
        x = self._input(x)
        if x.ndim < 3 or x.shape[1] != self.chs:
            raise ValueError(f"{self._repr_inner()} expects input (N, {self.chs}, spatial...) with {self.chs} "
                             f"channels on axis 1 and at least one spatial axis, got {tuple(x.shape)}")
        axes = tuple(range(2, x.ndim))
        pshape = [1, self.chs] + [1] * (x.ndim - 2)
        active = self._is_active()
        if active or not self.track_stats:
            m = math.prod(x.shape[2:])
            # an empty batch would average its statistics over no samples: NaN running stats
            if active and self.track_stats and (m < 2 or x.shape[0] == 0):
                raise ValueError(f"{self._repr_inner()} in training mode needs at least one sample and more than one "
                                 f"value per channel and sample, got input of shape {tuple(x.shape)}")
            xc, mean, var = _moments(x, axes)
            if active and self.track_stats:
                self._track(mean.mean(0), var.mean(0), m)
            return self._affine_act(xc, pshape, (var + self.eps) ** -0.5)
        inv_std = (self.running_var.reshape(pshape) + self.eps) ** -0.5
        return self._affine_act(x - self.running_mean.reshape(pshape), pshape, inv_std)

    def _repr_inner(self) -> str:
        return f"InstanceNorm({self.chs}{self._stats_repr(affine_default=False, track_default=False)})"


class GroupNorm(_Norm):
    """Group normalisation (Wu & He 2018): the channels are split into `groups` groups; each
    sample's each group is normalised over its channels and spatial axes, then scaled per
    channel. ``GroupNorm(ch, groups, act=identity, *, affine=True, eps=1e-5, ...)``;
    `ch` must be divisible by `groups`.

    >>> import fluxrs as fx
    >>> fx.GroupNorm(4, 2)
    GroupNorm(4, 2)  # 8 parameters
    """

    def __init__(self, ch: int, groups: int, act: Callable = identity, *, affine: bool = True,
                 eps: float = 1e-5, init_bias: Callable = zeros32, init_scale: Callable = ones32):
        ch = size("GroupNorm", "the number of channels", ch)
        groups = size("GroupNorm", "the number of groups", groups)
        if ch % groups:
            raise ValueError(f"GroupNorm({ch}, {groups}): the number of channels must be divisible by the "
                             "number of groups")
        self._init_common((ch,), act, affine, eps, init_bias, init_scale, f"GroupNorm({ch}, {groups})")
        self.chs = ch
        self.groups = groups

    @property
    def G(self) -> int:  # Flux's field name
        return self.groups

    def __call__(self, x: Any) -> Tensor:
        x = self._input(x)
        if x.ndim < 2 or x.shape[1] != self.chs:
            raise ValueError(f"{self._repr_inner()} expects input (N, {self.chs}, ...) with {self.chs} channels "
                             f"on axis 1, got {tuple(x.shape)}")
        shape = tuple(x.shape)
        n, g = shape[0], self.groups
        xg = x.reshape([n, g, self.chs // g] + list(shape[2:]))
        xc, _, var = _moments(xg, tuple(range(2, xg.ndim)))
        y = (xc * (var + self.eps) ** -0.5).reshape(list(shape))
        return self._affine_act(y, [1, self.chs] + [1] * (len(shape) - 2))

    def _repr_inner(self) -> str:
        return f"GroupNorm({self.chs}, {self.groups}{self._flags_repr()})"


class LayerNorm(_Norm):
    """Layer normalisation (Ba et al. 2016) over the trailing axes of shape `size`, then a
    learnable elementwise scale and bias of that shape: ``LayerNorm(size..., act=identity, *,
    affine=True, eps=1e-5)``. ``LayerNorm(64)`` normalises the features of ``(N, 64)`` or
    ``(N, L, 64)``; ``LayerNorm(4, 8)`` the last two axes. (Batch-first: Flux's leading axes
    are our trailing ones.) As Flux, it is `normalise`, ``(x - μ) / (σ + eps)``, not
    PyTorch's ``(x - μ) / √(σ² + eps)``.

    >>> import fluxrs as fx
    >>> fx.LayerNorm(5)
    LayerNorm(5)  # 10 parameters
    >>> fx.LayerNorm(3, 4, fx.relu)(fx.ones(2, 3, 4)).shape
    (2, 3, 4)
    """

    def __init__(self, *size_act: Any, affine: bool = True, eps: float = 1e-5,
                 init_bias: Callable = zeros32, init_scale: Callable = ones32):
        args = list(size_act)
        act: Callable = identity
        if args and callable(args[-1]):
            act = args.pop()
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = list(args[0])
        if not args:
            raise TypeError("LayerNorm(size...): give the size of the normalised axes, e.g. LayerNorm(64)")
        shape = tuple(size("LayerNorm(size...)", "each size", s) for s in args)
        self._init_common(shape, act, affine, eps, init_bias, init_scale, f"LayerNorm{shape}")
        self.size = shape

    def __call__(self, x: Any) -> Tensor:
        x = self._input(x)
        k = len(self.size)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.size:
            raise ValueError(f"{self._repr_inner()} expects input whose last {k} ax{'is' if k == 1 else 'es'} "
                             f"{'has' if k == 1 else 'have'} shape {self.size}, got {tuple(x.shape)}")
        y = _standardise(x, tuple(range(x.ndim - k, x.ndim)), self.eps)
        if self.affine:
            y = y * self.scale + self.bias
        return y if self.act is identity else self.act(y)

    def _repr_inner(self) -> str:
        s = "LayerNorm(" + ", ".join(str(v) for v in self.size)
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if not self.affine:
            s += ", affine=False"
        return s + ")"
