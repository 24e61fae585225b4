"""Flux.Losses: the values of Flux.jl's own test/losses.jl and test/ctc.jl (and its docstring
examples), gradients against finite differences, edge cases, `agg`, and errors.

Flux stores arrays column-major, ``(C, N)``; fluxrs is batch-first, ``(N, C)``. A Julia matrix
literal ``[a b; c d]`` is the numpy array ``[[a, b], [c, d]]`` of shape (C, N) in Flux's reading,
so here it is transposed (``.T``). Julia vectors need no change; a 1×n Julia row ``[1 2 3]`` is
n samples of one class, shape (n, 1) here.
"""

import math
import statistics
import zlib

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import losses as L
from gradcheck import numeric_gradient

F64 = "float64"


def t64(x):
    return fx.tensor(np.ascontiguousarray(np.asarray(x, dtype=np.float64)), dtype=F64)


def t32(x):
    return fx.tensor(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def jl(rows):
    """A Julia matrix literal (rows as written) in batch-first form: its transpose."""
    return np.ascontiguousarray(np.asarray(rows, dtype=np.float64).T)


def close(a, b, rtol=1e-6, atol=0.0):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


def sigma(x):
    return 1 / (1 + np.exp(-x))


def np_logsoftmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def onehotbatch(labels, classes):
    """Flux's onehotbatch, batch-first: (N, C)."""
    return np.array([[1.0 if l == c else 0.0 for c in classes] for l in labels])


IDENT = lambda l: l  # noqa: E731  (Flux's agg = identity)


# ---------------------------------------------------------------- exports and helpers

def test_exports():
    assert fx.mse is fx.losses.mse and fx.Losses is fx.losses
    assert fx.crossentropy is L.crossentropy and fx.logitcrossentropy is L.logitcrossentropy
    for name in ["mae", "mse", "msle", "huber_loss", "label_smoothing", "crossentropy", "logitcrossentropy",
                 "binarycrossentropy", "logitbinarycrossentropy", "kldivergence", "poisson_loss", "hinge_loss",
                 "squared_hinge_loss", "dice_coeff_loss", "tversky_loss", "binary_focal_loss", "focal_loss",
                 "siamese_contrastive_loss", "ctc_loss", "xlogx", "xlogy"]:
        assert callable(getattr(fx.losses, name)), name
        assert name in fx.losses.__all__


def test_xlogx_xlogy():
    assert L.xlogx(0) == 0
    assert math.isnan(L.xlogx(float("nan")))
    close(L.xlogx(2), 2.0 * math.log(2.0))
    assert L.xlogy(0, 1) == 0
    assert math.isnan(L.xlogy(float("nan"), 1))
    assert math.isnan(L.xlogy(1, float("nan")))
    assert math.isnan(L.xlogy(float("nan"), float("nan")))
    close(L.xlogy(2, 3), 2.0 * math.log(3.0))
    assert L.xlogy(0, 0) == 0
    # tensors: values, and finite gradients at x = 0 (also where y = 0)
    x, y = t64([0.0, 2.0, 0.0]), t64([0.0, 3.0, 5.0])
    close(L.xlogy(x, y).tolist(), [0.0, 2 * math.log(3), 0.0])
    gx, gy = fx.gradient(lambda a, b: L.xlogy(a, b).sum(), x, y)
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(gy.numpy()))
    close(gy.tolist(), [0.0, 2 / 3, 0.0])
    close(L.xlogx(t64([0.0, 2.0])).tolist(), [0.0, 2 * math.log(2)])
    (g,) = fx.gradient(lambda a: L.xlogx(a).sum(), t64([0.0, 2.0]))
    close(g.tolist(), [0.0, math.log(2) + 1])


# ---------------------------------------------------------------- Flux's test/losses.jl, in order

Y_REG, YHAT_REG = [1, 1, 0, 0], [.9, .1, .1, .9]


def test_mse():
    close(L.mse(t64(YHAT_REG), Y_REG), (.1 ** 2 + .9 ** 2) / 2)
    close(L.mse(t64([1.1, 1.9, 3.1]), [1, 2, 3]), 0.010000000000000018)  # docstring


def test_mae():
    close(L.mae(t64(YHAT_REG), Y_REG), 1 / 2)
    close(L.mae(t64([1.1, 1.9, 3.1]), [1, 2, 3]), 0.10000000000000009)  # docstring


def test_huber_loss():
    close(L.huber_loss(t64(YHAT_REG), Y_REG), 0.20500000000000002)
    # both branches: |e| = 3 > δ = 2 gives δ(|e| - δ/2) = 4; |e| = 0.5 gives 0.125
    close(L.huber_loss(t64([3.0, 0.5]), [0, 0], delta=2, agg=IDENT).tolist(), [4.0, 0.125])
    close(L.huber_loss(t64([3.0]), [0], δ=2), 4.0)


