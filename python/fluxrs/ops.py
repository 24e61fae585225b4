"""Elementwise math, reductions and reshaping as functions: ``fx.exp(x)``, ``fx.sum(x, axis)``,
``fx.matmul(a, b)``, as numpy, PyTorch and Julia (``exp.(x)``, ``sum(x; dims)``) write them.

Each delegates to the `Tensor` method of the same meaning, so it differentiates wherever the
method does. Arguments may be tensors, array-likes (converted with `fx.tensor`) or plain
numbers, which give a plain float back, as the activations do. ``fx.sum``, ``fx.max``,
``fx.abs`` and the rest shadow Python's builtins only inside the ``fx`` namespace.

>>> import fluxrs as fx
>>> x = fx.tensor([[1.0, 4.0], [9.0, 16.0]])
>>> fx.sqrt(x).tolist()
[[1.0, 2.0], [3.0, 4.0]]
>>> fx.sum(x, 1).tolist(), fx.max(x).item()
([5.0, 25.0], 16.0)
>>> fx.gradient(lambda x: fx.sum(fx.log(x)), x)[0].tolist()
[[1.0, 0.25], [0.1111111119389534, 0.0625]]
>>> fx.exp(0.0)
1.0
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import numpy as np

from fluxrs._core import Tensor
from fluxrs.tensor import concat, host_like, tensor, where

__all__ = ["exp", "log", "log1p", "expm1", "sqrt", "abs", "square", "sin", "cos", "tan", "sign",
           "clamp", "clip", "maximum", "minimum", "pow", "matmul",
           "sum", "mean", "prod", "max", "min", "transpose", "reshape", "where"]


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_tensor(x: Any, who: str, name: str) -> Tensor:
    """`x` as a tensor: a tensor passes, an array-like is converted with `fx.tensor`."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (str, bytes, dict, set)) or x is None or isinstance(x, bool) or callable(x):
        raise TypeError(f"fx.{who}: {name} must be a tensor, an array or a real number, got {type(x).__name__}")
    try:
        return tensor(x)
    except (TypeError, ValueError) as e:
        raise type(e)(f"fx.{who}: {name} ({type(x).__name__}): {e}") from None


def _lift(f: Callable[..., Tensor]) -> Callable[..., Any]:
    """Let `f(tensor, ...)` take array-likes and numbers as its first argument; a number gives a
    float back, computed in float64 as a Python float would be."""

    @functools.wraps(f)
    def op(x, *args, **kwargs):
        if isinstance(x, Tensor):
            return f(x, *args, **kwargs)
        if _is_number(x):
            return float(f(tensor(float(x), dtype="float64"), *args, **kwargs))
        return f(_as_tensor(x, f.__name__, "x"), *args, **kwargs)

    op.__module__ = __name__
    return op


def _pair(a: Any, b: Any, who: str) -> tuple[Any, Any, bool]:
    """The operands of a binary function: tensors stay, a number stays a number beside a tensor
    (the tensor methods take numbers), other array-likes become tensors of the other
    operand's dtype and device. The flag says both were plain numbers."""
    if _is_number(a) and _is_number(b):
        return tensor(float(a), dtype="float64"), float(b), True
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    if like is None:
        a = a if _is_number(a) else _as_tensor(a, who, "the first argument")
        b = b if _is_number(b) else _as_tensor(b, who, "the second argument")
        return a, b, False

    def conv(v, name):
        if isinstance(v, Tensor) or _is_number(v):
            return v
        _as_tensor(v, who, name)  # for its errors
        return host_like(np.asarray(v), like)

    return conv(a, "the first argument"), conv(b, "the second argument"), False


def _binary(a: Any, b: Any, who: str, method: str, rmethod: str | None = None) -> Any:
    a, b, scalars = _pair(a, b, who)
    if isinstance(a, Tensor):
        out = getattr(a, method)(b)
    elif rmethod is not None:
        out = getattr(b, rmethod)(a)
    else:  # a symmetric function with the tensor second
        out = getattr(b, method)(a)
    return float(out) if scalars else out


# ---------------------------------------------------------------- elementwise

@_lift
def exp(x: Tensor) -> Tensor:
    """eˣ, elementwise."""
    return x.exp()


@_lift
def log(x: Tensor) -> Tensor:
    """The natural logarithm, elementwise (NaN below 0, -inf at 0)."""
    return x.log()


