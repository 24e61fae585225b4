"""Flux.Losses in Python: every loss of Flux's `Losses` module, with Flux's keywords.

>>> import fluxrs as fx
>>> round(float(fx.losses.mse(fx.tensor([1.1, 1.9, 3.1]), [1, 2, 3])), 6)
0.01

Conventions (see DESIGN.md):

- Every loss is ``loss(ŷ, y, **keywords)``; ŷ is the model output, y the target. Targets may be
  tensors, numpy arrays, lists or numbers; they are converted to ŷ's dtype. ŷ and y must have the
  same shape (a plain number y is broadcast): a mismatch raises ``ValueError`` naming both shapes.
- ``agg`` reduces the elementwise (or per-sample) losses: ``mean`` (default), ``sum``, or any
  callable taking a tensor (``agg=lambda l: l`` keeps them unreduced, as ``agg=identity`` does in
  Flux). Python's ``sum``, ``numpy.sum``/``numpy.mean`` and the strings ``"mean"``/``"sum"`` all
  reduce over every element, as Julia's ``sum``/``mean`` do.
- ``dims`` is the class axis, batch-first: for a classifier output of shape ``(N, C)`` it is 1
  (the default for any input of two or more dimensions; 0 for a single vector of shape ``(C,)``).
  Flux stores the same data column-major as ``(C, N)`` and says ``dims=1``. In general an array
  of ``n`` dimensions that Flux indexes as ``(d1, ..., dn)`` is ``(dn, ..., d1)`` here, so Flux's
  ``dims=d`` is ``dims=n - d`` here (segmentation output ``(W, H, C, N)`` with Flux ``dims=3`` is
  ``(N, C, H, W)`` with ``dims=1``). Negative axes count from the end.
- Greek keywords have ASCII names: ``eps`` (ϵ), ``delta`` (δ), ``beta`` (β), ``gamma`` (γ);
  ``ϵ=``, ``δ=``, ``β=``, ``γ=`` are accepted too.
- Defaults follow Flux: ``eps`` defaults to the machine epsilon of ŷ's dtype (Flux's
  ``epseltype(ŷ)``). ``eps=0`` is allowed, as Flux's own tests use it (``crossentropy(ŷ, y,
  eps=0)``); a negative or non-finite ``eps`` raises ``ValueError``. ``delta`` must be > 0,
  ``margin`` and ``gamma`` >= 0, ``label_smoothing`` (the function's ``alpha``) strictly between 0
  and 1 as in Flux.
- Beyond Flux: the cross entropies take ``label_smoothing=α`` (smooth y first; 0 means none).
- Edges: the cross entropies, kldivergence, poisson_loss and focal_loss use `xlogy`, so a zero in
  y contributes exactly 0, with a zero gradient, even where ŷ is 0 (no ``0 * log(0)`` NaN);
  logitcrossentropy and logitbinarycrossentropy go through logsoftmax and softplus and stay
  finite for logits of any size.
- ctc_loss: ŷ is ``(T, C)`` logits (or a batch ``(N, T, C)``), y 0-based labels, blank the last
  class; see its docstring.
"""

from __future__ import annotations

import builtins
import math
import numbers
import statistics
from typing import Any, Callable

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs.tensor import host_like
from fluxrs.tensor import tensor as _tensor
from fluxrs.tensor import where as _where

__all__ = ["mae", "mse", "msle", "huber_loss", "label_smoothing", "crossentropy", "logitcrossentropy",
           "binarycrossentropy", "logitbinarycrossentropy", "kldivergence", "poisson_loss", "hinge_loss",
           "squared_hinge_loss", "dice_coeff_loss", "tversky_loss", "binary_focal_loss", "focal_loss",
           "siamese_contrastive_loss", "ctc_loss", "xlogx", "xlogy", "mean"]


# ---------------------------------------------------------------- helpers

def mean(x: Tensor) -> Tensor:
    """The default `agg`: the mean over every element."""
    return x.mean()


_MEANS = (mean, np.mean, statistics.mean)
_SUMS = (builtins.sum, np.sum, math.fsum)


def _agg_mode(agg: Any) -> str | None:
    """Which built-in aggregation `agg` is: "mean", "sum", or None for any other (a callable,
    or a string `_agg` rejects)."""
    if isinstance(agg, str):
        return agg if agg in ("mean", "sum") else None
    if agg is mean or agg is None or any(agg is m for m in _MEANS):
        return "mean"
    return "sum" if any(agg is s for s in _SUMS) else None


