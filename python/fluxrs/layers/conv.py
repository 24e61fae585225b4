"""Convolution, pooling, flattening and upsampling layers, as Flux defines them, batch-first.

Inputs are ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; kernel sizes, strides,
dilations and paddings are given in the same axis order. Weights are stored as PyTorch
stores them, ``(C_out, C_in/groups, k...)``; Flux's column-major arrays hold the same data
with the axes reversed, ``(k..., C_in/groups, C_out)``.

Flux's `Conv` is a true convolution: it flips the kernel. `CrossCor` does not (it is what
PyTorch calls a convolution). So ``Conv`` with a weight ``W`` equals ``CrossCor`` with
``W`` flipped along its spatial axes. The kernels are in Rust (im2col + gemm), one call per
layer, bias and common activations fused.

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Conv((5, 5), (1, 6), fx.relu), fx.MaxPool((2, 2)),
...              fx.Conv((5, 5), 6, 16, fx.relu), fx.MaxPool((2, 2)), fx.Flatten(),
...              fx.Dense(256, 120, fx.relu), fx.Dense(120, 84, fx.relu), fx.Dense(84, 10))
>>> m[0]
Conv((5, 5), 1 => 6, relu)  # 156 parameters
>>> m(fx.rand(32, 1, 28, 28)).shape
(32, 10)
>>> fx.Conv((3,), 4, 8, pad=fx.SamePad(), stride=2)(fx.rand(1, 4, 10)).shape
(1, 8, 5)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from fluxrs import _core
from fluxrs._checks import is_int as _is_int
from fluxrs._checks import size, sizes_given, torch_keywords
from fluxrs._core import Tensor
from fluxrs.activations import identity
from fluxrs.functor import Layer, short_repr
from fluxrs.layers.basic import _as_param, _who, as_input
from fluxrs.layers.init import create_bias, create_weight, glorot_uniform
from fluxrs.tensor import host_like, tensor

__all__ = ["SamePad", "Conv", "ConvTranspose", "CrossCor", "DepthwiseConv", "MaxPool", "MeanPool",
           "AdaptiveMaxPool", "AdaptiveMeanPool", "GlobalMaxPool", "GlobalMeanPool", "Flatten", "flatten",
           "Upsample", "PixelShuffle", "pixel_shuffle", "lpnormpool"]

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


class SamePad:
    """Padding that keeps the output size equal to the input size divided by the stride
    (exactly so for stride 1), split evenly with any odd element after: Flux's ``SamePad()``.

    >>> import fluxrs as fx
    >>> fx.Conv((3, 3), 1, 1, pad=fx.SamePad()).pad
    (1, 1, 1, 1)
    """

    def __repr__(self) -> str:
        return "SamePad()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SamePad)

    def __hash__(self) -> int:
        return hash(SamePad)


def _pad_hint(pad: Any) -> str:
    """The fix for padding written as PyTorch writes it (``padding="same"``, ``padding=1``)."""
    if isinstance(pad, str) and pad.lower() == "same":
        return "write pad=fx.SamePad() (Flux's SamePad(): at stride 1 the output keeps the input's size)"
    if isinstance(pad, str) and pad.lower() == "valid":
        return "write pad=0 (no padding, the default)"
    return f"write pad={pad!r}"


# The keywords PyTorch's conv and pool layers take that fluxrs spells as Flux does.
_torch_conv_keywords = torch_keywords(
    padding=lambda v: f"fluxrs calls it pad, as Flux does: {_pad_hint(v)}",
    kernel_size="the kernel size is the first positional argument, a tuple such as (3, 3)",
    in_channels="the channels are positional, after the kernel size: (in, out), as Flux's in => out",
    out_channels="the channels are positional, after the kernel size: (in, out), as Flux's in => out",
    output_padding="ConvTranspose calls it outpad",
    padding_mode="fluxrs pads with zeros only",
)


def _kernel(who: str, k: Any) -> tuple[int, ...]:
    if _is_int(k):
        raise TypeError(f"{who}: the kernel size must be a tuple, one entry per spatial axis: "
                        f"({k},) for sequences, ({k}, {k}) for images, as in Flux")
    try:
        k = tuple(k)
    except TypeError:
        raise TypeError(f"{who}: the kernel size must be a tuple of ints, got {k!r}") from None
    if not 1 <= len(k) <= 3 or not all(_is_int(v) and v > 0 for v in k):
        raise ValueError(f"{who}: the kernel size must be 1 to 3 positive ints, got {k!r}")
    return tuple(int(v) for v in k)


def _expand(who: str, name: str, v: Any, n: int, positive: bool = True) -> tuple[int, ...]:
    """An int or a tuple of `n` ints, as a tuple of `n` ints."""
    if _is_int(v):
        v = (int(v),) * n
    else:
        try:
            v = tuple(v)
        except TypeError:
            raise TypeError(f"{who}: {name} must be an int or a tuple of {n} ints, got {v!r}") from None
        if len(v) != n or not all(_is_int(e) for e in v):
            raise ValueError(f"{who}: {name} must be an int or a tuple of {n} ints, got {v!r}")
    lo = 1 if positive else 0
    if any(e < lo for e in v):
        raise ValueError(f"{who}: {name} must be {'positive' if positive else 'non-negative'}, got {v!r}")
    return tuple(int(e) for e in v)


def _dilation(who: str, dilation: Any, k: tuple[int, ...]) -> tuple[int, ...]:
    """`dilation` per axis. Flux also takes 0 where the kernel has size 1, which then has no
    gaps to dilate (so ``dilation = k .÷ 2`` works for any k): stored as 1 there."""
    d = _expand(who, "dilation", dilation, len(k), positive=False)
    if any(dj == 0 and kj > 1 for dj, kj in zip(d, k)):
        raise ValueError(f"{who}: dilation must be positive where the kernel size is above 1, "
                         f"got dilation {d} for kernel {k}")
    return tuple(dj or 1 for dj in d)


def _padding(who: str, pad: Any, k: tuple[int, ...], dilation: tuple[int, ...],
             negative_same: bool = False) -> tuple[int, ...]:
    """`pad` as Flux stores it: (before, after) per spatial axis, flattened. With
    `negative_same`, SamePad of a kernel below size 1 gives negative padding (ConvTranspose
    with a stride above its kernel size, which grows the output by it, as in Flux)."""
    d = len(k)
    if isinstance(pad, str):
        if pad.lower() in ("same", "valid"):
            raise TypeError(f"{who}: pad={pad!r} is PyTorch's padding string; {_pad_hint(pad)}")
        raise TypeError(f"{who}: pad must be an int, a tuple or fx.SamePad(), got {pad!r}")
    if isinstance(pad, SamePad):
        # Flux's calc_padding(SamePad): the dilated kernel's size minus 1, the odd element after.
        out: list[int] = []
        for kj, dj in zip(k, dilation):
            total = (kj - 1) * dj
            if total < 0 and not negative_same:
                raise ValueError(f"{who}: SamePad cannot be computed for kernel {k} (stride larger than the kernel)")
            out += [-(-total // 2), total // 2]
        return tuple(out)
    if _is_int(pad):
        if pad < 0:
            raise ValueError(f"{who}: pad must be non-negative, got {pad}")
        return (int(pad),) * (2 * d)
    try:
        p = tuple(pad)
    except TypeError:
        raise TypeError(f"{who}: pad must be an int, SamePad() or a tuple, got {pad!r}") from None
    if not all(_is_int(e) and e >= 0 for e in p):
        raise ValueError(f"{who}: pad must hold non-negative ints, got {pad!r}")
    if len(p) == d:
        return tuple(int(e) for e in p for _ in range(2))
    if len(p) == 2 * d:
        return tuple(int(e) for e in p)
    raise ValueError(f"{who}: pad needs 1, {d} or {2 * d} entries for a {d}-d kernel, got {pad!r}")


def _maybetuple(t: tuple[int, ...]) -> str:
    # Flux's _maybetuple_string: one number when all entries agree
    return str(t[0]) if all(e == t[0] for e in t) else str(t)


def _check_input(layer: Any, x: Tensor, d: int, channels: int) -> None:
    shape = tuple(x.shape)
    if x.ndim == d + 2 and shape[1] == channels:
        return
    want = f"(N, {channels}, {_SPATIAL[d]})"
    hint = ""
    if x.ndim == d + 1 and shape[0] == channels:
        hint = "; add a batch axis, e.g. x[None]"
    elif x.ndim == d + 2 and shape[-1] == channels:
        hint = "; fluxrs is channels-first: move the channel axis to position 1"
    raise ValueError(f"{_who(layer)} expects input of shape {want}, got {shape}{hint}")


def _from_weight(who: str, layout: str, k: Any, ch: Any, args: tuple, act: Any, bias: Any) -> tuple:
    """Flux's array constructor, ``Conv(weight, bias, act)``: the weight as a parameter, and the
    bias and activation from the positional or keyword arguments."""
    weight = _as_param(k)
    if not 3 <= weight.ndim <= 5:
        raise ValueError(f"{who}(weight): the weight must be {layout} with 1 to 3 spatial axes, got shape "
                         f"{tuple(weight.shape)}")
    if ch is not None:
        bias = ch
    if args:
        if len(args) > 1 or act is not None:
            raise TypeError(f"{who}(weight, bias, act): too many arguments")
        act = args[0]
    act = identity if act is None else act
    if not callable(act):
        raise TypeError(f"{who}: the activation must be callable, got {act!r}")
    return weight, bias, act


def _check_groups(who: str, groups: Any, cin: int, cout: int) -> None:
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"{who}: groups must be a positive integer, got {groups!r}")
    if cin % groups or cout % groups:
        raise ValueError(f"{who}: input channels ({cin}) and output channels ({cout}) must both be divisible "
                         f"by groups={groups}")


def _parse(who: str, k: Any, ch: Any, args: tuple, act: Any) -> tuple[Any, Any, Any, Any]:
    """(k, ch_in, ch_out, act) from ``(k, (in, out), act)`` or ``(k, in, out, act)``."""
    if isinstance(ch, (tuple, list)) and sizes_given(ch):
        cin = size(f"{who}(k, (in, out))", "the input channels", ch[0])
        cout = size(f"{who}(k, (in, out))", "the output channels", ch[1])
        rest = args
    elif sizes_given(ch):
        if not args or not sizes_given(args[0]):
            raise TypeError(f"{who}(k, in, out, act): out must be an integer; write {who}((3, 3), 1, 6) "
                            f"or {who}((3, 3), (1, 6)) (Flux's 1 => 6)")
        cin = size(f"{who}(k, in, out)", "the input channels", ch)
        cout = size(f"{who}(k, in, out)", "the output channels", args[0])
        rest = args[1:]
    else:
        raise TypeError(f"{who}: expected channels as (in, out) or in, out after the kernel size, got {ch!r}")
    if len(rest) > 1:
        raise TypeError(f"{who}: too many positional arguments")
    if rest:
        if act is not None:
            raise TypeError(f"{who}: the activation is given twice")
        act = rest[0]
    act = identity if act is None else act
    if not callable(act):
        raise TypeError(f"{who}: the activation must be callable, got {act!r}")
    return _kernel(who, k), cin, cout, act


def _fused(act: Callable) -> str | None:
    name = getattr(act, "fused_name", None)
    return name if name in _core.FUSED_ACTIVATIONS else None


class Conv(Layer):
    """A convolution layer: ``act(conv(x, weight) + bias)``, kernel flipped (true convolution).

    ``Conv(k, (in, out), act=identity, *, stride=1, pad=0, dilation=1, groups=1, bias=True,
    init=glorot_uniform)`` with `k` a tuple (``(5, 5)`` for images, ``(3,)`` for sequences);
    ``Conv(k, in, out, act)`` also works, and ``Conv(weight, bias=True, act=identity, ...)``
    builds the layer around an existing weight ``(out, in/groups, k...)``. `pad` is an int, a
    tuple (one entry per axis, or ``(before, after)`` per axis) or ``fx.SamePad()``.

    >>> import fluxrs as fx
    >>> c = fx.Conv((3, 3), (2, 4), fx.relu, stride=2, pad=1)
    >>> c
    Conv((3, 3), 2 => 4, relu, pad=1, stride=2)  # 76 parameters
    >>> c.weight.shape, c(fx.rand(5, 2, 9, 9)).shape
    ((4, 2, 3, 3), (5, 4, 5, 5))
    """

    _flip = True
    _name = "Conv"

    @_torch_conv_keywords
    def __init__(self, k: Any, ch: Any = None, *args: Any, act: Any = None, stride: Any = 1, pad: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: Any = True, init: Callable = glorot_uniform):
        who = self._name
        if not isinstance(k, (tuple, list)) and not _is_int(k):
            # Conv(weight, bias=True, act=identity; ...): Flux's array constructor
            weight, bias, act = _from_weight(who, "(out, in/groups, k...)", k, ch, args, act, bias)
            ks = tuple(weight.shape[2:])
            cin, cout = weight.shape[1] * groups, weight.shape[0]
        else:
            ks, cin, cout, act = _parse(who, k, ch, args, act)
            weight = None
        _check_groups(who, groups, cin, cout)
        d = len(ks)
        self.stride = _expand(who, "stride", stride, d)
        self.dilation = _dilation(who, dilation, ks)
        self.pad = _padding(who, pad, ks, self.dilation)
        self.groups = int(groups)
        if weight is None:
            weight = create_weight(init, (cout, cin // groups) + ks, who)
        self.weight = weight
        self.bias = create_bias(weight, bias, (cout,), who)
        self.act = act

    @property
    def σ(self) -> Callable:  # Flux's field name
        return self.act

    def _channels(self) -> tuple[int, int]:
        return self.weight.shape[1] * self.groups, self.weight.shape[0]

    def __call__(self, x: Any) -> Tensor:
        x = as_input(x, self.weight, self, lend=True)  # read by the convolution only
        d = self.weight.ndim - 2
        _check_input(self, x, d, self._channels()[0])
        fused = _fused(self.act)
        y = _core.conv(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.groups,
                       flip=self._flip, act=fused or "identity")
        return y if fused else self.act(y)

    def _opts(self) -> str:
        # Flux's _print_conv_opt
        s = ""
        if self.act is not identity:
            s += f", {short_repr(self.act)}"
        if any(self.pad):
            s += f", pad={_maybetuple(self.pad)}"
        if any(v != 1 for v in self.stride):
            s += f", stride={_maybetuple(self.stride)}"
        if any(v != 1 for v in self.dilation):
            s += f", dilation={_maybetuple(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def _repr_inner(self) -> str:
        cin, cout = self._channels()
        return f"{self._name}({tuple(self.weight.shape[2:])}, {cin} => {cout}{self._opts()})"


class CrossCor(Conv):
    """Like `Conv` but without flipping the kernel: cross-correlation, which is what
    PyTorch's ``Conv2d`` computes. Same constructors and keywords as `Conv`.

    >>> import fluxrs as fx, numpy as np
    >>> w = np.arange(3.0, dtype=np.float32).reshape(1, 1, 3)
    >>> x = fx.tensor([[[1.0, 0.0, 0.0]]])
    >>> fx.CrossCor(w, False)(x).tolist(), fx.Conv(w, False)(x).tolist()
    ([[[0.0]]], [[[2.0]]])
    """

    _flip = False
    _name = "CrossCor"


@_torch_conv_keywords
def DepthwiseConv(k: Any, ch: Any = None, *args: Any, act: Any = None, stride: Any = 1, pad: Any = 0,
                  dilation: Any = 1, bias: Any = True, init: Callable = glorot_uniform) -> Conv:
    """A `Conv` with ``groups = in`` channels: each input channel is convolved with its own
    ``out / in`` filters. As in Flux, this returns a `Conv`; `out` must be a multiple of `in`.

    >>> import fluxrs as fx
    >>> fx.DepthwiseConv((3, 3), (2, 4), fx.relu)
    Conv((3, 3), 2 => 4, relu, groups=2)  # 40 parameters
    """
    if not isinstance(k, (tuple, list)) and not _is_int(k):
        raise TypeError("DepthwiseConv: expected a kernel size tuple and channels; for an existing weight "
                        "use Conv(weight, groups=in_channels)")
    ks, cin, cout, act = _parse("DepthwiseConv", k, ch, args, act)
    if cout % cin:
        raise ValueError(f"DepthwiseConv: output channels ({cout}) must be a multiple of input channels ({cin})")
    return Conv(ks, (cin, cout), act, stride=stride, pad=pad, dilation=dilation, groups=cin, bias=bias, init=init)


class ConvTranspose(Layer):
    """A transposed convolution: the input-gradient of a `Conv`, used to upsample.

    ``ConvTranspose(k, (in, out), act=identity, *, stride=1, pad=0, dilation=1, groups=1,
    outpad=0, bias=True, init=glorot_uniform)``; the weight is ``(in, out/groups, k...)``
    (that of the `Conv` it transposes). The output's spatial size is
    ``(n - 1) * stride + dilation * (k - 1) + 1 - pad_before - pad_after + outpad``; with
    ``pad=fx.SamePad()`` it is ``n * stride``.

    >>> import fluxrs as fx
    >>> t = fx.ConvTranspose((2, 2), (4, 2), stride=2)
    >>> t
    ConvTranspose((2, 2), 4 => 2, stride=2)  # 34 parameters
    >>> t(fx.rand(1, 4, 5, 5)).shape
    (1, 2, 10, 10)
    """

    @_torch_conv_keywords
    def __init__(self, k: Any, ch: Any = None, *args: Any, act: Any = None, stride: Any = 1, pad: Any = 0,
                 dilation: Any = 1, groups: int = 1, outpad: Any = 0, bias: Any = True,
                 init: Callable = glorot_uniform):
        who = "ConvTranspose"
        if not isinstance(k, (tuple, list)) and not _is_int(k):
            weight, bias, act = _from_weight(who, "(in, out/groups, k...)", k, ch, args, act, bias)
            ks = tuple(weight.shape[2:])
            cin, cout = weight.shape[0], weight.shape[1] * groups
        else:
            ks, cin, cout, act = _parse(who, k, ch, args, act)
            weight = None
        _check_groups(who, groups, cin, cout)
        d = len(ks)
        self.stride = _expand(who, "stride", stride, d)
        self.dilation = _dilation(who, dilation, ks)
        if isinstance(pad, SamePad):
            # Flux's calc_padding(ConvTranspose, SamePad()): that of a Conv with kernel
            # k - stride + 1, negative where the stride exceeds the kernel size; the output is
            # then always n * stride.
            eff = tuple(kj - sj + 1 for kj, sj in zip(ks, self.stride))
            self.pad = _padding(who, pad, eff, self.dilation, negative_same=True)
        else:
            self.pad = _padding(who, pad, ks, self.dilation)
        self.outpad = _expand(who, "outpad", outpad, d, positive=False)
        if any(o >= s for o, s in zip(self.outpad, self.stride)):
            raise ValueError(f"{who}: outpad {self.outpad} must be smaller than the stride {self.stride}")
        self.groups = int(groups)
        if weight is None:
            weight = create_weight(init, (cin, cout // groups) + ks, who)
        self.weight = weight
        self.bias = create_bias(weight, bias, (cout,), who)
        self.act = act

    @property
    def σ(self) -> Callable:
        return self.act

    def _channels(self) -> tuple[int, int]:
        return self.weight.shape[0], self.weight.shape[1] * self.groups

    def __call__(self, x: Any) -> Tensor:
        x = as_input(x, self.weight, self, lend=True)  # read by the convolution only
        d = self.weight.ndim - 2
        _check_input(self, x, d, self._channels()[0])
        if min(self.pad) < 0:
            return self._grown(x)
        fused = _fused(self.act)
        y = _core.conv_transpose(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.groups,
                                 flip=True, act=fused or "identity", outpad=self.outpad)
        return y if fused else self.act(y)

    def _grown(self, x: Tensor) -> Tensor:
        # Negative padding (from SamePad): the kernel pads only non-negatively, so the output
        # is computed without the negative part, then grown by zeros where no input reaches,
        # before the bias and activation, as NNlib's ∇conv_data with negative padding gives.
        pos = tuple(p if p > 0 else 0 for p in self.pad)
        y = _core.conv_transpose(x, self.weight, None, self.stride, pos, self.dilation, self.groups,
                                 flip=True, act="identity", outpad=self.outpad)
        for j in range(len(self.stride)):
            before, after = (-p if p < 0 else 0 for p in self.pad[2 * j:2 * j + 2])
            parts = []
            for n in (before, after):
                shape = list(y.shape)
                shape[2 + j] = n
                parts.append(host_like(np.zeros(shape), y) if n else None)
            y = _core.concat([t for t in (parts[0], y, parts[1]) if t is not None], 2 + j)
        if self.bias is not None:
            y = y + self.bias.reshape([1, -1] + [1] * len(self.stride))
        return self.act(y)

    def _repr_inner(self) -> str:
        cin, cout = self._channels()
        s = Conv._opts(self)  # type: ignore[arg-type]
        if any(self.outpad):
            s += f", outpad={_maybetuple(self.outpad)}"
        return f"ConvTranspose({tuple(self.weight.shape[2:])}, {cin} => {cout}{s})"


class _Pool(Layer):
    _name = ""
    _op = "maxpool"  # the _core function (looked up per call)

    @_torch_conv_keywords
    def __init__(self, k: Any, *, pad: Any = 0, stride: Any = None):
        who = f"{self._name}({k!r})"
        self.k = _kernel(self._name, k)
        d = len(self.k)
        self.stride = self.k if stride is None else _expand(who, "stride", stride, d)
        self.pad = _padding(who, pad, self.k, (1,) * d)  # SamePad as Flux: dilation 1
        if any(p >= kj for p, kj in zip(self.pad, [kj for kj in self.k for _ in range(2)])):
            raise ValueError(f"{who}: padding {self.pad} must be smaller than the kernel on each side")

    def __call__(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        d = len(self.k)
        if x.ndim != d + 2:
            raise ValueError(f"{_who(self)} expects input of shape (N, C, {_SPATIAL[d]}), got {tuple(x.shape)}")
        return getattr(_core, self._op)(x, self.k, self.stride, self.pad)

    def _repr_inner(self) -> str:
        s = f"{self._name}({self.k}"
        if any(self.pad):
            s += f", pad={_maybetuple(self.pad)}"
        if self.stride != self.k:
            s += f", stride={_maybetuple(self.stride)}"
        return s + ")"


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"expected a tensor or numeric array, got {type(x).__name__} of dtype {a.dtype}")
    return tensor(a)


class MaxPool(_Pool):
    """Max pooling over windows of size `k` (a tuple): ``MaxPool(k, pad=0, stride=k)``.
    Padding never wins the max.

    >>> import fluxrs as fx
    >>> fx.MaxPool((2,))(fx.tensor([[[1.0, 3.0, 2.0, 0.0]]])).tolist()
    [[[3.0, 2.0]]]
    """

    _name = "MaxPool"
    _op = "maxpool"


class MeanPool(_Pool):
    """Mean pooling over windows of size `k`: ``MeanPool(k, pad=0, stride=k)``. Padding
    counts as zeros: every window is divided by the kernel size, as in NNlib.

    >>> import fluxrs as fx
    >>> fx.MeanPool((2,))(fx.tensor([[[1.0, 3.0, 2.0, 0.0]]])).tolist()
    [[[2.0, 1.0]]]
    """

    _name = "MeanPool"
    _op = "meanpool"


def lpnormpool(x: Any, p: Any, k: Any, *, pad: Any = 0, stride: Any = None) -> Tensor:
    """Lp pooling (PyTorch's LPPool), NNlib's ``lpnormpool(x, p, k; pad=0, stride=k)``: each
    window of size `k` (a tuple) gives ``(Σᵢ xᵢ^p)^(1/p)``, for ``0 < p < ∞``. As in NNlib,
    padding adds nothing to a window, and for a non-integer `p` the input must be
    non-negative (a negative power gives NaN, where NNlib raises a DomainError).

    Built on `MeanPool`'s kernel: ``(meanpool(x^p) * prod(k))^(1/p)``, so it is differentiable
    wherever the window sums are positive.

    >>> import fluxrs as fx
    >>> x = fx.tensor([[[3.0, 4.0, 1.0, 1.0]]])
    >>> fx.lpnormpool(x, 2, (2,)).tolist()[0][0][0]
    5.0
    >>> fx.lpnormpool(x, 1, (2,)).tolist() == (fx.MeanPool((2,))(x) * 2).tolist()
    True
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p < math.inf:
        raise ValueError(f"lpnormpool: p must be a real number with 0 < p < Inf, got {p!r}")
    pool = MeanPool(k, pad=pad, stride=stride)  # checks k, pad and stride as the layer does
    x = _as_tensor(x)
    d = len(pool.k)
    if x.ndim != d + 2:
        raise ValueError(f"lpnormpool: a {d}-d kernel {pool.k} expects x of shape (N, C, {_SPATIAL[d]}), "
                         f"got {tuple(x.shape)}")
    # an integer p keeps x^p defined for negative x, as Julia's integer powers do
    pw = int(p) if float(p).is_integer() else float(p)
    s = pool(x ** pw) * math.prod(pool.k)
    return s if pw == 1 else s ** (1.0 / pw)


class _AdaptivePool(Layer):
    _name = ""
    _op = "maxpool"  # the _core function (looked up per call)

    def __init__(self, out: Any):
        if _is_int(out):
            raise TypeError(f"{self._name}: the output size must be a tuple, e.g. ({out}, {out}) for images")
        self.out = _kernel(self._name, out)

    def __call__(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        d = len(self.out)
        if x.ndim != d + 2:
            raise ValueError(f"{_who(self)} expects input of shape (N, C, {_SPATIAL[d]}), got {tuple(x.shape)}")
        insize = tuple(x.shape[2:])
        if any(i < o for i, o in zip(insize, self.out)):
            raise ValueError(f"{_who(self)}: the input's spatial size {insize} is smaller than the output size")
        # Flux's rule: stride = in ÷ out, kernel = in - (out - 1) * stride, no padding
        stride = tuple(i // o for i, o in zip(insize, self.out))
        k = tuple(i - (o - 1) * s for i, o, s in zip(insize, self.out, stride))
        return getattr(_core, self._op)(x, k, stride, 0)

    def _repr_inner(self) -> str:
        return f"{self._name}({self.out})"


class AdaptiveMaxPool(_AdaptivePool):
    """Max pooling to a fixed output size `out` (a tuple), whatever the input size,
    with Flux's windows: stride ``in // out``, kernel ``in - (out - 1) * stride``.

    >>> import fluxrs as fx
    >>> fx.AdaptiveMaxPool((5, 5))(fx.rand(2, 3, 28, 28)).shape
    (2, 3, 5, 5)
    """

    _name = "AdaptiveMaxPool"
    _op = "maxpool"


class AdaptiveMeanPool(_AdaptivePool):
    """Mean pooling to a fixed output size `out` (a tuple), windows as `AdaptiveMaxPool`."""

    _name = "AdaptiveMeanPool"
    _op = "meanpool"


class _GlobalPool(Layer):
    _name = ""

    def __call__(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        if not 3 <= x.ndim <= 5:
            raise ValueError(f"{self._name}() expects input of shape (N, C, S...) with 1 to 3 spatial axes, "
                             f"got {tuple(x.shape)}")
        if 0 in x.shape[2:]:
            # as MeanPool and AdaptiveMeanPool refuse: the mean of nothing is NaN, the max undefined
            raise ValueError(f"{self._name}(): no spatial positions to pool over in input of shape {tuple(x.shape)}")
        return self._reduce(x, tuple(range(2, x.ndim)))

    def _repr_inner(self) -> str:
        return f"{self._name}()"


class GlobalMaxPool(_GlobalPool):
    """The max over all spatial axes, keeping them with size 1: ``(N, C, H, W) -> (N, C, 1, 1)``.

    >>> import fluxrs as fx
    >>> fx.GlobalMaxPool()(fx.rand(2, 3, 4, 4)).shape
    (2, 3, 1, 1)
    """

    _name = "GlobalMaxPool"

    @staticmethod
    def _reduce(x: Tensor, axes: tuple[int, ...]) -> Tensor:
        return x.max(axes, keepdims=True)


class GlobalMeanPool(_GlobalPool):
    """The mean over all spatial axes, keeping them with size 1: ``(N, C, H, W) -> (N, C, 1, 1)``."""

    _name = "GlobalMeanPool"

    @staticmethod
    def _reduce(x: Tensor, axes: tuple[int, ...]) -> Tensor:
        return x.mean(axes, keepdims=True)


def flatten(x: Any) -> Tensor:
    """Keep axis 0 (the batch) and flatten the rest: ``(N, ...) -> (N, prod(...))``, as
    Flux's `flatten` keeps its last (batch) axis.

    >>> import fluxrs as fx
    >>> fx.flatten(fx.zeros(2, 3, 4)).shape
    (2, 12)
    """
    x = _as_tensor(x)
    if x.ndim == 0:
        raise ValueError("flatten: expected at least one axis (the batch), got a 0-d tensor")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


class Flatten(Layer):
    """`flatten` as a layer: ``(N, ...) -> (N, prod(...))``, typically between the
    convolutional and the dense part of a model."""

    def __call__(self, x: Any) -> Tensor:
        return flatten(x)

    def _repr_inner(self) -> str:
        return "Flatten()"


_MODES = {"nearest": None, "linear": 1, "bilinear": 2, "trilinear": 3}


def _interp_matrix(n_in: int, n_out: int, align_corners: bool, like: Tensor) -> Tensor:
    """(n_out, n_in) linear interpolation weights along one axis, as NNlib computes them,
    with `like`'s dtype and device."""
    a = np.zeros((n_out, n_in))
    for o in range(n_out):
        if align_corners:
            src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max(0.0, (o + 0.5) * n_in / n_out - 0.5)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        a[o, i0] += 1.0 - lam
        a[o, i1] += lam
    return host_like(a, like)


class Upsample(Layer):
    """Upsampling of the spatial axes by `scale` (an int, or one per axis) or to `size`.

    ``Upsample(mode="nearest", *, scale=None, size=None, align_corners=True)`` or
    ``Upsample(scale, mode="nearest")``. Modes: ``"nearest"`` (integer scales; each value
    repeated), ``"linear"`` (1-D), ``"bilinear"`` (2-D), ``"trilinear"`` (3-D), the
    linear ones with NNlib's ``align_corners=True`` by default. Built from differentiable
    tensor ops (repeat by broadcasting; interpolation as small matrix products).

    >>> import fluxrs as fx
    >>> u = fx.Upsample(scale=2)
    >>> u
    Upsample("nearest", scale=2)
    >>> u(fx.tensor([[[1.0, 2.0]]])).tolist()
    [[[1.0, 1.0, 2.0, 2.0]]]
    >>> [round(v, 3) for v in fx.Upsample("linear", size=(3,))(fx.tensor([[[0.0, 1.0]]]))[0, 0].tolist()]
    [0.0, 0.5, 1.0]
    """

    def __init__(self, mode: Any = "nearest", scale: Any = None, *, size: Any = None, align_corners: bool = True):
        if not isinstance(mode, str):
            # Upsample(scale, mode="nearest")
            if scale is not None and not isinstance(scale, str):
                raise TypeError("Upsample(scale, mode): mode must be a string")
            mode, scale = (scale or "nearest"), mode
        mode = mode.lstrip(":")
        if mode not in _MODES:
            raise ValueError(f"Upsample: mode must be one of {sorted(_MODES)}, got {mode!r}")
        if (scale is None) == (size is None):
            raise ValueError("Upsample: give exactly one of scale and size")
        if scale is not None:
            sc = scale if isinstance(scale, (tuple, list)) else (scale,)
            if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) and s > 0 for s in sc):
                raise ValueError(f"Upsample: scale must be positive, got {scale!r}")
            if mode == "nearest" and not all(_is_int(s) or float(s).is_integer() for s in sc):
                raise ValueError(f"Upsample(\"nearest\"): scale must be integers, got {scale!r}")
            scale = tuple(scale) if isinstance(scale, (tuple, list)) else scale
        if size is not None:
            size = (size,) if _is_int(size) else tuple(size)
            if not all(_is_int(s) and s > 0 for s in size):
                raise ValueError(f"Upsample: size must be positive ints, got {size!r}")
        self.mode = mode
        self.scale = scale
        self.size = size
        self.align_corners = bool(align_corners)

    def _out_size(self, insize: tuple[int, ...]) -> tuple[int, ...]:
        d = len(insize)
        if self.size is not None:
            if len(self.size) != d:
                raise ValueError(f"{_who(self)}: size {self.size} needs {d} entries for input with {d} spatial axes")
            return self.size
        sc = self.scale if isinstance(self.scale, tuple) else (self.scale,) * d
        if len(sc) != d:
            raise ValueError(f"{_who(self)}: scale {self.scale} needs {d} entries for input with {d} spatial axes")
        return tuple(int(math.floor(i * s)) for i, s in zip(insize, sc))

    def __call__(self, x: Any) -> Tensor:
        x = _as_tensor(x)
        if not 3 <= x.ndim <= 5:
            raise ValueError(f"{_who(self)} expects input of shape (N, C, S...) with 1 to 3 spatial axes, "
                             f"got {tuple(x.shape)}")
        d = x.ndim - 2
        want = _MODES[self.mode]
        if want is not None and want != d:
            raise ValueError(f"{_who(self)}: mode {self.mode!r} is for {want} spatial axes, got input {tuple(x.shape)}")
        insize = tuple(x.shape[2:])
        out = self._out_size(insize)
        if 0 in insize:
            # an empty axis scales to an empty axis; there is nothing to interpolate a size from
            if any(o != 0 for o, i in zip(out, insize) if i == 0):
                raise ValueError(f"{_who(self)}: cannot upsample an empty spatial axis to size {out} (input "
                                 f"{tuple(x.shape)})")
            return x.reshape(tuple(x.shape[:2]) + out)
        if self.mode == "nearest":
            if any(o % i for o, i in zip(out, insize)):
                raise ValueError(f"{_who(self)}: nearest upsampling needs an output size {out} that is a multiple "
                                 f"of the input size {insize}")
            reps = tuple(o // i for o, i in zip(out, insize))
            if all(r == 1 for r in reps):
                return x
            lead = tuple(x.shape[:2])
            expanded = lead + tuple(v for i in insize for v in (i, 1))
            target = lead + tuple(v for i, r in zip(insize, reps) for v in (i, r))
            return x.reshape(expanded).broadcast_to(target).reshape(lead + out)
        y = x
        for j in range(d):
            if out[j] == insize[j]:
                continue  # the identity, with or without align_corners
            a = _interp_matrix(insize[j], out[j], self.align_corners, x)
            ax = 2 + j
            if ax == y.ndim - 1:
                y = y @ a.T
            else:
                y = (y.swapaxes(ax, -1) @ a.T).swapaxes(ax, -1)
        return y

    def _repr_inner(self) -> str:
        s = f"Upsample({self.mode!r}".replace("'", '"')
        if self.scale is not None:
            s += f", scale={self.scale}"
        if self.size is not None:
            s += f", size={self.size}"
        return s + ")"


def pixel_shuffle(x: Any, r: int) -> Tensor:
    """NNlib's ``pixel_shuffle(x, r)``, batch-first: ``(N, C·r^d, S₁, …, S_d)`` becomes
    ``(N, C, S₁·r, …, S_d·r)``, with ``y[n, c, s₁·r + i₁, …] = x[n, c·r^d + (i₁ r^(d-1) + … + i_d), s₁, …]``
    (NNlib's order with the axes reversed; PyTorch's ``pixel_shuffle`` for d = 2). Built from
    reshape and permute, so it is differentiable. Used to upsample in super-resolution
    networks (Shi et al. 2016).

    >>> import fluxrs as fx, numpy as np
    >>> x = fx.tensor(np.arange(8, dtype=np.float32).reshape(1, 4, 1, 2))  # 4 channels, 1×2
    >>> fx.pixel_shuffle(x, 2)[0, 0].tolist()
    [[0.0, 2.0, 1.0, 3.0], [4.0, 6.0, 5.0, 7.0]]
    """
    if not _is_int(r) or r < 1:
        raise ValueError(f"pixel_shuffle: r must be a positive integer, got {r!r}")
    x = _as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"pixel_shuffle: expected x of shape (N, C, S...) with at least one spatial axis, "
                         f"got {tuple(x.shape)}")
    d = x.ndim - 2
    n, cin, sizes = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if cin % r ** d:
        raise ValueError(f"pixel_shuffle: the channel axis ({cin}) of x {tuple(x.shape)} must be divisible by "
                         f"r^d = {r ** d} (r={r}, d={d} spatial axes)")
    cout = cin // r ** d
    # (N, C, i₁…i_d, S₁…S_d) -> (N, C, S₁, i₁, …, S_d, i_d): each offset iⱼ lands beside its axis Sⱼ
    y = x.reshape((n, cout) + (r,) * d + sizes)
    perm = (0, 1) + tuple(a for j in range(d) for a in (2 + d + j, 2 + j))
    return y.permute(perm).reshape((n, cout) + tuple(s * r for s in sizes))


class PixelShuffle(Layer):
    """`pixel_shuffle` as a layer: ``PixelShuffle(r)`` maps ``(N, C·r^d, S...)`` to
    ``(N, C, S·r...)``, as Flux's ``PixelShuffle(r)``.

    >>> import fluxrs as fx
    >>> p = fx.PixelShuffle(2)
    >>> p
    PixelShuffle(2)
    >>> p(fx.rand(3, 8, 5, 7)).shape
    (3, 2, 10, 14)
    """

    def __init__(self, r: int):
        if not _is_int(r) or r < 1:
            raise ValueError(f"PixelShuffle: r must be a positive integer, got {r!r}")
        self.r = int(r)

    def __call__(self, x: Any) -> Tensor:
        return pixel_shuffle(x, self.r)

    def _repr_inner(self) -> str:
        return f"PixelShuffle({self.r})"