def test_msle():
    close(L.msle(t64([345.0, 332.0, 789.0]), [123.0, 456.0, 789.0]), 0.38813985859136585)
    close(L.msle(t32([1.1, 2.2, 3.3]), [1, 2, 3]), 0.009084041)  # docstrings, Float32
    close(L.msle(t32([0.9, 1.8, 2.7]), [1, 2, 3]), 0.011100831)


# one-hot y's: Flux's y = onehotbatch([1, 1, 0, 0], 0:1), ŷ = [.1 .9; .9 .1; .9 .1; .1 .9]'
Y = onehotbatch([1, 1, 0, 0], [0, 1])
YHAT = np.array([[.1, .9], [.9, .1], [.9, .1], [.1, .9]])  # the adjoint of the Julia literal: batch-first
V = math.log(.1 / .9)
LOGYHAT = np.array([[V, 0.0], [0.0, V], [0.0, V], [V, 0.0]])
LOSSVALUE = 1.203972804325936
LOSSVALUE_SMOOTHED = 1.2039728043259348
YL = onehotbatch([1], [0, 1])  # [[0, 1]]
SF = 0.1
YLS = np.array([[SF, 1 - SF]])
YLP = np.array([[0.9, 0.1]])
LOGYLP = np.array([[0.0, V]])
YA = onehotbatch([1, 1, 1, 0, 0], [0, 1])
YA_SMOOTHED = L.label_smoothing(YA, 2 * SF)
Y_SAME = YA.astype(np.float32)
Y_SIM = Y_SAME * (1 - 2 * SF) + SF
Y_DIS = Y_SIM[:, ::-1].copy()  # Flux swaps rows 1 and 2 of (C, N): the class columns here


def test_crossentropy():
    ce = L.crossentropy
    close(ce(t64([0.1, 0.0, 0.9]), [0.1, 0.0, 0.9]), ce(t64([0.1, 0.9]), [0.1, 0.9]))
    close(ce(t64(YHAT), Y), LOSSVALUE)
    close(ce(t64(YHAT), L.label_smoothing(Y, 0.1)), LOSSVALUE_SMOOTHED)
    close(ce(t64(YLP), L.label_smoothing(YL, 2 * SF)), -np.sum(YLS * np.log(YLP)))
    close(ce(t64(YLP), YL), -np.sum(YL * np.log(YLP)))
    assert float(ce(t64(Y_SAME), YA, eps=0)) == 0
    assert float(ce(t64(YA), YA, eps=0)) == 0
    assert float(ce(t64(Y_SIM), YA)) < float(ce(t64(Y_SIM), YA_SMOOTHED))
    assert float(ce(t64(Y_DIS), YA)) > float(ce(t64(Y_DIS), YA_SMOOTHED))
    # the label_smoothing keyword is label_smoothing applied to y first
    close(ce(t64(Y_SIM), YA, label_smoothing=2 * SF), ce(t64(Y_SIM), YA_SMOOTHED))


def test_crossentropy_docstring_float32():
    y_label = onehotbatch([0, 1, 2, 1, 0], [0, 1, 2])
    y_model = fx.softmax(t32(np.arange(-7, 8).reshape(5, 3)), 1)  # Julia reshape(-7:7, 3, 5), batch-first
    close(L.crossentropy(y_model, y_label), 1.6076053)
    close(L.crossentropy(y_model, y_label, agg=sum), 5 * float(L.crossentropy(y_model, y_label)))
    y_smooth = L.label_smoothing(y_label, 0.15)
    close(y_smooth[0], [0.9, 0.05, 0.05])
    close(L.crossentropy(y_model, y_smooth), 1.5776052)


def test_logitcrossentropy():
    lce = L.logitcrossentropy
    close(lce(t64(LOGYHAT), Y), LOSSVALUE)
    close(lce(t64(LOGYLP), YL), -np.sum(YL * np_logsoftmax(LOGYLP, 1)))
    close(lce(t64(LOGYLP), L.label_smoothing(YL, 2 * SF)), -np.sum(YLS * np_logsoftmax(LOGYLP, 1)))
    close(lce(t64(LOGYLP), YL, label_smoothing=2 * SF), -np.sum(YLS * np_logsoftmax(LOGYLP, 1)))


def test_logitcrossentropy_docstring_float32():
    y_label = onehotbatch(list("abcabaa"), list("abc"))
    y_model = t32(np.concatenate([np.arange(-9, 1), np.arange(0, 10), [7.5]]).reshape(7, 3))
    close(L.logitcrossentropy(y_model, y_label), 1.5791205)
    close(L.crossentropy(fx.softmax(y_model, 1), y_label), 1.5791197, rtol=2e-6)


