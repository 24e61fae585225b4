"""Activation functions, as NNlib.jl defines them (the ones Flux re-exports).

Each is an ordinary function of a tensor built from differentiable tensor ops, so it can be
used anywhere: as a `Dense` activation, as a layer of a `Chain`, or inside a loss. Array-likes
are converted with `fx.tensor`; a plain Python number gives a plain float back.

>>> import fluxrs as fx
>>> fx.relu(fx.tensor([-1.0, 2.0])).tolist()
[0.0, 2.0]
>>> round(fx.σ(0.0), 3)
0.5
>>> fx.softmax(fx.tensor([[1.0, 1.0]])).tolist()
[[0.5, 0.5]]
>>> fx.gradient(lambda x: fx.tanh(x), 0.0)
(1.0,)

This module is also callable: ``fx.activations(chain, x)`` is Flux's ``activations``, the
output of every layer of a Chain (`fluxrs.utils.activations`, which makes it so), so both
Flux names work.

Batch-first convention: `softmax` and `logsoftmax` normalise over the last axis by default
(the class axis of an `(N, C)` batch), where Flux's column-major `dims=1` would be.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from fluxrs._core import Tensor
from fluxrs.autodiff import in_gradient
from fluxrs.random import default_rng
from fluxrs.tensor import host_like, tensor, where

__all__ = ["identity", "sigmoid", "σ", "relu", "tanh", "softmax", "logsoftmax", "leakyrelu", "elu", "gelu",
           "swish", "softplus", "celu", "selu", "hardsigmoid", "hardtanh", "relu6", "mish", "tanhshrink",
           "softsign", "logsigmoid", "lisht", "hardswish", "rrelu", "trelu", "softshrink", "hardshrink", "logcosh",
           "ACTIVATIONS"]


def _activation(name: str | None = None, fused: str | None = None):
    """Decorator: lift `f(tensor, ...)` to accept array-likes and numbers, and record the
    name Flux prints (``σ`` for sigmoid) and, where one exists, the name of the activation
    the fused Rust Dense kernel understands."""

    def wrap(f: Callable[..., Tensor]) -> Callable[..., Any]:
        def act(x, *args, **kwargs):
            if isinstance(x, Tensor):
                return f(x, *args, **kwargs)
            if isinstance(x, numbers.Real) and not isinstance(x, bool):
                # Numbers stay numbers (NNlib's activations are scalar functions); float64
                # keeps the precision a Python float has.
                return float(f(tensor(float(x), dtype="float64"), *args, **kwargs))
            try:
                t = tensor(x)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{f.__name__}: {e}") from None
            return f(t, *args, **kwargs)

        act.__name__ = act.__qualname__ = f.__name__
        act.__doc__ = f.__doc__
        act.__module__ = __name__
        act.__wrapped__ = f
        act.flux_name = name or f.__name__
        act.fused_name = fused
        return act

    return wrap


def identity(x: Any) -> Any:
    """Returns its argument, whatever it is, unconverted (the default activation of `Dense`;
    Julia's ``identity``, so ``fx.Chain(fx.identity)(1, 2)`` is the tuple ``(1, 2)``, as in Flux).

    >>> import fluxrs as fx
    >>> fx.identity((1, 2))
    (1, 2)
    """
    return x


identity.flux_name = "identity"
identity.fused_name = "identity"


@_activation(name="σ", fused="sigmoid")
def sigmoid(x: Tensor) -> Tensor:
    """σ(x) = 1 / (1 + exp(-x)).

    >>> import fluxrs as fx
    >>> [round(v, 4) for v in fx.sigmoid([-1.0, 0.0]).tolist()]
    [0.2689, 0.5]
    """
    return x.sigmoid()


σ = sigmoid


@_activation(fused="relu")
def relu(x: Tensor) -> Tensor:
    """max(0, x)."""
    return x.relu()


@_activation(fused="tanh")
def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent."""
    return x.tanh()


def _axis(dims, axis, who: str = "softmax") -> int:
    # Flux spells it `dims`; numpy users write `axis`: accept both, not both at once.
    if axis is not None and not (isinstance(dims, numbers.Integral) and dims == -1):
        raise TypeError(f"{who}: give either dims= (Flux) or axis= (numpy), not both")
    a = axis if axis is not None else dims
    if isinstance(a, bool) or not isinstance(a, numbers.Integral):
        raise TypeError(f"{who}: the axis (dims) must be an integer, got {a!r}")
    if not -2**62 <= a < 2**62:  # would not fit the core's isize: out of range for any tensor
        raise ValueError(f"{who}: axis {a} is out of range")
    return int(a)


def _param(v, name: str, who: str) -> float:
    """A real-valued hyperparameter of an activation (leakyrelu's `a`, celu's `alpha`)."""
    if isinstance(v, Tensor) and v.size == 1:
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{who}: {name} must be a real number, got {type(v).__name__}")
    return float(v)


@_activation()
def softmax(x: Tensor, dims: int = -1, *, axis: int | None = None) -> Tensor:
    """exp(x) / sum(exp(x)) along `dims` (default: the last axis, the class axis of a batch).

    >>> import fluxrs as fx
    >>> [round(v, 4) for v in fx.softmax([1.0, 2.0, 3.0]).tolist()]
    [0.09, 0.2447, 0.6652]
    """
    return x.softmax(_axis(dims, axis, "softmax"))


@_activation()
def logsoftmax(x: Tensor, dims: int = -1, *, axis: int | None = None) -> Tensor:
    """log(softmax(x)), computed stably."""
    return x.logsoftmax(_axis(dims, axis, "logsoftmax"))


@_activation()
def leakyrelu(x: Tensor, a: float = 0.01) -> Tensor:
    """x for x > 0, else a * x (NNlib's default a = 0.01).

    >>> import fluxrs as fx
    >>> fx.leakyrelu(fx.tensor([-2.0, 3.0]), 0.5).tolist()
    [-1.0, 3.0]
    """
    return x.leakyrelu(_param(a, "a", "leakyrelu"))


@_activation()
def elu(x: Tensor, a: float = 1.0) -> Tensor:
    """x for x > 0, else a * (exp(x) - 1)."""
    return x.elu(_param(a, "a", "elu"))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@_activation()
def gelu(x: Tensor) -> Tensor:
    """GELU, the tanh approximation NNlib uses for `gelu`:
    0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))).

    >>> import fluxrs as fx
    >>> round(fx.gelu(1.0), 6)
    0.841192
    """
    return 0.5 * x * (1.0 + (_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())


@_activation()
def swish(x: Tensor) -> Tensor:
    """x * σ(x)."""
    return x * x.sigmoid()


@_activation()
def hardswish(x: Tensor) -> Tensor:
    """x * hardσ(x)."""
    return x * ((x + 3.0) / 6.0).clamp(0.0, 1.0)


@_activation()
def lisht(x: Tensor) -> Tensor:
    """x * tanh(x)."""
    return x * x.tanh()


@_activation()
def softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)), computed stably."""
    return x.softplus()


@_activation()
def logsigmoid(x: Tensor) -> Tensor:
    """log(σ(x)) = -softplus(-x)."""
    return -((-x).softplus())


def _expm1_neg(x: Tensor, scale: float = 1.0) -> Tensor:
    # exp(min(x, 0) / scale) - 1: the negative branch of elu-like functions. Clamping first
    # keeps exp finite on the positive side, whose branch `where` discards: otherwise its
    # backward would multiply a zero by an infinite exp and produce NaN.
    return (x.clamp(None, 0.0) / scale).exp() - 1.0


@_activation()
def celu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, else α (exp(x/α) - 1)."""
    alpha = _param(alpha, "alpha", "celu")
    if alpha == 0:
        raise ValueError("celu: alpha must be nonzero (it divides x)")
    return where(x > 0, x, alpha * _expm1_neg(x, alpha))