@_lift
def log1p(x: Tensor) -> Tensor:
    """log(1 + x), accurate for small x."""
    return x.log1p()


@_lift
def expm1(x: Tensor) -> Tensor:
    """eˣ - 1, accurate for small x.

    >>> import fluxrs as fx
    >>> fx.expm1(fx.tensor([1e-6])).tolist()   # float32: exp(x) - 1 would give 9.5367e-07
    [1.0000004522225936e-06]
    """
    # Small |x|: eˣ - 1 = 2t / (1 - t) with t = tanh(x/2), free of the cancellation of
    # exp(x) - 1. The clamp keeps that branch finite where `where` discards it, so that its
    # backward never multiplies a zero by an infinity.
    t = (x.clamp(-0.5, 0.5) * 0.5).tanh()
    return where(x.abs() < 0.5, 2.0 * t / (1.0 - t), x.exp() - 1.0)


@_lift
def sqrt(x: Tensor) -> Tensor:
    """√x, elementwise."""
    return x.sqrt()


@_lift
def abs(x: Tensor) -> Tensor:  # noqa: A001  (fx.abs, as np.abs)
    """|x|, elementwise."""
    return x.abs()


@_lift
def square(x: Tensor) -> Tensor:
    """x², elementwise (Julia's abs2 of real numbers)."""
    return x * x


@_lift
def sin(x: Tensor) -> Tensor:
    """The sine, elementwise (radians)."""
    return x.sin()


@_lift
def cos(x: Tensor) -> Tensor:
    """The cosine, elementwise (radians)."""
    return x.cos()


@_lift
def tan(x: Tensor) -> Tensor:
    """The tangent, elementwise (radians)."""
    return x.sin() / x.cos()


@_lift
def sign(x: Tensor) -> Tensor:
    """-1, 0 or 1 by the sign of each element (its gradient is zero)."""
    return x.sign()


def _bound(v: Any, who: str, name: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, Tensor) and v.size == 1:
        v = float(v)
    if not _is_number(v):
        raise TypeError(f"fx.{who}: {name} must be a real number or None, got {type(v).__name__}"
                        + (f" of shape {tuple(np.shape(v))}; for elementwise bounds use fx.maximum and fx.minimum"
                           if hasattr(v, "shape") or isinstance(v, (list, tuple)) else ""))
    return float(v)


@_lift
def clamp(x: Tensor, lo: Any = None, hi: Any = None) -> Tensor:
    """x limited to [lo, hi], elementwise; either bound may be None (Julia's ``clamp``,
    PyTorch's ``clamp(min, max)``). The gradient is 1 inside the bounds, 0 outside.

    >>> import fluxrs as fx
    >>> fx.clamp([-2.0, 0.5, 3.0], -1, 1).tolist()
    [-1.0, 0.5, 1.0]
    """
    lo, hi = _bound(lo, "clamp", "lo"), _bound(hi, "clamp", "hi")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"fx.clamp: lo ({lo}) is greater than hi ({hi})")
    return x.clamp(lo, hi)


def clip(x: Any, a_min: Any = None, a_max: Any = None) -> Any:
    """numpy's name for `clamp`: ``fx.clip(x, a_min, a_max)``."""
    return clamp(x, a_min, a_max)


def maximum(a: Any, b: Any) -> Any:
    """The larger of `a` and `b`, elementwise, with broadcasting (numpy's maximum, Julia's
    ``max.(a, b)``); ties send the gradient to `a`.

    >>> import fluxrs as fx
    >>> fx.maximum(fx.tensor([1.0, 5.0]), 3).tolist()
    [3.0, 5.0]
    """
    return _binary(a, b, "maximum", "maximum")


def minimum(a: Any, b: Any) -> Any:
    """The smaller of `a` and `b`, elementwise, with broadcasting."""
    return _binary(a, b, "minimum", "minimum")


def pow(x: Any, y: Any) -> Any:  # noqa: A001  (fx.pow, as torch.pow)
    """x ** y, elementwise, with broadcasting; differentiable in both.

    >>> import fluxrs as fx
    >>> fx.pow(fx.tensor([2.0, 3.0]), 2).tolist(), fx.pow(2, fx.tensor([3.0])).tolist()
    ([4.0, 9.0], [8.0])
    """
    return _binary(x, y, "pow", "__pow__", "__rpow__")