RNG = np.random.default_rng(0)
LOGYHAT3, Y3 = RNG.standard_normal(3), RNG.random(3)
YLS3 = Y3 * (1 - 2 * SF) + SF


def test_binarycrossentropy():
    s = sigma(LOGYHAT3)
    bce = L.binarycrossentropy
    close(bce(t64(s), L.label_smoothing(Y3, 2 * SF, binary=True), eps=0, agg=IDENT).tolist(),
          -YLS3 * np.log(s) - (1 - YLS3) * np.log(1 - s))
    close(bce(t64(s), Y3, eps=0), np.mean(-Y3 * np.log(s) - (1 - Y3) * np.log(1 - s)))
    e = np.finfo(np.float64).eps
    close(bce(t64(s), Y3), np.mean(-Y3 * np.log(s + e) - (1 - Y3) * np.log(1 - s + e)))
    close(bce(t64([0.1, 0.2, 0.9]), 1), -np.mean(np.log([0.1, 0.2, 0.9])))  # constant label
    close(bce(t64(s), Y3, eps=0, label_smoothing=2 * SF), np.mean(-YLS3 * np.log(s) - (1 - YLS3) * np.log(1 - s)))


def test_binarycrossentropy_docstring_float32():
    y_prob = fx.softmax(t32(np.array([[1, 2], [3, 3], [4, 5]])), 1)  # Julia reshape(vcat(1:3, 3:5), 2, 3)
    y_bin = [1, 0, 1]
    close(L.binarycrossentropy(y_prob[:, 1], y_bin), 0.43989, rtol=2e-6)
    close(L.crossentropy(y_prob, onehotbatch(y_bin, [0, 1])), 0.43989, rtol=2e-6)


def test_logitbinarycrossentropy():
    ls = L.label_smoothing(Y3, 0.2, binary=True)
    close(L.logitbinarycrossentropy(t64(LOGYHAT3), ls, agg=IDENT).tolist(),
          L.binarycrossentropy(t64(sigma(LOGYHAT3)), ls, eps=0, agg=IDENT).tolist())
    close(L.logitbinarycrossentropy(t64(LOGYHAT3), Y3), L.binarycrossentropy(t64(sigma(LOGYHAT3)), Y3, eps=0))
    # docstring, Float32
    close(L.logitbinarycrossentropy(t32([2, -1, np.pi]), [1, 0, 1]), 0.160832, rtol=2e-6)
    close(L.binarycrossentropy(fx.sigmoid(t32([2, -1, np.pi])), [1, 0, 1]), 0.16083185)


def test_label_smoothing():
    y = onehotbatch([1], [0, 1])
    assert L.label_smoothing(y, 0.2).tolist() == [[0.1, 0.9]]
    # Flux's dims=0 (binary labels, one per number) is binary=True; it equals the per-number form
    assert L.label_smoothing(y, 0.2, binary=True).tolist() == [[L.label_smoothing(v, 0.2, binary=True)
                                                                for v in row] for row in y]
    assert L.label_smoothing(1.0, 0.2, dims=0) == L.label_smoothing(1.0, 0.2, binary=True) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="between 0 and 1"):
        L.label_smoothing([0., 0., 1., 0.], 1.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        L.label_smoothing([0., 0., 1., 0.], 0.)
    # tensors stay tensors (and differentiable); the class axis is dims
    t = L.label_smoothing(t64([[0, 1, 0]]), 0.3)
    assert isinstance(t, fx.Tensor)
    close(t.tolist(), [[0.1, 0.8, 0.1]])
    close(L.label_smoothing(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]), 0.3, dims=0)[:, 0], [0.1, 0.8, 0.1])


def test_kldivergence():
    kl = L.kldivergence
    close(kl(t64([0.1, 0.0, 0.9]), [0.1, 0.0, 0.9]), kl(t64([0.1, 0.9]), [0.1, 0.9]))
    y, yhat = jl([[1, 2, 3]]), jl([[4.0, 5.0, 6.0]])  # Julia 1×3 rows: (3, 1) here
    close(kl(t64(yhat), y), -1.7661057888493457)
    close(kl(t64(y), y), 0, atol=1e-12)
    # docstring
    p1, p2 = np.array([[1, 0], [0, 1]]), np.full((2, 2), 0.5)
    close(kl(t64(p2), p1), math.log(2))
    close(kl(t64(p2), p1, agg=sum), 2 * math.log(2))
    assert float(kl(t64(p2), p2, eps=0)) == 0.0
    assert float(kl(t64(p1), p2, eps=0)) == math.inf


def test_hinge_losses():
    y, yhat = jl([[1, 2, 3, 4]]), jl([[5.0, 6.0, 7.0, 8.0]])
    close(L.hinge_loss(t64(yhat), y), 0, atol=1e-15)
    close(L.hinge_loss(t64(y), 0.5 * y), 0.125)
    close(L.squared_hinge_loss(t64(yhat), y), 0, atol=1e-15)
    close(L.squared_hinge_loss(t64(y), 0.5 * y), 0.0625)