_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


@_activation()
def selu(x: Tensor) -> Tensor:
    """λ x for x > 0, else λ α (exp(x) - 1), with NNlib's λ ≈ 1.0507 and α ≈ 1.6733."""
    return _SELU_LAMBDA * where(x > 0, x, _SELU_ALPHA * _expm1_neg(x))


@_activation(name="hardσ")
def hardsigmoid(x: Tensor) -> Tensor:
    """max(0, min(1, (x + 3) / 6)), as NNlib defines `hardσ`."""
    return ((x + 3.0) / 6.0).clamp(0.0, 1.0)


@_activation()
def hardtanh(x: Tensor) -> Tensor:
    """max(-1, min(1, x))."""
    return x.clamp(-1.0, 1.0)


@_activation()
def relu6(x: Tensor) -> Tensor:
    """min(max(0, x), 6)."""
    return x.clamp(0.0, 6.0)


@_activation()
def mish(x: Tensor) -> Tensor:
    """x * tanh(softplus(x))."""
    return x * x.softplus().tanh()


@_activation()
def tanhshrink(x: Tensor) -> Tensor:
    """x - tanh(x)."""
    return x - x.tanh()


@_activation()
def softsign(x: Tensor) -> Tensor:
    """x / (1 + |x|)."""
    return x / (1.0 + x.abs())


