"""Convolution, pooling, flatten and upsample layers: values against independent numpy
references written here, gradients against central finite differences (float64), the
LeNet-5 shapes, Flux-style reprs and the errors for wrong inputs."""

import copy
import itertools
import math
import warnings

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import _core
from gradcheck import numeric_gradient

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- numpy references

def _pads(pad, d):
    if isinstance(pad, int):
        return [(pad, pad)] * d
    if len(pad) == d:
        return [(p, p) for p in pad]
    return [(pad[2 * j], pad[2 * j + 1]) for j in range(d)]


def _tup(v, d):
    return (v,) * d if isinstance(v, int) else tuple(v)


def _flip(w):
    d = w.ndim - 2
    return w[(slice(None), slice(None)) + (slice(None, None, -1),) * d]


def np_crosscor(x, w, b=None, stride=1, pad=0, dilation=1, groups=1):
    """Cross-correlation by shifted slices of the zero-padded input, one kernel tap at a time."""
    d = x.ndim - 2
    s, dl, p = _tup(stride, d), _tup(dilation, d), _pads(pad, d)
    xp = np.pad(x, [(0, 0), (0, 0)] + p)
    k = w.shape[2:]
    out = [(xp.shape[2 + j] - dl[j] * (k[j] - 1) - 1) // s[j] + 1 for j in range(d)]
    cig, cog = w.shape[1], w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for g in range(groups):
        xg = xp[:, g * cig:(g + 1) * cig]
        wg = w[g * cog:(g + 1) * cog]
        for kpos in itertools.product(*[range(kj) for kj in k]):
            sl = tuple(slice(kpos[j] * dl[j], kpos[j] * dl[j] + s[j] * (out[j] - 1) + 1, s[j]) for j in range(d))
            patch = xg[(slice(None), slice(None)) + sl]
            y[:, g * cog:(g + 1) * cog] += np.einsum("nc...,oc->no...", patch, wg[(slice(None), slice(None)) + kpos])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * d)
    return y


def np_conv(x, w, b=None, **kw):
    """Flux's Conv: a true convolution, i.e. cross-correlation with the flipped kernel."""
    return np_crosscor(x, _flip(w), b, **kw)


def np_conv_transpose(y, w, b=None, stride=1, pad=0, dilation=1, groups=1, outpad=0):
    """Flux's ConvTranspose by its definition: each input value scatters a weighted copy of
    the flipped kernel into the output; the padding is then cropped."""
    d = y.ndim - 2
    s, dl, p, op = _tup(stride, d), _tup(dilation, d), _pads(pad, d), _tup(outpad, d)
    w = _flip(w)
    k = w.shape[2:]
    cyg, cxg = w.shape[0] // groups, w.shape[1]
    full = [(y.shape[2 + j] - 1) * s[j] + dl[j] * (k[j] - 1) + 1 + op[j] for j in range(d)]
    out = np.zeros((y.shape[0], cxg * groups, *full))
    for g in range(groups):
        yg = y[:, g * cyg:(g + 1) * cyg]
        wg = w[g * cyg:(g + 1) * cyg]
        for kpos in itertools.product(*[range(kj) for kj in k]):
            sl = tuple(slice(kpos[j] * dl[j], kpos[j] * dl[j] + s[j] * (y.shape[2 + j] - 1) + 1, s[j]) for j in range(d))
            out[(slice(None), slice(g * cxg, (g + 1) * cxg)) + sl] += np.einsum(
                "no...,oc->nc...", yg, wg[(slice(None), slice(None)) + kpos])
    crop = tuple(slice(p[j][0], full[j] - p[j][1]) for j in range(d))
    out = out[(slice(None), slice(None)) + crop]
    if b is not None:
        out += b.reshape((1, -1) + (1,) * d)
    return out