def test_poisson_loss():
    y, yhat = jl([[0.1, 0.2, 0.3]]), jl([[0.4, 0.5, 0.6]])
    close(L.poisson_loss(t64(yhat), y), 0.6278353988097339)
    close(L.poisson_loss(t64(y), y), 0.5044459776946685)


DICE_Y, DICE_YHAT = jl([[1.0, 0.5, 0.3, 2.4]]), jl([[0, 1.4, 0.5, 1.2]])


def test_dice_coeff_loss():
    close(L.dice_coeff_loss(t64(DICE_YHAT), DICE_Y), 0.2799999999999999)
    close(L.dice_coeff_loss(t64(DICE_Y), DICE_Y), 0.0, atol=1e-15)


def test_tversky_loss():
    close(L.tversky_loss(t64(DICE_YHAT), DICE_Y), -0.06772009029345383)
    close(L.tversky_loss(t64(DICE_YHAT), DICE_Y, beta=0.8), -0.09490740740740744)
    close(L.tversky_loss(t64(DICE_YHAT), DICE_Y, β=0.8), -0.09490740740740744)
    close(L.tversky_loss(t64(DICE_Y), DICE_Y), -0.5576923076923075)


def test_binary_focal_loss():
    y = jl([[0, 1, 0], [1, 0, 1]])
    yhat = jl([[0.268941, 0.5, 0.268941], [0.731059, 0.5, 0.731059]])
    y1, yhat1 = jl([[1, 0], [0, 1]]), jl([[0.6, 0.3], [0.4, 0.7]])
    close(L.binary_focal_loss(t64(yhat), y), 0.0728675615927385)
    close(L.binary_focal_loss(t64(yhat1), y1), 0.05691642237852222)
    close(L.binary_focal_loss(t64(yhat), y, gamma=0.0), L.binarycrossentropy(t64(yhat), y))


FOCAL_YHAT_LOGITS = np.arange(-7, 8).reshape(5, 3)  # Julia reshape(-7:7, 3, 5), batch-first


def test_focal_loss():
    y = jl([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]])
    yhat = fx.softmax(t64(FOCAL_YHAT_LOGITS), 1)
    y1 = jl([[1, 0], [0, 0], [0, 1]])
    yhat1 = jl([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]])
    close(L.focal_loss(yhat, y), 1.1277571935622628)
    close(L.focal_loss(t64(yhat1), y1), 0.45990566879720157)
    close(L.focal_loss(yhat, y, gamma=0), L.crossentropy(yhat, y))
    close(L.focal_loss(yhat, y, γ=0), L.crossentropy(yhat, y))


def test_siamese_contrastive_loss():
    sc = L.siamese_contrastive_loss
    y, yhat = jl([[1, 0], [0, 0], [0, 1]]), jl([[0.4, 0.2], [0.5, 0.5], [0.1, 0.3]])
    y1 = jl([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]])
    yhat1 = fx.softmax(t32(FOCAL_YHAT_LOGITS), 1)  # Float32 in Flux's test
    y2, yhat2 = [1, 0, 0, 1, 1], [0.6, 0.4, 0.1, 0.2, 0.7]
    close(sc(t64(yhat), y), 0.2333333333333333)
    close(sc(t64(yhat), y, margin=0.5), 0.10000000000000002)
    close(sc(t64(yhat), y, margin=1.5), 0.5333333333333333)
    close(sc(yhat1, y1), 0.32554644)
    close(sc(yhat1, y1, margin=0.5), 0.16271012)
    close(sc(yhat1, y1, margin=1.5), 0.6532292)
    close(sc(t64(yhat), y, margin=1), sc(t64(yhat), y))
    close(sc(t64(y), y), 0.0, atol=1e-15)
    close(sc(t64(y1), y1), 0.0, atol=1e-15)
    close(sc(t64(yhat), y, margin=0), 0.09166666666666667)
    close(sc(yhat1, y1, margin=0), 0.13161165)
    close(sc(t64(yhat2), y2), 0.21200000000000005)
    close(sc(t64(yhat2), yhat2), 0.18800000000000003)
    with pytest.raises(ValueError, match="margin must be non-negative, got -0.5"):
        sc(yhat1, y1, margin=-0.5)
    with pytest.raises(ValueError, match="margin must be non-negative"):
        sc(t64(yhat), y, margin=-1)
    # docstring
    close(sc(t64([0.5, 1.5, 2.5]), [1, 2, 3]), -4.833333333333333)
    close(sc(t64([0.5, 1.5, 2.5]), [1, 2, 3], margin=2), -4.0)