@_activation()
def rrelu(x: Tensor, lo: float = 1 / 8, hi: float = 1 / 3, *, active: bool | None = None) -> Tensor:
    """Randomised leaky ReLU: x for x > 0, else a * x with a slope `a` drawn from U(lo, hi) for
    every element (Xu et al. 2015), from this thread's generator (`fx.seed_`).

    NNlib draws the slopes on every call. Here, as for `Dropout`, the slopes are random only
    while training: inside `fx.gradient` by default (`active=None`), always with `active=True`;
    otherwise (`active=False`, or outside a gradient) every slope is the mean (lo + hi) / 2,
    as the paper does at test time.

    >>> import fluxrs as fx
    >>> fx.rrelu(fx.tensor([-24.0, 3.0])).tolist()             # outside gradient: the mean slope
    [-5.5, 3.0]
    >>> fx.seed_(0); y = fx.rrelu(fx.full(1000, -10.0), active=True)
    >>> bool(-10 / 3 <= y.min() and y.max() <= -10 / 8)
    True
    """
    lo, hi = _param(lo, "lo", "rrelu"), _param(hi, "hi", "rrelu")
    if not 0 <= lo <= hi:
        raise ValueError(f"rrelu: need 0 <= lo <= hi, got lo={lo}, hi={hi}")
    if active not in (None, True, False):
        raise TypeError(f"rrelu: active must be None, True or False, got {active!r}")
    if in_gradient() if active is None else active:
        a = host_like(default_rng().uniform(lo, hi, size=tuple(x.shape)), x)
        return where(x > 0, x, a * x)
    return where(x > 0, x, x * ((lo + hi) / 2))


@_activation()
def trelu(x: Tensor, theta: float = 1.0) -> Tensor:
    """Threshold ReLU: x for x > theta, else 0 (NNlib's default theta = 1).

    >>> import fluxrs as fx
    >>> fx.trelu(fx.tensor([0.5, 1.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    theta = _param(theta, "theta", "trelu")
    return where(x > theta, x, 0.0)


@_activation()
def softshrink(x: Tensor, λ: float = 0.5) -> Tensor:
    """x - λ for x ≥ λ, x + λ for x ≤ -λ, else 0 (NNlib's default λ = 0.5).

    >>> import fluxrs as fx
    >>> fx.softshrink(fx.tensor([-10.0, 0.2, 10.0])).tolist()
    [-9.5, 0.0, 9.5]
    """
    lam = _param(λ, "λ", "softshrink")
    if lam < 0:
        raise ValueError(f"softshrink: λ must be non-negative, got {lam}")
    return x - x.clamp(-lam, lam)


@_activation()
def hardshrink(x: Tensor, λ: float = 0.5) -> Tensor:
    """x for |x| > λ, else 0 (default λ = 0.5). NNlib has no `hardshrink`: this is PyTorch's
    ``Hardshrink``, the hard counterpart of `softshrink`.

    >>> import fluxrs as fx
    >>> fx.hardshrink(fx.tensor([-1.0, 0.2, 0.5, 2.0])).tolist()
    [-1.0, 0.0, 0.0, 2.0]
    """
    lam = _param(λ, "λ", "hardshrink")
    if lam < 0:
        raise ValueError(f"hardshrink: λ must be non-negative, got {lam}")
    return where(x.abs() > lam, x, 0.0)


_LOG2 = math.log(2.0)


@_activation()
def logcosh(x: Tensor) -> Tensor:
    """log(cosh(x)), computed stably as NNlib does: x + softplus(-2x) - log(2).

    >>> import fluxrs as fx
    >>> round(fx.logcosh(1.0), 6), round(fx.logcosh(-100.0), 4)
    (0.433781, 99.3069)
    """
    return x + (-2.0 * x).softplus() - _LOG2


#: Every activation by name (σ included), for lookups from configuration and for plugins.
ACTIVATIONS: dict[str, Callable] = {f.__name__: f for f in (
    identity, sigmoid, relu, tanh, softmax, logsoftmax, leakyrelu, elu, gelu, swish, hardswish, lisht, softplus,
    logsigmoid, celu, selu, hardsigmoid, hardtanh, relu6, mish, tanhshrink, softsign, rrelu, trelu, softshrink,
    hardshrink, logcosh)}
ACTIVATIONS["σ"] = sigmoid
ACTIVATIONS["hardσ"] = hardsigmoid