def _agg(agg: Any, x: Tensor, who: str) -> Any:
    mode = _agg_mode(agg)
    if mode is not None:
        return x.mean() if mode == "mean" else x.sum()
    if isinstance(agg, str):
        raise ValueError(f"{who}: agg must be 'mean', 'sum' or a callable, got {agg!r}")
    if not callable(agg):
        raise TypeError(f"{who}: agg must be a callable (e.g. mean or sum), got {type(agg).__name__}")
    return agg(x)


def _eps_of(yhat: Tensor) -> float:
    return float(np.finfo(yhat.dtype).eps)


def _c_order(a: np.ndarray) -> np.ndarray:
    # Fortran-ordered arrays (a transpose) are copied to C order before they reach the core
    # (np.ascontiguousarray would also turn a 0-d array into shape (1,))
    return a if a.flags.c_contiguous else a.copy(order="C")


def _numeric(a: Any, who: str, name: str) -> np.ndarray:
    """`a` as a numpy array of numbers, or a TypeError naming the loss and the argument (numpy
    would turn None into NaN, and strings into whatever they spell, without a word)."""
    try:
        arr = np.asarray(a)
    except ValueError as e:
        raise ValueError(f"{who}: {name} is not a rectangular array of numbers ({e})") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{who}: {name} must be a tensor, an array or a number, got {type(a).__name__} of dtype "
                        f"{arr.dtype}")
    return arr


def _as_yhat(yhat: Any, who: str = "loss") -> Tensor:
    if isinstance(yhat, Tensor):
        return yhat
    return _tensor(_c_order(_numeric(yhat, who, "ŷ")))


def _as_target(y: Any, like: Tensor, who: str = "loss", name: str = "y") -> Tensor:
    if isinstance(y, Tensor):
        return y if y.dtype == like.dtype else y.astype(like.dtype)
    if isinstance(y, np.ndarray) and y.dtype.kind == "f":  # a float array: read in place, or one copy
        return host_like(y, like, lend=True)  # only the loss reads it
    # a target given as an array follows ŷ to its device
    return host_like(_c_order(np.asarray(_numeric(y, who, name), dtype=like.dtype)), like)


def _pair(yhat: Any, y: Any, who: str) -> tuple[Tensor, Tensor]:
    """ŷ as a tensor, y as a tensor in ŷ's dtype, with matching shapes (a number y broadcasts)."""
    yhat = _as_yhat(yhat, who)
    y = _as_target(y, yhat, who)
    if y.ndim > 0 and tuple(y.shape) != tuple(yhat.shape):
        hint = ""
        if y.ndim == yhat.ndim - 1 and tuple(y.shape) == tuple(yhat.shape)[:1]:
            hint = "; for class labels, one-hot encode them first, e.g. fx.onehotbatch(labels, classes)"
        raise ValueError(f"{who}: ŷ has shape {tuple(yhat.shape)} but y has shape {tuple(y.shape)}; they must "
                         f"match (batch-first: (N, C) for a classifier){hint}")
    return yhat, y


def _class_axis(dims: Any, x: Tensor, who: str) -> int:
    if x.ndim == 0:
        raise ValueError(f"{who}: ŷ must have a class axis (shape (C,) or (N, C, ...)), got a scalar")
    if dims is None:
        return 1 if x.ndim >= 2 else 0
    if isinstance(dims, bool) or not isinstance(dims, numbers.Integral):
        raise TypeError(f"{who}: dims must be an integer axis, got {dims!r}")
    nd = max(x.ndim, 1)
    if not -nd <= dims < nd:
        raise ValueError(f"{who}: dims={dims} is out of range for an input of shape {tuple(x.shape)}")
    return int(dims) % nd


def _greek(who: str, kw: dict, ascii_name: str, greek: str, value: Any) -> Any:
    # Python normalises identifiers (NFKC): `ϵ=` written in source arrives as `ε=`.
    for g in ((greek, "ε") if greek == "ϵ" else (greek,)):
        if g in kw:
            v = kw.pop(g)
            if value is not None:
                raise TypeError(f"{who}: give {ascii_name}= or {greek}=, not both")
            value = v
    return value


def _no_extra(who: str, kw: dict) -> None:
    if kw:
        raise TypeError(f"{who}() got unexpected keyword argument(s): {', '.join(sorted(kw))}")


def _check_eps(who: str, eps: Any, yhat: Tensor, allow_zero: bool = True) -> float:
    if eps is None:
        return _eps_of(yhat)
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"{who}: eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0 or (eps == 0 and not allow_zero):
        raise ValueError(f"{who}: eps must be {'>= 0' if allow_zero else '> 0'} and finite, got {eps}")
    return eps