ALL_BASIC = [L.mse, L.mae, L.msle, L.crossentropy, L.logitcrossentropy, L.binarycrossentropy,
             L.logitbinarycrossentropy, L.kldivergence, L.huber_loss, L.tversky_loss, L.dice_coeff_loss,
             L.poisson_loss, L.hinge_loss, L.squared_hinge_loss, L.binary_focal_loss, L.focal_loss,
             L.siamese_contrastive_loss]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("f", ALL_BASIC, ids=lambda f: f.__name__)
def test_no_spurious_promotions(f, dtype):
    rng = np.random.default_rng(1)
    yhat = fx.tensor(rng.random(2).astype(dtype), dtype=dtype)
    y = rng.random(2)  # float64 target: converted to ŷ's dtype
    assert f(yhat, y).dtype == np.dtype(dtype)
    (g,) = fx.gradient(lambda a: f(a, y), yhat)
    assert g.dtype == np.dtype(dtype)


# ---------------------------------------------------------------- CTC (Flux's test/ctc.jl)

def test_ctc_loss_hand_values():
    # x is (C, T) = 3 classes × 3 steps in Flux; y = [1, 2] (1-based) is [0, 1]; the blank is class 2
    x = jl([[1., 2., 3.], [2., 1., 1.], [3., 3., 2.]])
    close(L.ctc_loss(t64(x), [0, 1]), 3.6990738275138035)
    g = jl([[-0.317671, -0.427729, 0.665241], [0.244728, -0.0196172, -0.829811],
            [0.0729422, 0.447346, 0.16457]])
    (ghat,) = fx.gradient(lambda a: L.ctc_loss(a, [0, 1]), t64(x))
    close(ghat.numpy(), g, rtol=1e-5, atol=1e-5)

    x = jl([[-3., 12., 8., 15.], [4., 20., -2., 20.], [8., -33., 6., 5.]])
    close(L.ctc_loss(t64(x), [0, 1]), 8.02519869363453)
    g = jl([[-2.29294774655333e-06, -0.999662657278862, 1.75500863563993e-06, 0.00669284889063],
            [0.017985914969696, 0.999662657278861, -1.9907078755387e-06, -0.006693150917307],
            [-0.01798362202195, -2.52019580677916e-20, 2.35699239251042e-07, 3.02026677058789e-07]])
    (ghat,) = fx.gradient(lambda a: L.ctc_loss(a, [0, 1]), t64(x))
    close(ghat.numpy(), g, rtol=1e-5, atol=1e-5)


def test_ctc_loss_random_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.random((50, 10))  # Flux: rand(10, 50)
    y = rng.integers(0, 9, 30)  # Flux: rand(1:9, 30); the blank is class 9
    (g1,) = fx.gradient(lambda a: L.ctc_loss(a, y), t64(x))
    d = math.sqrt(np.finfo(np.float64).eps)
    g2 = numeric_gradient(lambda a: float(L.ctc_loss(t64(a), y)), x, d / 2)
    close(g1.numpy(), g2, rtol=1e-5, atol=1e-5)


def test_ctc_loss_brute_force_and_batch():
    import itertools
    rng = np.random.default_rng(3)
    T, C = 4, 3
    x = rng.standard_normal((T, C))
    lsm = np_logsoftmax(x, 1)

    def collapse(p, blank):
        out, prev = [], None
        for c in p:
            if c != prev and c != blank:
                out.append(c)
            prev = c
        return out

    for labels in ([0, 1], [1, 1], [0], []):
        p = sum(math.exp(sum(lsm[t, c] for t, c in enumerate(path)))
                for path in itertools.product(range(C), repeat=T) if collapse(path, C - 1) == labels)
        close(L.ctc_loss(t64(x), labels), -math.log(p))
    # blank elsewhere: class 0 as blank, labels among 1, 2
    p = sum(math.exp(sum(lsm[t, c] for t, c in enumerate(path)))
            for path in itertools.product(range(C), repeat=T) if collapse(path, 0) == [2, 1])
    close(L.ctc_loss(t64(x), [2, 1], blank=0), -math.log(p))
    # a batch (N, T, C) with a list of label sequences: per-sequence losses reduced with agg
    xb = rng.standard_normal((2, T, C))
    ys = [[0, 1], [1]]
    each = [float(L.ctc_loss(t64(xb[i]), ys[i])) for i in range(2)]
    close(L.ctc_loss(t64(xb), ys), np.mean(each))
    close(L.ctc_loss(t64(xb), ys, agg=sum), np.sum(each))
    (gb,) = fx.gradient(lambda a: L.ctc_loss(a, ys, agg=sum), t64(xb))
    (g0,) = fx.gradient(lambda a: L.ctc_loss(a, ys[0]), t64(xb[0]))
    close(gb.numpy()[0], g0.numpy())
    # float32 in, float32 out; pullback seeds scale the gradient
    assert L.ctc_loss(t32(x), [0, 1]).dtype == np.float32
    val, back = fx.pullback(lambda a: L.ctc_loss(a, [0, 1]), t64(x))
    close(back(2.0)[0].numpy(), 2 * fx.gradient(lambda a: L.ctc_loss(a, [0, 1]), t64(x))[0].numpy())