def np_pool(x, k, stride=None, pad=0, kind="max"):
    d = x.ndim - 2
    stride = k if stride is None else _tup(stride, d)
    p = _pads(pad, d)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + p, constant_values=fill)
    out = [(xp.shape[2 + j] - k[j]) // stride[j] + 1 for j in range(d)]
    taps = []
    for kpos in itertools.product(*[range(kj) for kj in k]):
        sl = tuple(slice(kpos[j], kpos[j] + stride[j] * (out[j] - 1) + 1, stride[j]) for j in range(d))
        taps.append(xp[(slice(None), slice(None)) + sl])
    taps = np.stack(taps)
    return taps.max(0) if kind == "max" else taps.sum(0) / math.prod(k)


def np_linear_upsample(x, out, align_corners=True):
    """Separable linear interpolation, point by point."""
    y = x
    for j, n_out in enumerate(out):
        ax = 2 + j
        n_in = y.shape[ax]
        pieces = []
        for o in range(n_out):
            if align_corners:
                src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            else:
                src = max(0.0, (o + 0.5) * n_in / n_out - 0.5)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            pieces.append((1 - lam) * np.take(y, i0, axis=ax) + lam * np.take(y, i1, axis=ax))
        y = np.stack(pieces, axis=ax)
    return y


def f64(a):
    return fx.tensor(a, dtype="float64")


# ---------------------------------------------------------------- finite differences

def fd_check(layer, x, n_samples=40, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Gradients of sum(R * layer(x)) w.r.t. x and every parameter, against central
    differences at up to `n_samples` random coordinates of each."""
    layer = fx.f64(layer)
    x = np.asarray(x, dtype=np.float64)
    r = RNG.standard_normal(layer(f64(x)).shape)

    def loss(m, xx):
        return float((np.asarray(m(f64(xx))) * r).sum())

    gm, gx = fx.gradient(lambda m, xx: (m(xx) * f64(r)).sum(), layer, f64(x))

    def check(base, grad, evaluate, what):
        assert grad is not None, f"no gradient for {what}"
        grad = np.asarray(grad)
        assert grad.shape == base.shape, what
        idx = np.arange(base.size) if base.size <= n_samples else RNG.choice(base.size, n_samples, replace=False)
        fd = numeric_gradient(evaluate, base, eps, at=idx)
        np.testing.assert_allclose(grad.flat[idx], fd.flat[idx], rtol=rtol, atol=atol, err_msg=f"{what} at {idx}")

    check(x, gx, lambda v: loss(layer, v), "input")
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if p is None:
            continue
        base = np.array(p)

        def evaluate(v, name=name):
            m = copy.copy(layer)
            setattr(m, name, f64(v))
            return loss(m, x)

        check(base, getattr(gm, name), evaluate, name)


# ---------------------------------------------------------------- Conv / CrossCor values

CONV_CASES = [
    # (x shape, k, (in, out), kwargs)
    ((2, 3, 9), (3,), (3, 4), {}),
    ((2, 2, 11), (3,), (2, 4), dict(stride=2, pad=(1, 2), dilation=2, groups=2)),
    ((2, 1, 10, 9), (5, 5), (1, 6), {}),
    ((2, 4, 8, 7), (3, 3), (4, 6), dict(stride=(2, 1), pad=(1, 0, 2, 1), dilation=(1, 2), groups=2)),
    ((1, 3, 6, 6), (3, 3), (3, 6), dict(pad=1, groups=3)),
    ((2, 3, 5, 5), (1, 1), (3, 2), {}),
    ((1, 2, 5, 4, 6), (2, 3, 2), (2, 3), dict(stride=(1, 2, 1), pad=1, dilation=(1, 1, 2))),
]


@pytest.mark.parametrize("xs,k,ch,kw", CONV_CASES)
@pytest.mark.parametrize("cls", ["Conv", "CrossCor"])
def test_conv_values_match_numpy(cls, xs, k, ch, kw):
    layer = getattr(fx, cls)(k, ch, **kw)
    x = RNG.standard_normal(xs).astype(np.float32)
    layer.bias = fx.tensor(RNG.standard_normal(ch[1]).astype(np.float32))
    ref = np_conv if cls == "Conv" else np_crosscor
    want = ref(x.astype(np.float64), np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64),
               **{key: v for key, v in kw.items()})
    got = layer(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_conv_flips_and_crosscor_does_not():
    w = RNG.standard_normal((2, 3, 3, 2))
    x = RNG.standard_normal((2, 3, 6, 5))
    a = fx.Conv(f64(w), False)(f64(x))
    b = fx.CrossCor(f64(_flip(w).copy()), False)(f64(x))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    # a 1-D impulse shows the orientation: conv reverses the kernel, crosscor keeps it
    k = np.array([[[1.0, 2.0, 3.0]]])
    imp = f64([[[0.0, 0.0, 1.0, 0.0, 0.0]]])
    assert fx.Conv(f64(k), False, pad=1)(imp).tolist() == [[[0.0, 1.0, 2.0, 3.0, 0.0]]]
    assert fx.CrossCor(f64(k), False, pad=1)(imp).tolist() == [[[0.0, 3.0, 2.0, 1.0, 0.0]]]


@pytest.mark.parametrize("act,ref", [(fx.relu, lambda z: np.maximum(z, 0)), (fx.tanh, np.tanh),
                                     (fx.sigmoid, lambda z: 1 / (1 + np.exp(-z))),
                                     (fx.softplus, lambda z: np.log1p(np.exp(z))),
                                     (fx.elu, lambda z: np.where(z > 0, z, np.exp(z) - 1))])
def test_conv_activations_fused_or_not(act, ref):
    layer = fx.f64(fx.Conv((3, 3), (2, 3), act, pad=1))
    x = RNG.standard_normal((2, 2, 5, 5))
    want = ref(np_conv(x, np.asarray(layer.weight), np.asarray(layer.bias), pad=1))
    np.testing.assert_allclose(np.asarray(layer(f64(x))), want, rtol=1e-10, atol=1e-12)


def test_depthwise_conv_is_a_grouped_conv():
    layer = fx.DepthwiseConv((3, 3), (3, 6), fx.relu, pad=1)
    assert isinstance(layer, fx.Conv) and layer.groups == 3 and layer.weight.shape == (6, 1, 3, 3)
    x = RNG.standard_normal((2, 3, 7, 7))
    want = np.maximum(np_conv(x, np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64),
                              pad=1, groups=3), 0)
    np.testing.assert_allclose(np.asarray(layer(x.astype(np.float32))), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of input channels"):
        fx.DepthwiseConv((3, 3), (2, 3))


def test_same_pad_keeps_the_size():
    for k, s, dl, n in [((3, 3), 1, 1, 9), ((4, 4), 1, 1, 8), ((5,), 2, 1, 11), ((3, 3), 1, 2, 7), ((2, 3), 3, 1, 10)]:
        layer = fx.Conv(k, (2, 2), pad=fx.SamePad(), stride=s, dilation=dl)
        x = fx.rand(1, 2, *([n] * len(k)))
        assert layer(x).shape[2:] == tuple(math.ceil(n / s) for _ in k), (k, s, dl)
    assert fx.Conv((4, 4), (1, 1), pad=fx.SamePad()).pad == (2, 1, 2, 1)  # odd element after, as Flux
    assert fx.MaxPool((3, 3), pad=fx.SamePad(), stride=1)(fx.rand(1, 1, 6, 6)).shape == (1, 1, 6, 6)


def test_conv_constructors_and_weight_form():
    a = fx.Conv((5, 5), (1, 6), fx.relu)
    b = fx.Conv((5, 5), 1, 6, fx.relu)
    c = fx.Conv((5, 5), 1, 6, act=fx.relu, stride=1, pad=0)
    for m in (a, b, c):
        assert m.weight.shape == (6, 1, 5, 5) and m.bias.shape == (6,) and m.act is fx.relu
        assert m.weight.dtype == np.float32
    w = RNG.standard_normal((4, 2, 3))
    m = fx.Conv(w, True, fx.tanh, stride=2)
    assert m.weight.dtype == np.float64 and m.bias.tolist() == [0.0] * 4 and m.stride == (2,)
    m = fx.Conv(w, np.arange(4.0))
    assert m.bias.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert fx.Conv((3,), (2, 3), bias=False).bias is None
    assert fx.Conv((3, 3), (2, 3), init=fx.zeros32).weight.tolist() == np.zeros((3, 2, 3, 3)).tolist()
    assert len(fx.params(fx.Conv((3, 3), (2, 3)))) == 2
    # Flux's fan-in / fan-out for glorot: (in/groups * prod(k), out * prod(k))
    fx.seed_(0)
    w = np.asarray(fx.Conv((5, 5), (4, 8)).weight)
    assert np.abs(w).max() <= math.sqrt(6 / (4 * 25 + 8 * 25)) + 1e-7


def test_reprs_are_fluxs():
    assert repr(fx.Conv((5, 5), (1, 6), fx.relu)) == "Conv((5, 5), 1 => 6, relu)  # 156 parameters"
    assert repr(fx.Conv((3,), (2, 4), stride=2, pad=(1, 0), bias=False)) == \
        "Conv((3,), 2 => 4, pad=(1, 0), stride=2, bias=False)  # 24 parameters"
    assert repr(fx.Conv((3, 3), (4, 8), dilation=2, groups=4, pad=fx.SamePad())) == \
        "Conv((3, 3), 4 => 8, pad=2, dilation=2, groups=4)  # 80 parameters"
    assert repr(fx.CrossCor((2, 2), (1, 1), fx.σ)) == "CrossCor((2, 2), 1 => 1, σ)  # 5 parameters"
    assert repr(fx.ConvTranspose((2, 2), (4, 2), stride=2, outpad=1)) == \
        "ConvTranspose((2, 2), 4 => 2, stride=2, outpad=1)  # 34 parameters"
    assert repr(fx.MaxPool((2, 2))) == "MaxPool((2, 2))"
    assert repr(fx.MeanPool((3,), pad=1, stride=1)) == "MeanPool((3,), pad=1, stride=1)"
    assert repr(fx.AdaptiveMaxPool((5, 5))) == "AdaptiveMaxPool((5, 5))"
    assert repr(fx.GlobalMeanPool()) == "GlobalMeanPool()"
    assert repr(fx.Flatten()) == "Flatten()"
    assert repr(fx.Upsample("bilinear", size=(4, 4))) == 'Upsample("bilinear", size=(4, 4))'
    assert repr(fx.Upsample(2)) == 'Upsample("nearest", scale=2)'
    m = fx.Chain(fx.Conv((3, 3), (1, 2), fx.relu), fx.MaxPool((2, 2)), fx.Flatten(), fx.Dense(8, 2))
    assert repr(m) == "Chain(Conv((3, 3), 1 => 2, relu), MaxPool((2, 2)), Flatten(), Dense(8 => 2))  # 38 parameters"


# ---------------------------------------------------------------- ConvTranspose

CT_CASES = [
    ((2, 3, 5), (3,), (3, 2), dict(stride=2)),
    ((2, 4, 4), (3,), (4, 6), dict(stride=3, pad=(1, 0), dilation=2, groups=2, outpad=2)),
    ((2, 4, 3, 4), (2, 2), (4, 2), dict(stride=2)),
    ((1, 2, 4, 3), (3, 2), (2, 4), dict(stride=(2, 1), pad=(1, 1, 0, 1), dilation=(1, 2), outpad=(1, 0))),
    ((1, 2, 3, 3, 2), (2, 2, 3), (2, 2), dict(stride=2, pad=1)),
]


@pytest.mark.parametrize("ys,k,ch,kw", CT_CASES)
def test_conv_transpose_values_match_numpy(ys, k, ch, kw):
    layer = fx.f64(fx.ConvTranspose(k, ch, **kw))
    layer.bias = f64(RNG.standard_normal(ch[1]))
    assert layer.weight.shape == (ch[0], ch[1] // kw.get("groups", 1)) + k
    y = RNG.standard_normal(ys)
    want = np_conv_transpose(y, np.asarray(layer.weight), np.asarray(layer.bias), **kw)
    got = layer(f64(y))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_conv_transpose_inverts_conv_shapes_and_same_pad():
    c = fx.Conv((3, 3), (2, 5), stride=2, pad=1)
    t = fx.ConvTranspose((3, 3), (5, 2), stride=2, pad=1, outpad=1)
    x = fx.rand(2, 2, 8, 8)
    assert t(c(x)).shape == x.shape
    for k, s in [((4, 4), 2), ((3,), 3), ((2, 2), 1)]:
        t = fx.ConvTranspose(k, (1, 1), pad=fx.SamePad(), stride=s)
        assert t(fx.rand(1, 1, *([5] * len(k)))).shape[2:] == (5 * s,) * len(k)
    with pytest.raises(ValueError, match="outpad"):
        fx.ConvTranspose((3,), (1, 1), stride=2, outpad=2)


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    ((2, 3, 9), (2,), {}),
    ((2, 2, 10), (3,), dict(stride=2, pad=(1, 2))),
    ((2, 3, 8, 8), (2, 2), {}),
    ((1, 2, 7, 6), (3, 2), dict(stride=(2, 1), pad=(1, 1, 0, 1))),
    ((2, 1, 5, 7), (2, 3), dict(stride=1, pad=1)),
    ((1, 2, 4, 5, 6), (2, 2, 3), dict(stride=(2, 1, 3), pad=(1, 0, 0, 1, 1, 1))),
]


@pytest.mark.parametrize("xs,k,kw", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "mean"])
def test_pool_values_match_numpy(kind, xs, k, kw):
    layer = (fx.MaxPool if kind == "max" else fx.MeanPool)(k, **kw)
    x = RNG.standard_normal(xs)
    want = np_pool(x, k, kw.get("stride"), kw.get("pad", 0), kind)
    got = layer(f64(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_max_pool_gradient_goes_to_the_maximum():
    x = f64([[[1.0, 5.0, 2.0, 2.0, 0.0, -1.0]]])
    g = fx.gradient(lambda x: (fx.MaxPool((2,))(x) * f64([[[1.0, 2.0, 3.0]]])).sum(), x)[0]
    assert g.tolist() == [[[0.0, 1.0, 2.0, 0.0, 3.0, 0.0]]]  # a tie goes to the first


@pytest.mark.parametrize("kind", ["max", "mean"])
def test_adaptive_pool_uses_fluxs_windows(kind):
    cls = fx.AdaptiveMaxPool if kind == "max" else fx.AdaptiveMeanPool
    for xs, out in [((2, 3, 28, 28), (5, 5)), ((1, 2, 10, 7), (3, 2)), ((2, 2, 9), (4,)), ((1, 1, 6, 6, 5), (2, 3, 1))]:
        x = RNG.standard_normal(xs)
        got = cls(out)(f64(x))
        assert got.shape == xs[:2] + out
        ins = xs[2:]
        stride = tuple(i // o for i, o in zip(ins, out))
        k = tuple(i - (o - 1) * s for i, o, s in zip(ins, out, stride))
        np.testing.assert_allclose(np.asarray(got), np_pool(x, k, stride, 0, kind), rtol=1e-12)
    with pytest.raises(ValueError, match="smaller than the output size"):
        cls((8, 8))(fx.rand(1, 1, 4, 4))


def test_global_pools_and_flatten():
    x = RNG.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(np.asarray(fx.GlobalMaxPool()(f64(x))), x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(np.asarray(fx.GlobalMeanPool()(f64(x))), x.mean(axis=(2, 3), keepdims=True))
    x1 = RNG.standard_normal((2, 3, 7))
    np.testing.assert_allclose(np.asarray(fx.GlobalMeanPool()(f64(x1))), x1.mean(axis=2, keepdims=True))
    np.testing.assert_allclose(np.asarray(fx.Flatten()(f64(x))), x.reshape(2, 60))
    assert fx.flatten(fx.zeros(5, 2, 2, 2)).shape == (5, 8)
    assert fx.Chain(fx.GlobalMeanPool(), fx.Flatten())(fx.rand(4, 6, 3, 3)).shape == (4, 6)


# ---------------------------------------------------------------- lpnormpool (NNlib: test/pooling.jl)

def np_lpnormpool(x, p, k, stride=None, pad=0):
    """(Σ x^p)^(1/p) over each window, written out with numpy's sliding windows; padding adds zeros."""
    d = x.ndim - 2
    stride = k if stride is None else _tup(stride, d)
    xp = np.pad(x, [(0, 0), (0, 0)] + _pads(pad, d))
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=tuple(range(2, 2 + d)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)]
    return (win ** p).sum(axis=tuple(range(-d, 0))) ** (1 / p)


class LpPool(fx.Layer):
    def __init__(self, p, k, **kw):
        self._args = (p, k, kw)

    def __call__(self, x):
        p, k, kw = self._args
        return fx.lpnormpool(x, p, k, **kw)


LP_CASES = [((2, 3, 9), (3,), {}),
            ((2, 2, 8, 7), (2, 3), dict(stride=1, pad=1)),
            ((1, 2, 4, 5, 6), (2, 2, 3), dict(stride=(2, 1, 3), pad=(1, 0, 0, 1, 1, 1)))]


@pytest.mark.parametrize("xs,k,kw", LP_CASES)
@pytest.mark.parametrize("p", [1, 2, 3, 1.5])
def test_lpnormpool_values_match_nnlibs_formula(p, xs, k, kw):
    x = RNG.uniform(0.1, 2.0, size=xs)  # positive: defined for every p
    got = fx.lpnormpool(f64(x), p, k, **kw).numpy()
    np.testing.assert_allclose(got, np_lpnormpool(x, p, k, kw.get("stride"), kw.get("pad", 0)), rtol=1e-12)


def test_lpnormpool_identities_from_nnlibs_docstring():
    x = RNG.standard_normal((2, 3, 8, 8))
    k = (2, 2)
    # lpnormpool(x, 1, k) / prod(k) ≈ meanpool(x, k), negative entries included (integer p)
    np.testing.assert_allclose(fx.lpnormpool(f64(x), 1, k).numpy() / 4, fx.MeanPool(k)(f64(x)).numpy(), rtol=1e-12)
    # lpnormpool(x, 2, k)^2 / prod(k) ≈ meanpool(x^2, k)
    np.testing.assert_allclose(fx.lpnormpool(f64(x), 2, k).numpy() ** 2 / 4, fx.MeanPool(k)(f64(x ** 2)).numpy(),
                               rtol=1e-10)
    # large p approaches the max of |x|
    np.testing.assert_allclose(fx.lpnormpool(f64(np.abs(x)), 60, k).numpy(), fx.MaxPool(k)(f64(np.abs(x))).numpy(),
                               rtol=0.03)


@pytest.mark.parametrize("xs,k,kw", LP_CASES)
@pytest.mark.parametrize("p", [2, 2.5])
def test_lpnormpool_gradients_match_finite_differences(p, xs, k, kw):
    fd_check(LpPool(p, k, **kw), RNG.uniform(0.2, 2.0, size=xs))


def test_lpnormpool_errors():
    x = fx.rand(1, 2, 4, 4)
    for p in (0, -1, math.inf, True, "2"):
        with pytest.raises(ValueError, match="0 < p < Inf"):
            fx.lpnormpool(x, p, (2, 2))
    with pytest.raises(ValueError, match=r"expects x of shape \(N, C, L\), got \(1, 2, 4, 4\)"):
        fx.lpnormpool(x, 2, (2,))
    with pytest.raises(TypeError, match="tuple"):
        fx.lpnormpool(x, 2, 2)


# ---------------------------------------------------------------- PixelShuffle (NNlib: test/upsample.jl)

def np_pixel_shuffle(x, r):
    """y[n, c, s₁r + i₁, ...] = x[n, c r^d + (i₁ r^(d-1) + ... + i_d), s₁, ...], element by element."""
    n, cin, *sizes = x.shape
    d = len(sizes)
    y = np.zeros((n, cin // r ** d) + tuple(s * r for s in sizes))
    for idx in np.ndindex(y.shape):
        b, c, *pos = idx
        offs = [q % r for q in pos]
        ch = c * r ** d + sum(o * r ** (d - 1 - j) for j, o in enumerate(offs))
        y[idx] = x[(b, ch) + tuple(q // r for q in pos)]
    return y


def test_pixel_shuffle_matches_nnlibs_docstring():
    # NNlib: x = [10i + j + channel/10 for i in 1:2, j in 1:3, channel in 1:4, batch in 1:1], axes reversed
    x = np.zeros((1, 4, 3, 2))
    for i, j, c in itertools.product(range(2), range(3), range(4)):
        x[0, c, j, i] = 10 * (i + 1) + (j + 1) + (c + 1) / 10
    want = np.array([[11.1, 11.3, 12.1, 12.3, 13.1, 13.3],  # NNlib's 4×6 answer, rows along its axis 1
                     [11.2, 11.4, 12.2, 12.4, 13.2, 13.4],
                     [21.1, 21.3, 22.1, 22.3, 23.1, 23.3],
                     [21.2, 21.4, 22.2, 22.4, 23.2, 23.4]])
    y = fx.pixel_shuffle(f64(x), 2).numpy()
    assert y.shape == (1, 1, 6, 4)
    np.testing.assert_allclose(y[0, 0], want.T)
    # NNlib: y = [i + channel/10 for i in 1:3, channel in 1:6, batch in 1:1], a 1-d image
    x1 = np.array([[[(i + 1) + (c + 1) / 10 for i in range(3)] for c in range(6)]])
    want1 = np.array([[1.1, 1.3, 1.5], [1.2, 1.4, 1.6], [2.1, 2.3, 2.5],
                      [2.2, 2.4, 2.6], [3.1, 3.3, 3.5], [3.2, 3.4, 3.6]])
    y1 = fx.PixelShuffle(2)(f64(x1)).numpy()
    assert y1.shape == (1, 3, 6)
    np.testing.assert_allclose(y1[0], want1.T)


@pytest.mark.parametrize("xs,r", [((2, 12, 3), 2), ((2, 18, 2, 3), 3), ((1, 16, 2, 1, 3), 2), ((2, 5, 3, 3), 1)])
def test_pixel_shuffle_matches_the_index_formula(xs, r):
    x = RNG.standard_normal(xs)
    np.testing.assert_array_equal(fx.pixel_shuffle(f64(x), r).numpy(), np_pixel_shuffle(x, r))


@pytest.mark.parametrize("xs,r", [((2, 8, 3), 2), ((1, 8, 2, 3), 2), ((1, 8, 2, 1, 2), 2)])
def test_pixel_shuffle_gradients_match_finite_differences(xs, r):
    fd_check(fx.PixelShuffle(r), RNG.standard_normal(xs))


def test_pixel_shuffle_errors_and_repr():
    assert repr(fx.PixelShuffle(3)) == "PixelShuffle(3)"
    with pytest.raises(ValueError, match=r"channel axis \(6\) of x \(1, 6, 2, 2\) must be divisible by r\^d = 4"):
        fx.PixelShuffle(2)(fx.rand(1, 6, 2, 2))
    with pytest.raises(ValueError, match="at least one spatial axis"):
        fx.pixel_shuffle(fx.rand(2, 4), 2)
    for r in (0, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            fx.PixelShuffle(r)


# ---------------------------------------------------------------- Upsample

def test_upsample_nearest():
    x = RNG.standard_normal((2, 3, 4, 5))
    got = fx.Upsample(scale=(2, 3))(f64(x))
    np.testing.assert_array_equal(np.asarray(got), x.repeat(2, axis=2).repeat(3, axis=3))
    got = fx.Upsample("nearest", size=(8, 10))(f64(x))
    np.testing.assert_array_equal(np.asarray(got), x.repeat(2, axis=2).repeat(2, axis=3))
    x1 = RNG.standard_normal((1, 2, 3))
    np.testing.assert_array_equal(np.asarray(fx.Upsample(3)(f64(x1))), x1.repeat(3, axis=2))
    with pytest.raises(ValueError, match="multiple"):
        fx.Upsample("nearest", size=(5, 7))(f64(x))


@pytest.mark.parametrize("mode,xs,kw", [("bilinear", (2, 2, 3, 4), dict(scale=2)),
                                        ("bilinear", (1, 1, 4, 4), dict(size=(7, 3))),
                                        ("bilinear", (1, 2, 3, 5), dict(scale=(2, 1), align_corners=False)),
                                        ("linear", (2, 3, 5), dict(size=(9,))),
                                        ("trilinear", (1, 1, 2, 3, 2), dict(scale=2))])
def test_upsample_linear_modes(mode, xs, kw):
    x = RNG.standard_normal(xs)
    layer = fx.Upsample(mode, **kw)
    got = layer(f64(x))
    out = tuple(np.asarray(got).shape[2:])
    if "scale" in kw:
        sc = kw["scale"] if isinstance(kw["scale"], tuple) else (kw["scale"],) * len(out)
        assert out == tuple(i * s for i, s in zip(xs[2:], sc))
    np.testing.assert_allclose(np.asarray(got), np_linear_upsample(x, out, kw.get("align_corners", True)),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="spatial axes"):
        fx.Upsample("bilinear", scale=2)(fx.rand(1, 1, 4))


# ---------------------------------------------------------------- gradients (float64)

@pytest.mark.parametrize("xs,k,ch,kw", CONV_CASES)
@pytest.mark.parametrize("cls", ["Conv", "CrossCor"])
def test_conv_gradients_match_finite_differences(cls, xs, k, ch, kw):
    layer = getattr(fx, cls)(k, ch, fx.tanh, **kw)
    layer.bias = fx.tensor((RNG.standard_normal(ch[1]) * 0.1).astype(np.float32))
    fd_check(layer, RNG.standard_normal(xs))


def test_conv_gradient_with_unfused_activation_and_no_bias():
    fd_check(fx.Conv((3, 3), (2, 3), fx.softplus, pad=1, stride=2, bias=False), RNG.standard_normal((2, 2, 6, 5)))


@pytest.mark.parametrize("ys,k,ch,kw", CT_CASES)
def test_conv_transpose_gradients_match_finite_differences(ys, k, ch, kw):
    layer = fx.ConvTranspose(k, ch, fx.sigmoid, **kw)
    fd_check(layer, RNG.standard_normal(ys))


@pytest.mark.parametrize("xs,k,kw", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "mean"])
def test_pool_gradients_match_finite_differences(kind, xs, k, kw):
    # distinct values well apart, so no nudge changes which element is the maximum
    x = RNG.permutation(np.arange(math.prod(xs), dtype=np.float64)).reshape(xs) / math.prod(xs)
    fd_check((fx.MaxPool if kind == "max" else fx.MeanPool)(k, **kw), x, eps=1e-7)


@pytest.mark.parametrize("layer,xs", [(fx.AdaptiveMaxPool((3, 2)), (1, 2, 7, 5)),
                                      (fx.AdaptiveMeanPool((2,)), (2, 2, 7)),
                                      (fx.GlobalMaxPool(), (2, 3, 4, 4)),
                                      (fx.GlobalMeanPool(), (2, 3, 4, 4)),
                                      (fx.Flatten(), (2, 3, 2)),
                                      (fx.Upsample(scale=(2, 3)), (1, 2, 2, 3)),
                                      (fx.Upsample("bilinear", size=(5, 4)), (1, 2, 3, 3)),
                                      (fx.Upsample("linear", scale=2, align_corners=False), (2, 1, 4)),
                                      (fx.Upsample("trilinear", scale=2), (1, 1, 2, 2, 3))])
def test_other_layer_gradients_match_finite_differences(layer, xs):
    x = RNG.permutation(np.arange(math.prod(xs), dtype=np.float64)).reshape(xs) / math.prod(xs)
    fd_check(layer, x, eps=1e-7)


def test_second_order_through_conv():
    # d/dx of <v, d/dw sum(tanh(conv(x, w))^2)>: the backward of conv is itself differentiable
    c = fx.f64(fx.Conv((2, 2), (1, 2), fx.tanh, stride=1, pad=1))
    x0 = RNG.standard_normal((1, 1, 3, 3))
    v = f64(RNG.standard_normal(c.weight.shape))

    def h(x):
        g = fx.gradient(lambda m: (m(x) ** 2).sum(), c)[0]
        return (g.weight * v).sum()

    gx = fx.gradient(h, f64(x0))[0].numpy()
    eps = 1e-6
    for i in range(x0.size):
        up, dn = x0.copy(), x0.copy()
        up.flat[i] += eps
        dn.flat[i] -= eps
        fd = (float(h(f64(up))) - float(h(f64(dn)))) / (2 * eps)
        assert abs(fd - gx.flat[i]) < 1e-6 * (1 + abs(fd))


# ---------------------------------------------------------------- LeNet-5

def lenet5():
    return fx.Chain(
        fx.Conv((5, 5), (1, 6), fx.relu),
        fx.MaxPool((2, 2)),
        fx.Conv((5, 5), (6, 16), fx.relu),
        fx.MaxPool((2, 2)),
        fx.Flatten(),
        fx.Dense(256, 120, fx.relu),
        fx.Dense(120, 84, fx.relu),
        fx.Dense(84, 10),
    )


def test_lenet5_forward_and_backward_shapes():
    fx.seed_(3)
    m = lenet5()
    assert repr(m).endswith(" 44_426 parameters")  # the total, ending the one-line form and the tree alike
    x = fx.rand(8, 1, 28, 28)
    h = x
    shapes = []
    for layer in m:
        h = layer(h)
        shapes.append(tuple(h.shape))
    assert shapes == [(8, 6, 24, 24), (8, 6, 12, 12), (8, 16, 8, 8), (8, 16, 4, 4), (8, 256), (8, 120), (8, 84),
                      (8, 10)]
    y = fx.onehotbatch(np.arange(8) % 10, range(10))
    y = y if tuple(y.shape) == (8, 10) else y.T
    loss, grads = fx.withgradient(lambda m: fx.logitcrossentropy(m(x), y), m)
    g = grads[0]
    for layer, gl in zip(m, g.layers):
        for name in ("weight", "bias"):
            p = getattr(layer, name, None)
            if p is not None:
                assert getattr(gl, name).shape == p.shape
                assert np.all(np.isfinite(np.asarray(getattr(gl, name))))
    # and it learns: a few Adam steps on one batch lower the loss
    opt = fx.setup(fx.Adam(1e-3), m)
    first = float(loss)
    for _ in range(10):
        _, grads = fx.withgradient(lambda m: fx.logitcrossentropy(m(x), y), m)
        fx.update_(opt, m, grads[0])
    assert float(fx.logitcrossentropy(m(x), y)) < first


# ---------------------------------------------------------------- errors

def test_wrong_input_rank_and_channels_are_clear():
    c = fx.Conv((5, 5), (1, 6))
    with pytest.raises(ValueError, match=r"Conv\(\(5, 5\), 1 => 6\) expects input of shape \(N, 1, H, W\), "
                                         r"got \(28, 28\)"):
        c(fx.rand(28, 28))
    with pytest.raises(ValueError, match=r"got \(1, 28, 28\); add a batch axis"):
        c(fx.rand(1, 28, 28))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        c(fx.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="channels-first"):
        fx.Conv((3, 3), (3, 4))(fx.rand(2, 28, 28, 3))
    with pytest.raises(ValueError, match=r"ConvTranspose\(\(2,\), 4 => 2\) expects input of shape \(N, 4, L\)"):
        fx.ConvTranspose((2,), (4, 2))(fx.rand(1, 2, 5))
    with pytest.raises(ValueError, match="does not fit"):
        c(fx.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"MaxPool\(\(2, 2\)\) expects input of shape \(N, C, H, W\), got \(4, 4\)"):
        fx.MaxPool((2, 2))(fx.rand(4, 4))
    with pytest.raises(ValueError, match="larger than the input"):
        fx.MaxPool((3, 3))(fx.rand(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"GlobalMaxPool\(\) expects input"):
        fx.GlobalMaxPool()(fx.rand(3, 4))


def test_bad_constructor_arguments_are_clear():
    with pytest.raises(TypeError, match="kernel size must be a tuple"):
        fx.Conv(3, (1, 2))
    with pytest.raises(TypeError, match="kernel size must be a tuple"):
        fx.MaxPool(2)
    with pytest.raises(ValueError, match="divisible by groups=2"):
        fx.Conv((3, 3), (3, 4), groups=2)
    with pytest.raises(ValueError, match="stride must be an int or a tuple of 2"):
        fx.Conv((3, 3), (1, 1), stride=(1, 2, 3))
    with pytest.raises(ValueError, match="pad needs 1, 2 or 4 entries"):
        fx.Conv((3, 3), (1, 1), pad=(1, 2, 3))
    with pytest.raises(ValueError, match="stride must be positive"):
        fx.Conv((3,), (1, 1), stride=0)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        fx.MaxPool((2, 2), pad=2)
    with pytest.raises(TypeError, match="out must be an integer"):
        fx.Conv((3, 3), 1, fx.relu)
    with pytest.raises(ValueError, match="exactly one of scale and size"):
        fx.Upsample("nearest")
    with pytest.raises(ValueError, match="mode must be one of"):
        fx.Upsample("cubic", scale=2)


def test_core_functions_validate_their_arguments():
    x, w = fx.rand(1, 2, 6, 6), fx.rand(4, 2, 3, 3)
    assert _core.conv(x, w, None, 1, 0).shape == (1, 4, 4, 4)
    assert _core.conv(x, w, pad=(1, 0, 0, 1), stride=(1, 2)).shape == (1, 4, 5, 3)
    with pytest.raises(ValueError, match="conv: stride needs one entry per spatial dimension"):
        _core.conv(x, w, stride=(1, 1, 1))
    with pytest.raises(ValueError, match="conv: dilation must be positive"):
        _core.conv(x, w, dilation=0)
    with pytest.raises(ValueError, match="conv: groups must be positive"):
        _core.conv(x, w, groups=0)
    with pytest.raises(ValueError, match="unsupported fused activation"):
        _core.conv(x, w, act="gelu")
    with pytest.raises(ValueError, match=r"conv: the weight .* takes 2 input channels, got 3"):
        _core.conv(fx.rand(1, 3, 6, 6), w)
    with pytest.raises(ValueError, match=r"conv: bias of shape \[3\]"):
        _core.conv(x, w, fx.rand(3))
    with pytest.raises(ValueError, match=r"the weight must have 3 to 5 dimensions"):
        _core.conv(x, fx.rand(4, 2))
    with pytest.raises(TypeError, match="dtype"):
        _core.conv(x, fx.rand(4, 2, 3, 3, dtype="float64"))
    y = _core.conv(x, w, stride=2)
    assert _core.conv_transpose(y, w, stride=2).shape == (1, 2, 5, 5)
    assert _core.conv_transpose(y, w, stride=2, outpad=1).shape == (1, 2, 6, 6)
    assert _core.conv_transpose(y, w, stride=2, size=(6, 5)).shape == (1, 2, 6, 5)
    with pytest.raises(ValueError, match="inconsistent"):
        _core.conv_transpose(y, w, stride=2, size=(8, 8))
    with pytest.raises(ValueError, match="outpad .* must be smaller than the stride"):
        _core.conv_transpose(y, w, stride=2, outpad=2)
    with pytest.raises(ValueError, match="maxpool: kernel sizes must be positive"):
        _core.maxpool(x, (0, 2))
    with pytest.raises(ValueError, match=r"meanpool: a 1-d kernel \[2\] expects input of shape \(N, C, L\)"):
        _core.meanpool(x, (2,))
    assert _core.maxpool(x, 2).shape == (1, 2, 3, 3)  # an int kernel covers every spatial axis
    assert _core.meanpool(x, (3, 2), stride=1, pad=(1, 0)).shape == (1, 2, 6, 5)


def test_float64_input_to_a_float32_layer_is_converted():
    c = fx.Conv((3,), (1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float64 warning is shown once per process
        y = c(np.ones((1, 1, 5)))
    assert y.dtype == np.float32 and y.shape == (1, 2, 3)


def test_docstring_examples():
    import doctest

    import fluxrs.layers.conv as mod
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 10


def test_pytorch_padding_spellings_point_to_samepad():
    with pytest.raises(TypeError, match=r"Conv: unexpected keyword padding='same'.*pad=fx\.SamePad\(\)"):
        fx.Conv((3, 3), (1, 16), padding="same")
    with pytest.raises(TypeError, match=r"Conv: pad='same' is PyTorch's padding string; write pad=fx\.SamePad\(\)"):
        fx.Conv((3, 3), (1, 16), pad="same")
    with pytest.raises(TypeError, match=r"pad='valid'.*write pad=0"):
        fx.Conv((3,), (1, 2), pad="valid")
    with pytest.raises(TypeError, match="pad must be an int, a tuple or fx.SamePad"):
        fx.Conv((3,), (1, 2), pad="reflect")
    # every conv-like layer, through the same check, named in the message
    with pytest.raises(TypeError, match=r"CrossCor: unexpected keyword padding=1.*write pad=1"):
        fx.CrossCor((3, 3), (1, 16), padding=1)
    with pytest.raises(TypeError, match=r"DepthwiseConv: unexpected keyword padding='same'.*SamePad"):
        fx.DepthwiseConv((3, 3), (2, 4), padding="same")
    with pytest.raises(TypeError, match=r"ConvTranspose: pad='same'.*SamePad"):
        fx.ConvTranspose((2, 2), (4, 2), pad="same")
    with pytest.raises(TypeError, match=r"ConvTranspose: unexpected keyword output_padding=1.*outpad"):
        fx.ConvTranspose((2, 2), (4, 2), stride=2, output_padding=1)
    with pytest.raises(TypeError, match=r"MaxPool: unexpected keyword padding=1.*write pad=1"):
        fx.MaxPool((2, 2), padding=1)
    with pytest.raises(TypeError, match=r"MeanPool.*pad='same'.*SamePad"):
        fx.MeanPool((3, 3), pad="same")
    with pytest.raises(TypeError, match=r"Conv: unexpected keyword kernel_size=3.*first positional"):
        fx.Conv(kernel_size=3, ch=(1, 2))
    # what the messages advise works
    x = fx.rand(1, 1, 7, 7)
    assert fx.Conv((3, 3), (1, 16), pad=fx.SamePad())(x).shape == (1, 16, 7, 7)
    assert fx.MaxPool((3, 3), pad=fx.SamePad(), stride=1)(x).shape == (1, 1, 7, 7)


@pytest.mark.parametrize("layer", [fx.GlobalMeanPool(), fx.GlobalMaxPool()], ids=repr)
def test_global_pooling_refuses_an_empty_spatial_extent(layer):
    with pytest.raises(ValueError, match=r"no spatial positions to pool over in input of shape \(1, 3, 0\)"):
        layer(np.zeros((1, 3, 0), np.float32))
    # an empty batch is fine: nothing to pool, nothing pooled
    assert layer(np.zeros((0, 3, 4), np.float32)).shape == (0, 3, 1)


def test_upsample_of_an_empty_spatial_axis():
    x = np.zeros((2, 3, 0, 2), np.float32)
    assert fx.Upsample(scale=2)(x).shape == (2, 3, 0, 4)
    assert fx.Upsample("bilinear", scale=(3, 2))(x).shape == (2, 3, 0, 4)
    with pytest.raises(ValueError, match="cannot upsample an empty spatial axis to size"):
        fx.Upsample("bilinear", size=(3, 3))(x)