def xlogx(x: Any) -> Any:
    """``x * log(x)``, with ``xlogx(0) == 0``; differentiable for tensors (gradient ``log(x) + 1``
    away from 0). Numbers and arrays give numbers and arrays.

    >>> xlogx(0), round(xlogx(2), 6)
    (0.0, 1.386294)
    """
    if not isinstance(x, Tensor):
        a = np.asarray(_numeric(x, "xlogx", "x"), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, a)))
        return float(r) if r.ndim == 0 else r
    safe = _where(x == 0, 1.0, x)
    return x * safe.log()


def xlogy(x: Any, y: Any) -> Any:
    """``x * log(y)``, with ``xlogy(0, y) == 0`` (also where ``y == 0``), as Flux's ``xlogy``.
    Gradients stay finite where ``x == 0``: the logarithm is taken of 1 there.

    >>> xlogy(0, 0), round(xlogy(2, 3), 6)
    (0.0, 2.197225)
    """
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):
        a = np.asarray(_numeric(x, "xlogy", "x"), dtype=np.float64)
        b = np.asarray(_numeric(y, "xlogy", "y"), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(a == 0, 0.0, a * np.log(np.where(a == 0, 1.0, b)))
        r = np.where(np.isnan(a), np.nan, r)
        return float(r) if r.ndim == 0 else r
    like = x if isinstance(x, Tensor) else y
    x = x if isinstance(x, Tensor) else _as_target(x, like, "xlogy", "x")
    y = y if isinstance(y, Tensor) else _as_target(y, like, "xlogy", "y")
    zero = x == 0
    return x * _where(zero, 1.0, y).log()


def _real(who: str, name: str, v: Any) -> float:
    if isinstance(v, Tensor) and v.size == 1:
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{who}: {name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{who}: {name} must be finite, got {v}")
    return v


def _smoothing_kw(who: str, alpha: Any) -> float:
    """The `label_smoothing=` keyword of the cross entropies: 0 (or None) means none."""
    if alpha is None:
        return 0.0
    alpha = _real(who, "label_smoothing", alpha)
    if not 0 <= alpha < 1:
        raise ValueError(f"{who}: label_smoothing must be in [0, 1), got {alpha}")
    return alpha


# ---------------------------------------------------------------- regression

def mae(yhat: Any, y: Any, *, agg: Any = mean) -> Tensor:
    """Mean absolute error: ``agg(abs(ŷ - y))``.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.mae(fx.tensor([1.1, 1.9, 3.1]), [1, 2, 3])), 5)
    0.1
    """
    yhat, y = _pair(yhat, y, "mae")
    return _agg(agg, (yhat - y).abs(), "mae")


def mse(yhat: Any, y: Any, *, agg: Any = mean) -> Tensor:
    """Mean squared error: ``agg((ŷ - y) ** 2)``.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.mse(fx.tensor([1.1, 1.9, 3.1]), [1, 2, 3])), 6)
    0.01
    """
    yhat, y = _pair(yhat, y, "mse")
    mode = _agg_mode(agg)
    if mode is not None and y.shape == yhat.shape:
        return _core.sq_err(yhat, y, mode == "mean")  # one op each way instead of three
    return _agg(agg, (yhat - y) ** 2, "mse")


def msle(yhat: Any, y: Any, *, agg: Any = mean, eps: Any = None, **kw) -> Tensor:
    """Mean squared logarithmic error: ``agg(log((ŷ + eps) / (y + eps)) ** 2)``. Penalises
    under-estimation more than over-estimation.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.msle(fx.tensor([1.1, 2.2, 3.3]), [1, 2, 3])), 6)
    0.009084
    """
    eps = _greek("msle", kw, "eps", "ϵ", eps)
    _no_extra("msle", kw)
    yhat, y = _pair(yhat, y, "msle")
    eps = _check_eps("msle", eps, yhat)
    return _agg(agg, ((yhat + eps) / (y + eps)).log() ** 2, "msle")


def huber_loss(yhat: Any, y: Any, *, agg: Any = mean, delta: Any = 1.0, **kw) -> Tensor:
    """The Huber loss: ``0.5 * |ŷ - y|**2`` where ``|ŷ - y| < delta``, else
    ``delta * (|ŷ - y| - 0.5 * delta)``; reduced with ``agg``. ``delta`` (δ) must be > 0.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.huber_loss(fx.tensor([0.9, 0.1, 0.1, 0.9]), [1, 1, 0, 0])), 6)
    0.205
    """
    if "δ" in kw:
        delta = _greek("huber_loss", kw, "delta", "δ", None)
    _no_extra("huber_loss", kw)
    delta = _real("huber_loss", "delta", delta)
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be > 0, got {delta}")
    yhat, y = _pair(yhat, y, "huber_loss")
    err = (yhat - y).abs()
    small = (err < delta).detach()  # a constant mask, as Flux's dropgrad
    return _agg(agg, err ** 2 * small * 0.5 + delta * (err - 0.5 * delta) * (1 - small), "huber_loss")


# ---------------------------------------------------------------- label smoothing

def label_smoothing(y: Any, alpha: Any, *, dims: Any = None, binary: bool = False) -> Any:
    """Smoothed labels: ``y * (1 - alpha) + alpha / size(y, dims)`` for one-hot labels along the
    class axis ``dims`` (batch-first: axis 1 of ``(N, C)``, axis 0 of a single ``(C,)`` vector);
    with ``binary=True``, ``y * (1 - alpha) + alpha / 2`` for binary labels held in one number each
    (Flux's ``dims=0``). ``alpha`` must lie strictly between 0 and 1, as in Flux.

    Returns a tensor for a tensor, a float for a number, and a float numpy array otherwise.

    >>> label_smoothing([[0, 1]], 0.2).tolist()
    [[0.1, 0.9]]
    >>> label_smoothing([1.0, 0.0], 0.2, binary=True).tolist()
    [0.9, 0.1]
    """
    a = _real("label_smoothing", "alpha", alpha)
    if not 0 < a < 1:
        raise ValueError(f"label_smoothing: alpha must be between 0 and 1 (exclusive), got {a}")
    ndim = y.ndim if isinstance(y, Tensor) else np.ndim(y)  # np.ndim would read a tensor's values
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool) and dims == 0 and binary is False \
            and ndim == 0:
        binary, dims = True, None  # a single number: Flux's dims=0 (binary) is the only reading
    if binary:
        if dims is not None:
            raise TypeError("label_smoothing: give binary=True or dims=, not both")
        if isinstance(y, Tensor):
            return y * (1 - a) + a / 2
        r = np.asarray(_numeric(y, "label_smoothing", "y"), dtype=np.float64) * (1 - a) + a / 2
        return float(r) if r.ndim == 0 else r
    if ndim == 0:
        raise ValueError("label_smoothing: a single number is a binary label; pass binary=True")
    t = y if isinstance(y, Tensor) else np.asarray(_numeric(y, "label_smoothing", "y"), dtype=np.float64)
    ndim = t.ndim
    if dims is None:
        ax = 1 if ndim >= 2 else 0
    else:
        if isinstance(dims, bool) or not isinstance(dims, numbers.Integral) or not -ndim <= dims < ndim:
            raise ValueError(f"label_smoothing: dims={dims!r} is not an axis of labels of shape {tuple(t.shape)}")
        ax = int(dims) % ndim
    k = t.shape[ax]
    return t * (1 - a) + a / k


_label_smoothing = label_smoothing


# ---------------------------------------------------------------- classification

def crossentropy(yhat: Any, y: Any, *, dims: Any = None, agg: Any = mean, eps: Any = None,
                 label_smoothing: Any = None, **kw) -> Tensor:
    """Cross entropy between probability distributions along the class axis ``dims``:
    ``agg(-sum(xlogy(y, ŷ + eps), dims))``. ŷ is expected to sum to one along ``dims`` (softmax
    output); prefer `logitcrossentropy` on logits. ``eps`` (ϵ) defaults to the machine epsilon of
    ŷ's dtype; ``eps=0`` is allowed (as Flux's ``ϵ=0``). ``label_smoothing=α`` smooths y first
    (``label_smoothing(y, α, dims=dims)``).

    >>> import fluxrs as fx
    >>> yhat = fx.tensor([[0.1, 0.9], [0.9, 0.1]])
    >>> round(float(fx.crossentropy(yhat, [[0, 1], [1, 0]])), 5)
    0.10536
    """
    eps = _greek("crossentropy", kw, "eps", "ϵ", eps)
    _no_extra("crossentropy", kw)
    alpha = _smoothing_kw("crossentropy", label_smoothing)
    yhat, y = _pair(yhat, y, "crossentropy")
    eps = _check_eps("crossentropy", eps, yhat)
    ax = _class_axis(dims, yhat, "crossentropy")
    if alpha:
        y = _label_smoothing(y, alpha, dims=ax)
    p = yhat + eps if eps else yhat
    return _agg(agg, -(xlogy(y, p).sum(axis=ax, keepdims=True)), "crossentropy")


def logitcrossentropy(yhat: Any, y: Any, *, dims: Any = None, agg: Any = mean, label_smoothing: Any = None) -> Tensor:
    """Cross entropy on logits: ``agg(-sum(y * logsoftmax(ŷ, dims), dims))``, the stable form
    of ``crossentropy(softmax(ŷ), y)``. ``label_smoothing=α`` smooths y first.

    >>> import fluxrs as fx
    >>> round(float(fx.logitcrossentropy(fx.tensor([[0.0, 0.0]]), [[1, 0]])), 6)
    0.693147
    """
    alpha = _smoothing_kw("logitcrossentropy", label_smoothing)
    yhat, y = _pair(yhat, y, "logitcrossentropy")
    ax = _class_axis(dims, yhat, "logitcrossentropy")
    if alpha:
        y = _label_smoothing(y, alpha, dims=ax)
    return _agg(agg, -((y * yhat.logsoftmax(ax)).sum(axis=ax, keepdims=True)), "logitcrossentropy")


def binarycrossentropy(yhat: Any, y: Any, *, agg: Any = mean, eps: Any = None, label_smoothing: Any = None,
                       **kw) -> Tensor:
    """Binary cross entropy of probabilities ŷ (sigmoid output) against labels y in [0, 1]:
    ``agg(-xlogy(y, ŷ + eps) - xlogy(1 - y, 1 - ŷ + eps))``. A zero label contributes exactly 0
    (also where ŷ is exactly 0 or 1), so gradients stay finite. Prefer `logitbinarycrossentropy`
    on logits. ``label_smoothing=α`` smooths y first (``label_smoothing(y, α, binary=True)``).

    >>> import fluxrs as fx
    >>> round(float(fx.losses.binarycrossentropy(fx.tensor([0.5, 0.5]), [1, 0])), 6)
    0.693147
    """
    eps = _greek("binarycrossentropy", kw, "eps", "ϵ", eps)
    _no_extra("binarycrossentropy", kw)
    alpha = _smoothing_kw("binarycrossentropy", label_smoothing)
    yhat, y = _pair(yhat, y, "binarycrossentropy")
    eps = _check_eps("binarycrossentropy", eps, yhat)
    if alpha:
        y = _label_smoothing(y, alpha, binary=True)
    l = -xlogy(y, yhat + eps) - xlogy(1 - y, (1 - yhat) + eps)
    return _agg(agg, l, "binarycrossentropy")


def logitbinarycrossentropy(yhat: Any, y: Any, *, agg: Any = mean, label_smoothing: Any = None) -> Tensor:
    """Binary cross entropy on logits: ``agg((1 - y) * ŷ - logσ(ŷ))``, the stable form of
    ``binarycrossentropy(sigmoid(ŷ), y)``.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.logitbinarycrossentropy(fx.tensor([2.0, -1.0, 3.1415927]), [1, 0, 1])), 5)
    0.16083
    """
    alpha = _smoothing_kw("logitbinarycrossentropy", label_smoothing)
    yhat, y = _pair(yhat, y, "logitbinarycrossentropy")
    if alpha:
        y = _label_smoothing(y, alpha, binary=True)
    logsig = -((-yhat).softplus())
    return _agg(agg, (1 - y) * yhat - logsig, "logitbinarycrossentropy")


def kldivergence(yhat: Any, y: Any, *, dims: Any = None, agg: Any = mean, eps: Any = None, **kw) -> Tensor:
    """Kullback-Leibler divergence of ŷ from y along the class axis:
    ``agg(sum(xlogx(y), dims)) + crossentropy(ŷ, y; dims, agg, eps)``.

    >>> import fluxrs as fx
    >>> p1 = [[1, 0], [0, 1]]
    >>> round(float(fx.losses.kldivergence(fx.full((2, 2), 0.5), p1)), 5)
    0.69315
    """
    eps = _greek("kldivergence", kw, "eps", "ϵ", eps)
    _no_extra("kldivergence", kw)
    yhat, y = _pair(yhat, y, "kldivergence")
    ax = _class_axis(dims, yhat, "kldivergence")
    entropy = _agg(agg, xlogx(y).sum(axis=ax, keepdims=True), "kldivergence")
    return entropy + crossentropy(yhat, y, dims=ax, agg=agg, eps=eps)


def poisson_loss(yhat: Any, y: Any, *, agg: Any = mean) -> Tensor:
    """Poisson loss: ``agg(ŷ - xlogy(y, ŷ))``; how far the predicted rate ŷ is from counts y.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.poisson_loss(fx.tensor([0.4, 0.5, 0.6]), [0.1, 0.2, 0.3])), 6)
    0.627835
    """
    yhat, y = _pair(yhat, y, "poisson_loss")
    return _agg(agg, yhat - xlogy(y, yhat), "poisson_loss")


def hinge_loss(yhat: Any, y: Any, *, agg: Any = mean) -> Tensor:
    """Hinge loss for labels y in {-1, 1}: ``agg(max(0, 1 - ŷ * y))``.

    >>> import fluxrs as fx
    >>> float(fx.losses.hinge_loss(fx.tensor([0.5, -2.0]), [1, -1]))
    0.25
    """
    yhat, y = _pair(yhat, y, "hinge_loss")
    return _agg(agg, (1 - yhat * y).relu(), "hinge_loss")


def squared_hinge_loss(yhat: Any, y: Any, *, agg: Any = mean) -> Tensor:
    """Squared hinge loss for labels y in {-1, 1}: ``agg(max(0, 1 - ŷ * y) ** 2)``.

    >>> import fluxrs as fx
    >>> float(fx.losses.squared_hinge_loss(fx.tensor([0.5, -2.0]), [1, -1]))
    0.125
    """
    yhat, y = _pair(yhat, y, "squared_hinge_loss")
    return _agg(agg, (1 - yhat * y).relu() ** 2, "squared_hinge_loss")


def dice_coeff_loss(yhat: Any, y: Any, *, smooth: Any = 1.0) -> Tensor:
    """Dice coefficient loss (V-Net), over all elements as in Flux (which has no `agg` here):
    ``1 - (2 * sum(y * ŷ) + smooth) / (sum(y ** 2) + sum(ŷ ** 2) + smooth)``.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.dice_coeff_loss(fx.tensor([0.0, 1.4, 0.5, 1.2]), [1.0, 0.5, 0.3, 2.4])), 6)
    0.28
    """
    smooth = _real("dice_coeff_loss", "smooth", smooth)
    yhat, y = _pair(yhat, y, "dice_coeff_loss")
    return 1 - ((y * yhat).sum() * 2 + smooth) / ((y ** 2).sum() + (yhat ** 2).sum() + smooth)


def tversky_loss(yhat: Any, y: Any, *, beta: Any = 0.7, **kw) -> Tensor:
    """Tversky loss, for imbalanced data; larger ``beta`` (β) weighs false negatives more:
    ``1 - (sum(y * ŷ) + 1) / (sum(y * ŷ + β * (1 - y) * ŷ + (1 - β) * y * (1 - ŷ)) + 1)``.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.tversky_loss(fx.tensor([0.0, 1.4, 0.5, 1.2]), [1.0, 0.5, 0.3, 2.4])), 6)
    -0.06772
    """
    if "β" in kw:
        beta = _greek("tversky_loss", kw, "beta", "β", None)
    _no_extra("tversky_loss", kw)
    beta = _real("tversky_loss", "beta", beta)
    yhat, y = _pair(yhat, y, "tversky_loss")
    num = (y * yhat).sum() + 1
    den = (y * yhat + beta * (1 - y) * yhat + (1 - beta) * y * (1 - yhat)).sum() + 1
    return 1 - num / den


def _gamma(who: str, gamma: Any, kw: dict) -> float:
    if "γ" in kw:
        gamma = _greek(who, kw, "gamma", "γ", None)
    _no_extra(who, kw)
    gamma = _real(who, "gamma", gamma)
    if gamma < 0:
        raise ValueError(f"{who}: gamma must be >= 0, got {gamma}")
    return gamma


def binary_focal_loss(yhat: Any, y: Any, *, agg: Any = mean, gamma: Any = 2, eps: Any = None, **kw) -> Tensor:
    """Binary focal loss (Lin et al. 2017) of probabilities ŷ against binary labels y:
    with ``p_t = y * (ŷ + eps) + (1 - y) * (1 - ŷ - eps)``, ``agg(-(1 - p_t) ** gamma * log(p_t))``.
    ``gamma=0`` gives `binarycrossentropy`.

    >>> import fluxrs as fx
    >>> yhat = fx.tensor([[0.268941, 0.731059], [0.5, 0.5], [0.268941, 0.731059]])
    >>> round(float(fx.losses.binary_focal_loss(yhat, [[0, 1], [1, 0], [0, 1]])), 6)
    0.072868
    """
    eps = _greek("binary_focal_loss", kw, "eps", "ϵ", eps)
    gamma = _gamma("binary_focal_loss", gamma, kw)
    yhat, y = _pair(yhat, y, "binary_focal_loss")
    eps = _check_eps("binary_focal_loss", eps, yhat)
    p = yhat + eps
    p_t = y * p + (1 - y) * (1 - p)
    ce = -p_t.log()
    l = ce if gamma == 0 else (1 - p_t) ** gamma * ce
    return _agg(agg, l, "binary_focal_loss")


def focal_loss(yhat: Any, y: Any, *, dims: Any = None, agg: Any = mean, gamma: Any = 2, eps: Any = None,
               **kw) -> Tensor:
    """Focal loss (Lin et al. 2017) for probabilities ŷ (softmax output) and one-hot y along the
    class axis: ``agg(sum(-y * (1 - ŷ') ** gamma * log(ŷ'), dims))`` with ``ŷ' = ŷ + eps``.
    Down-weights well-classified examples; ``gamma=0`` gives `crossentropy`.

    >>> import fluxrs as fx
    >>> yhat = fx.tensor([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]], dtype="float64")
    >>> round(float(fx.losses.focal_loss(yhat, [[1, 0, 0], [0, 0, 1]])), 6)
    0.459906
    """
    eps = _greek("focal_loss", kw, "eps", "ϵ", eps)
    gamma = _gamma("focal_loss", gamma, kw)
    yhat, y = _pair(yhat, y, "focal_loss")
    eps = _check_eps("focal_loss", eps, yhat)
    ax = _class_axis(dims, yhat, "focal_loss")
    p = yhat + eps
    l = -xlogy(y, p)
    if gamma != 0:
        l = l * (1 - p) ** gamma
    return _agg(agg, l.sum(axis=ax, keepdims=True), "focal_loss")


def siamese_contrastive_loss(yhat: Any, y: Any, *, agg: Any = mean, margin: Any = 1.0) -> Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) for Siamese networks, ŷ a distance and
    y = 1 for a dissimilar pair: ``agg((1 - y) * ŷ ** 2 + y * max(0, margin - ŷ) ** 2)``.
    ``margin`` must be >= 0.

    >>> import fluxrs as fx
    >>> round(float(fx.losses.siamese_contrastive_loss(fx.tensor([0.6, 0.4, 0.1, 0.2, 0.7]), [1, 0, 0, 1, 1])), 6)
    0.212
    """
    margin = _real("siamese_contrastive_loss", "margin", margin)
    if margin < 0:
        raise ValueError(f"siamese_contrastive_loss: margin must be non-negative, got {margin}")
    yhat, y = _pair(yhat, y, "siamese_contrastive_loss")
    return _agg(agg, (1 - y) * yhat ** 2 + y * (margin - yhat).relu() ** 2, "siamese_contrastive_loss")


# ---------------------------------------------------------------- CTC

def _ctc_one(x: np.ndarray, labels: np.ndarray, blank: int) -> tuple[float, np.ndarray]:
    """Loss and gradient (w.r.t. the logits) of CTC for one sequence of logits x, shape (T, C):
    the forward-backward algorithm of Graves et al. (2006) in log space, in float64."""
    T, C = x.shape
    m = x.max(axis=1, keepdims=True)
    lsm = x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    z = np.full(2 * len(labels) + 1, blank, dtype=np.int64)
    z[1::2] = labels
    U = len(z)
    e = lsm[:, z]  # (T, U): log-probability of emitting z[u] at time t
    skip = np.zeros(U, dtype=bool)  # may come from u - 2 (skipping a blank)
    skip[2:] = (z[2:] != blank) & (z[2:] != z[:-2])
    ninf = -np.inf
    alpha = np.full((T, U), ninf)
    alpha[0, 0] = e[0, 0]
    if U > 1:
        alpha[0, 1] = e[0, 1]
    with np.errstate(invalid="ignore"):
        for t in range(1, T):
            a = alpha[t - 1]
            s1 = np.full(U, ninf)
            s1[1:] = a[:-1]
            s2 = np.full(U, ninf)
            s2[2:] = a[:-2]
            s2[~skip] = ninf
            alpha[t] = np.logaddexp(np.logaddexp(a, s1), s2) + e[t]
        beta = np.full((T, U), ninf)
        beta[T - 1, U - 1] = 0.0
        if U > 1:
            beta[T - 1, U - 2] = 0.0
        skip_next = np.zeros(U, dtype=bool)  # may go to u + 2
        skip_next[:-2] = skip[2:]
        for t in range(T - 2, -1, -1):
            nb = beta[t + 1] + e[t + 1]
            s1 = np.full(U, ninf)
            s1[:-1] = nb[1:]
            s2 = np.full(U, ninf)
            s2[:-2] = nb[2:]
            s2[~skip_next] = ninf
            beta[t] = np.logaddexp(np.logaddexp(nb, s1), s2)
        logp = np.logaddexp(alpha[T - 1, U - 1], alpha[T - 1, U - 2]) if U > 1 else alpha[T - 1, 0]
        occ = np.exp(alpha + beta - logp)  # (T, U): posterior of being in state u at time t
    post = np.zeros((T, C))
    for u in range(U):
        post[:, z[u]] += occ[:, u]
    return -float(logp), np.exp(lsm) - post


def _ctc_labels(y: Any, C: int, blank: int, T: int) -> np.ndarray:
    lab = y.numpy() if isinstance(y, Tensor) else _numeric(y, "ctc_loss", "y")
    if lab.ndim != 1:
        raise ValueError(f"ctc_loss: y must be a 1-D sequence of class indices, got shape {lab.shape}")
    if lab.size and not np.all(np.equal(np.mod(lab, 1), 0)):
        raise ValueError("ctc_loss: y must hold integer class indices (0-based)")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= C or np.any(lab == blank)):
        raise ValueError(f"ctc_loss: labels must be class indices in [0, {C}) other than the blank ({blank}), "
                         f"got {lab.tolist()}")
    need = len(lab) + int(np.sum(lab[1:] == lab[:-1]))
    if need > T:
        raise ValueError(f"ctc_loss: {T} time steps cannot emit the {len(lab)} labels {lab.tolist()} "
                         f"(at least {need} are needed)")
    return lab


def ctc_loss(yhat: Any, y: Any, *, blank: Any = None, agg: Any = mean) -> Tensor:
    """Connectionist temporal classification loss (Graves et al. 2006) of logits ŷ against the
    label sequence y.

    Batch-first: ŷ has shape ``(T, C)`` (time steps × classes; Flux's ``(C, T)`` transposed), raw
    logits (logsoftmax is applied along the classes). y holds 0-based class indices (Flux's are
    1-based); the blank is the last class, ``C - 1``, as in Flux, unless ``blank=`` says
    otherwise. A batch ``(N, T, C)`` with a list of N label sequences gives N losses reduced with
    ``agg`` (Flux's CPU ctc_loss takes one sequence). The forward-backward algorithm runs in
    float64 numpy; its exact gradient (``softmax(ŷ) - posterior``) is attached to ŷ.

    >>> import fluxrs as fx, numpy as np
    >>> x = fx.tensor([[1., 2., 3.], [2., 1., 3.], [3., 1., 2.]], dtype="float64")  # (T, C)
    >>> round(float(fx.losses.ctc_loss(x, [0, 1])), 6)
    3.699074
    """
    yhat = _as_yhat(yhat, "ctc_loss")
    if yhat.ndim not in (2, 3):
        raise ValueError(f"ctc_loss: ŷ must have shape (T, C) or (N, T, C), got {tuple(yhat.shape)}")
    x = np.asarray(yhat.detach().numpy(), dtype=np.float64)
    C, T = x.shape[-1], x.shape[-2]
    if T == 0:
        raise ValueError(f"ctc_loss: ŷ has no time steps (shape {tuple(yhat.shape)})")
    b = C - 1 if blank is None else int(blank)
    if not -C <= b < C:
        raise ValueError(f"ctc_loss: blank={blank} is not a class index for {C} classes")
    b %= C
    if yhat.ndim == 2:
        loss, g = _ctc_one(x, _ctc_labels(y, C, b, T), b)
        losses = np.asarray(loss)
        grads = g
    else:
        ys = list(y)
        if len(ys) != x.shape[0]:
            raise ValueError(f"ctc_loss: ŷ holds {x.shape[0]} sequences but y has {len(ys)} label sequences")
        out = [_ctc_one(x[i], _ctc_labels(ys[i], C, b, T), b) for i in range(x.shape[0])]
        losses = np.array([o[0] for o in out])
        grads = np.stack([o[1] for o in out])
    lt = host_like(np.asarray(losses, dtype=yhat.dtype), yhat)
    gt = host_like(np.asarray(grads, dtype=yhat.dtype), yhat)
    # Value: the losses; gradient: the CTC gradient. (ŷ - ŷ.detach()) is exactly zero but carries
    # ŷ's gradient, so the result differentiates as d(loss_i)/dŷ = grads_i.
    delta = yhat - yhat.detach()
    if yhat.ndim == 2:
        return lt + (delta * gt).sum()
    return _agg(agg, lt + (delta * gt).sum(axis=(1, 2)), "ctc_loss")