def test_ctc_loss_errors():
    x = t64(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="blank"):
        L.ctc_loss(x, [3])
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        L.ctc_loss(x, [5])
    with pytest.raises(ValueError, match="cannot emit"):
        L.ctc_loss(x, [0, 0, 1])  # needs 4 steps (a blank between the repeated 0s)
    with pytest.raises(ValueError, match="shape"):
        L.ctc_loss(t64(np.zeros(3)), [0])
    with pytest.raises(ValueError, match="2 sequences"):
        L.ctc_loss(t64(np.zeros((2, 3, 4))), [[0]])


# ---------------------------------------------------------------- gradients vs finite differences

def _inputs(name, rng):
    """(ŷ, y, kwargs) in each loss's domain, batch-first (N=4, C=3), float64."""
    N, C = 4, 3
    logits = rng.standard_normal((N, C))
    probs = np.exp(np_logsoftmax(logits, 1))
    onehot = onehotbatch(rng.integers(0, C, N), range(C))
    soft = np.exp(np_logsoftmax(rng.standard_normal((N, C)), 1))
    pos = rng.random((N, C)) + 0.2
    unit = rng.random((N, C)) * 0.8 + 0.1
    sgn = np.where(rng.random((N, C)) < 0.5, -1.0, 1.0)
    table = {
        "mse": (logits, rng.standard_normal((N, C)), {}),
        "mae": (logits, rng.standard_normal((N, C)), {}),
        "msle": (pos, rng.random((N, C)) + 0.2, {}),
        "huber_loss": (3 * logits, rng.standard_normal((N, C)), {"delta": 1.3}),
        "crossentropy": (probs, soft, {}),
        "crossentropy_onehot": (probs, onehot, {}),
        "logitcrossentropy": (logits, soft, {}),
        "logitcrossentropy_dims0": (logits, np.exp(np_logsoftmax(logits * 2, 0)), {"dims": 0}),
        "binarycrossentropy": (unit, rng.random((N, C)), {}),
        "logitbinarycrossentropy": (logits, rng.random((N, C)), {}),
        "kldivergence": (probs, soft, {}),
        "poisson_loss": (pos, rng.random((N, C)) * 3, {}),
        "hinge_loss": (logits, sgn, {}),
        "squared_hinge_loss": (logits, sgn, {}),
        "dice_coeff_loss": (unit, rng.random((N, C)), {}),
        "tversky_loss": (unit, rng.random((N, C)), {"beta": 0.6}),
        "binary_focal_loss": (unit, (rng.random((N, C)) < 0.5).astype(float), {}),
        "focal_loss": (probs, onehot, {"gamma": 1.5}),
        "siamese_contrastive_loss": (pos, (rng.random((N, C)) < 0.5).astype(float), {"margin": 1.0}),
        "ctc_loss": (rng.standard_normal((6, C)), [0, 1, 1], {}),
    }
    return table[name]


GRAD_CASES = ["mse", "mae", "msle", "huber_loss", "crossentropy", "crossentropy_onehot", "logitcrossentropy",
              "logitcrossentropy_dims0", "binarycrossentropy", "logitbinarycrossentropy", "kldivergence",
              "poisson_loss", "hinge_loss", "squared_hinge_loss", "dice_coeff_loss", "tversky_loss",
              "binary_focal_loss", "focal_loss", "siamese_contrastive_loss", "ctc_loss"]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_gradient_matches_finite_differences(case, agg):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    name = case.split("_onehot")[0].split("_dims")[0]
    f = getattr(L, name)
    yhat, y, kw = _inputs(case, rng)
    if name in ("dice_coeff_loss", "tversky_loss", "ctc_loss"):  # no agg: one value by definition
        if agg == "sum":
            pytest.skip(f"{name} has no agg")
    else:
        kw = dict(kw, agg=sum if agg == "sum" else L.mean)
    (g,) = fx.gradient(lambda a: f(a, y, **kw), t64(yhat))
    fd = numeric_gradient(lambda a: float(f(t64(a), y, **kw)), yhat, 1e-6)
    close(g.numpy(), fd, rtol=1e-5, atol=1e-7)