def matmul(a: Any, b: Any) -> Tensor:
    """The matrix product ``a @ b`` (numpy's matmul rules: vectors, matrices, batches)."""
    if _is_number(a) or _is_number(b):
        raise TypeError("fx.matmul: the arguments must be arrays, not scalars; use * to scale "
                        f"(got {type(a).__name__} and {type(b).__name__})")
    a, b, _ = _pair(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"fx.matmul: the arguments must have at least one axis, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0 if b.ndim == 1 else -2]:
        raise ValueError(f"fx.matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match: "
                         f"{a.shape[-1]} columns against {b.shape[0 if b.ndim == 1 else -2]} rows")
    return a @ b


# ---------------------------------------------------------------- reductions

def _axes(axis: Any, x: Tensor, who: str) -> Any:
    if axis is None:
        return None
    if isinstance(axis, (Tensor, np.ndarray, list)):
        hint = " (for the elementwise maximum of two arrays use fx.maximum)" if who == "max" else \
            " (for the elementwise minimum of two arrays use fx.minimum)" if who == "min" else ""
        raise TypeError(f"fx.{who}: axis must be an int or a tuple of ints, got {type(axis).__name__}{hint}")
    axes = axis if isinstance(axis, tuple) else (axis,)
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"fx.{who}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -x.ndim <= a < x.ndim:
            raise ValueError(f"fx.{who}: axis {a} is out of range for a tensor of shape {tuple(x.shape)}")
    return axis


@_lift
def sum(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """The sum of all elements, or along `axis` (an int or a tuple of ints)."""
    return x.sum(_axes(axis, x, "sum"), keepdims)


@_lift
def mean(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """The mean of all elements, or along `axis`."""
    return x.mean(_axes(axis, x, "mean"), keepdims)


@_lift
def max(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """The largest element, or the largest along `axis` (Julia's ``maximum``); the elementwise
    maximum of two arrays is `fx.maximum`."""
    return x.max(_axes(axis, x, "max"), keepdims)


@_lift
def min(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """The smallest element, or the smallest along `axis` (Julia's ``minimum``)."""
    return x.min(_axes(axis, x, "min"), keepdims)


def _prod_axis(x: Tensor, a: int) -> Tensor:
    # Pairwise products, halving the axis each round: log2(n) tensor ops, exact gradients
    # where elements are zero (which exp(sum(log)) would not give). Keeps the axis, size 1.
    n = x.shape[a]
    if n == 0:
        shape = list(x.shape)
        shape[a] = 1
        return host_like(np.ones(shape), x)
    while n > 1:
        if n % 2:
            shape = list(x.shape)
            shape[a] = 1
            x = concat([x, host_like(np.ones(shape), x)], a)
            n += 1
        x = x.slice(a, 0, n, 2) * x.slice(a, 1, n, 2)
        n //= 2
    return x


@_lift
def prod(x: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """The product of all elements, or along `axis`.

    >>> import fluxrs as fx
    >>> fx.prod(fx.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 1).tolist()
    [6.0, 120.0]
    """
    axis = _axes(axis, x, "prod")
    if axis is None:
        y = _prod_axis(x.reshape(-1), 0) if x.ndim else x
        return y.reshape([1] * x.ndim) if keepdims else y.reshape(())
    axes = sorted({a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,))})
    for a in axes:
        x = _prod_axis(x, a)
    if not keepdims:
        x = x.reshape([s for i, s in enumerate(x.shape) if i not in axes])
    return x


# ---------------------------------------------------------------- shape

@_lift
def transpose(x: Tensor, *axes: Any) -> Tensor:
    """The axes reversed (a matrix transposed), or permuted as `axes` says (numpy's transpose)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if axes and sorted(a % x.ndim if isinstance(a, numbers.Integral) else a for a in axes) != list(range(x.ndim)):
        raise ValueError(f"fx.transpose: axes {axes} are not a permutation of the {x.ndim} axes of a tensor "
                         f"of shape {tuple(x.shape)}")
    return x.transpose(*axes)


@_lift
def reshape(x: Tensor, *shape: Any) -> Tensor:
    """The same elements in a new shape, ``reshape(x, 2, 3)`` or ``reshape(x, (2, -1))``;
    row-major order, as numpy (Julia's reshape is column-major)."""
    return x.reshape(*shape)