def test_gradient_flows_through_target_and_model():
    # y may be a tracked tensor too (siamese_contrastive_loss(ŷ, ŷ) in Flux's tests)
    a = t64([0.6, 0.4, 0.1])
    (g,) = fx.gradient(lambda a: L.siamese_contrastive_loss(a, a), a)
    v = np.array([0.6, 0.4, 0.1])
    # d/da mean((1 - a) a² + a max(0, 1 - a)²)
    close(g.numpy(), ((2 * v - 3 * v ** 2) + (1 - v) ** 2 - 2 * v * (1 - v)) / 3)
    # through a model: the explicit style
    m = fx.Dense(3, 2)
    x = fx.randn(5, 3)
    y = onehotbatch([0, 1, 1, 0, 1], [0, 1])
    (gm,) = fx.gradient(lambda m: fx.logitcrossentropy(m(x), y), m)
    assert gm.weight.shape == m.weight.shape and np.all(np.isfinite(gm.weight.numpy()))


# ---------------------------------------------------------------- edges: zeros, saturation

def _finite(t):
    return bool(np.all(np.isfinite(np.asarray(t.numpy(), dtype=np.float64))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_edges_zero_targets_and_saturated_probabilities(dtype):
    T = lambda v: fx.tensor(np.asarray(v, dtype=dtype), dtype=dtype)  # noqa: E731
    onehot = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    p = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # exact, saturated probabilities
    for kw in ({}, {"eps": 0}):
        val, (g,) = fx.withgradient(lambda a: L.crossentropy(a, onehot, **kw), T(p))
        assert float(val) == pytest.approx(0, abs=1e-6) and _finite(g)
        val, (g,) = fx.withgradient(lambda a: L.binarycrossentropy(a, onehot, **kw), T(p))
        assert float(val) == pytest.approx(0, abs=1e-6) and _finite(g)
        val, (g,) = fx.withgradient(lambda a: L.kldivergence(a, onehot, **kw), T(p))
        assert math.isfinite(float(val)) and _finite(g)
        val, (g,) = fx.withgradient(lambda a: L.focal_loss(a, onehot, **kw), T(p))
        assert math.isfinite(float(val)) and _finite(g)
        val, (g,) = fx.withgradient(lambda a: L.binary_focal_loss(a, onehot, **kw), T(np.clip(p, 0, 0.999)))
        assert math.isfinite(float(val)) and _finite(g)
    # wrong and saturated, with the default eps: large but finite, finite gradients
    val, (g,) = fx.withgradient(lambda a: L.binarycrossentropy(a, [[0.0, 1.0, 1.0]]), T([[1.0, 0.0, 1.0]]))
    assert math.isfinite(float(val)) and _finite(g)
    # logits far out: the stable forms stay finite
    big = T([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]])
    for f in (L.logitcrossentropy, L.logitbinarycrossentropy):
        val, (g,) = fx.withgradient(lambda a: f(a, onehot), big)
        assert math.isfinite(float(val)) and _finite(g)
    close(L.logitbinarycrossentropy(T([1e4, -1e4]), [1, 0]), 0, atol=1e-6)
    close(L.logitcrossentropy(T([[1e4, -1e4]]), [[1, 0]]), 0, atol=1e-6)
    # zero counts in poisson, zero targets in kldivergence's entropy
    val, (g,) = fx.withgradient(lambda a: L.poisson_loss(a, [0.0, 2.0]), T([0.5, 1.0]))
    close(float(val), (0.5 + 1.0 - 2 * math.log(1.0)) / 2, rtol=1e-6)
    assert _finite(g)


# ---------------------------------------------------------------- agg

def test_agg_sum_custom_and_identity():
    yhat, y = t64([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), [[0, 1], [1, 0], [0, 1]]
    el = (yhat.numpy() - np.asarray(y)) ** 2
    close(L.mse(yhat, y), el.mean())
    close(L.mse(yhat, y, agg=sum), el.sum())
    close(L.mse(yhat, y, agg=np.sum), el.sum())
    close(L.mse(yhat, y, agg="sum"), el.sum())
    close(L.mse(yhat, y, agg=np.mean), el.mean())
    close(L.mse(yhat, y, agg=statistics.mean), el.mean())
    close(L.mse(yhat, y, agg="mean"), el.mean())
    close(L.mse(yhat, y, agg=lambda l: l.max()), el.max())
    close(L.mse(yhat, y, agg=IDENT).numpy(), el)
    # per-sample losses keep the class axis, as Flux's sum(...; dims) does: (N, 1) for (N, C)
    per = L.crossentropy(yhat, y, agg=IDENT, eps=0)
    assert per.shape == (3, 1)
    close(per.numpy()[:, 0], -np.log([0.9, 0.8, 0.7]))
    close(L.crossentropy(yhat, y, agg=sum, eps=0), -np.log([0.9, 0.8, 0.7]).sum())
    close(L.logitcrossentropy(yhat, y, agg=lambda l: (l * l).sum()),
          np.sum(np.sum(-np.asarray(y) * np_logsoftmax(yhat.numpy(), 1), 1) ** 2))
    # the custom agg is differentiated through
    (g,) = fx.gradient(lambda a: L.mae(a, y, agg=lambda l: (l ** 2).sum()), yhat)
    close(g.numpy(), 2 * (yhat.numpy() - np.asarray(y)))


def test_dims_class_axis():
    # Flux's dims=1 on (C, N) is axis 1 on (N, C); dims selects any axis, negative counts from the end
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3))
    y = onehotbatch([0, 2, 1, 1], range(3))
    ref = L.logitcrossentropy(t64(logits), y)
    close(L.logitcrossentropy(t64(logits.T), y.T, dims=0), ref)
    close(L.logitcrossentropy(t64(logits), y, dims=-1), ref)
    close(L.crossentropy(fx.softmax(t64(logits.T), 0), y.T, dims=0), ref)
    # (N, C, H, W) segmentation output: class axis 1 by default
    x4 = rng.standard_normal((2, 3, 2, 2))
    y4 = np.moveaxis(np.eye(3)[rng.integers(0, 3, (2, 2, 2))], -1, 1)
    expect = np.mean(-np.sum(y4 * np_logsoftmax(x4, 1), axis=1))
    close(L.logitcrossentropy(t64(x4), y4), expect)
    close(L.logitcrossentropy(t64(np.moveaxis(x4, 1, 3)), np.moveaxis(y4, 1, 3), dims=3), expect)


@pytest.mark.filterwarnings("ignore:fluxrs converts float64")
def test_numpy_and_list_inputs():
    # targets as lists/arrays/numbers are converted to ŷ's dtype; transposed (Fortran-ordered) arrays too
    yhat = t32([[0.2, 0.8], [0.6, 0.4]])
    y = np.array([[0, 1], [1, 0]], dtype=np.float64).T.T  # any layout
    assert L.crossentropy(yhat, y).dtype == np.float32
    yt = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).T  # Fortran-ordered (2, 3)
    close(L.mse(t64(np.zeros((2, 3))), yt), np.mean(yt ** 2))
    close(L.mse(np.array([[1.0, 2.0], [3.0, 4.0]]).T, [[1, 3], [2, 4]]), 0.0, atol=1e-7)
    close(L.mse([1.0, 2.0], [1.0, 4.0]), 2.0)


# ---------------------------------------------------------------- errors

def test_shape_mismatch_errors():
    with pytest.raises(ValueError, match=r"mse: ŷ has shape \(3, 2\) but y has shape \(3,\)"):
        L.mse(fx.zeros(3, 2), np.zeros(3))
    with pytest.raises(ValueError, match="onehotbatch"):
        L.crossentropy(fx.zeros(3, 2), [0, 1, 1])
    for f in ALL_BASIC:
        with pytest.raises(ValueError, match=f.__name__ + r": ŷ has shape \(2, 3\) but y has shape \(3, 2\)"):
            f(fx.full((2, 3), 0.5), np.full((3, 2), 0.5))


def test_bad_keyword_errors():
    yhat, y = fx.full((2, 2), 0.5), np.eye(2)
    for f in (L.crossentropy, L.binarycrossentropy, L.kldivergence, L.msle, L.focal_loss, L.binary_focal_loss):
        with pytest.raises(ValueError, match="eps must be >= 0"):
            f(yhat, y, eps=-1e-7)
        with pytest.raises(ValueError, match="eps"):
            f(yhat, y, eps=float("nan"))
        with pytest.raises(TypeError, match="eps must be a real number"):
            f(yhat, y, eps="small")
    with pytest.raises(ValueError, match="delta must be > 0"):
        L.huber_loss(yhat, y, delta=0)
    with pytest.raises(ValueError, match="delta must be > 0"):
        L.huber_loss(yhat, y, delta=-1)
    for f in (L.crossentropy, L.logitcrossentropy, L.binarycrossentropy, L.logitbinarycrossentropy):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            f(yhat, y, label_smoothing=1.5)
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            f(yhat, y, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        L.focal_loss(yhat, y, gamma=-1)
    with pytest.raises(ValueError, match="agg must be 'mean', 'sum' or a callable"):
        L.mse(yhat, y, agg="median")
    with pytest.raises(TypeError, match="agg must be a callable"):
        L.mse(yhat, y, agg=3)
    with pytest.raises(ValueError, match="dims=2 is out of range"):
        L.crossentropy(yhat, y, dims=2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        L.crossentropy(yhat, y, epsilon=0.1)
    with pytest.raises(TypeError, match="not both"):
        L.crossentropy(yhat, y, eps=0.1, ϵ=0.1)


def test_docstring_examples():
    import doctest
    res = doctest.testmod(L, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 20 and res.failed == 0
