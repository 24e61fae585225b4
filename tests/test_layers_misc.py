"""Dropout, AlphaDropout, train/test mode, Scale, Bilinear, Embedding, Parallel,
SkipConnection, PairwiseFusion, Maxout and MultiHeadAttention: values against numpy
references written here, gradients against central finite differences in float64."""

import math
import operator
import threading

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import check_gradients, f64


def randomise(layer, rng, scale=0.5):
    for p in fx.params(layer):
        p.assign_(f64(rng.normal(scale=scale, size=tuple(p.shape))))
    return layer


# ---------------------------------------------------------------- Dropout and modes

def test_dropout_is_identity_outside_gradient_and_drops_inside():
    d = fx.Dropout(0.5)
    x = fx.ones(200, 50)
    assert d(x) is x
    seen = {}

    def loss(x):
        y = d(x)
        seen["y"] = y.numpy().copy()
        return y.sum()

    fx.seed_(1)
    g = fx.gradient(loss, x)[0].numpy()
    y = seen["y"]
    assert set(np.unique(y)) == {0.0, 2.0}
    assert abs((y == 0).mean() - 0.5) < 0.02
    np.testing.assert_array_equal(g, y)  # d(x * mask)/dx = mask


def test_dropout_modes_and_reproducibility():
    d = fx.Dropout(0.3)
    x = fx.ones(100, 100)
    fx.trainmode_(d)
    fx.seed_(7)
    a = d(x).numpy()
    fx.seed_(7)
    b = d(x).numpy()
    np.testing.assert_array_equal(a, b)  # the per-thread generator, reseeded
    assert abs((a == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(np.unique(a), [0.0, 1 / 0.7], rtol=1e-6)
    fx.testmode_(d)
    assert d(x) is x
    assert np.all(np.asarray(fx.gradient(lambda x: d(x).sum(), x)[0]) == 1)  # test mode: the identity
    fx.testmode_(d, False)  # testmode_(m, false) is training mode, as Flux
    assert d.active is True
    fx.trainmode_(d, "auto")
    assert d.active is None
    with pytest.raises(TypeError, match="mode must be"):
        fx.trainmode_(d, 3)
    assert repr(fx.Dropout(0.5, active=True)) == "Dropout(0.5, active=True)"
    assert repr(fx.Dropout(0.2, dims=1)) == "Dropout(0.2, dims=1)"


def test_dropout_dims_share_the_mask_and_edge_probabilities():
    d = fx.Dropout(0.5, dims=(0, 1), active=True)
    y = d(fx.ones(6, 8, 5, 5)).numpy()
    per_channel = y.reshape(6, 8, -1)
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))  # whole channels kept or dropped
    assert fx.Dropout(0.0, active=True)(fx.ones(3)).tolist() == [1.0, 1.0, 1.0]
    assert fx.Dropout(1.0, active=True)(fx.ones(3)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        fx.Dropout(1.5)
    a = fx.Dropout(0.5, rng=np.random.default_rng(3), active=True)(fx.ones(50)).numpy()
    b = fx.Dropout(0.5, rng=np.random.default_rng(3), active=True)(fx.ones(50)).numpy()
    np.testing.assert_array_equal(a, b)  # a layer's own generator


def test_alphadropout_keeps_mean_and_variance():
    fx.seed_(0)
    x = fx.tensor(np.random.default_rng(0).standard_normal(400_000).astype(np.float32))
    y = fx.AlphaDropout(0.2, active=True)(x).numpy()
    assert abs(y.mean()) < 0.01 and abs(y.std() - 1) < 0.01
    # the dropped entries all take one value: A α′ + B
    p, alpha = 0.2, -1.7580993408473766
    A = 1 / math.sqrt((1 - p) * (1 + p * alpha ** 2))
    dropped = A * alpha - A * alpha * p
    assert abs(np.mean(np.isclose(y, dropped, atol=1e-6)) - 0.2) < 0.01
    d = fx.AlphaDropout(0.2)
    assert d(x) is x and repr(d) == "AlphaDropout(0.2)"


def test_trainmode_testmode_walk_the_whole_tree():
    m = fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3), fx.Chain(fx.Dropout(0.1), fx.AlphaDropout(0.1)),
                 fx.MultiHeadAttention(4, nheads=2, dropout_prob=0.1), fx.LayerNorm(3))
    assert fx.testmode_(m) is m
    modal = [m[1], m[2][0], m[2][1], m[3].attn_drop]
    assert all(l.active is False for l in modal)
    assert not hasattr(m[4], "active") and not hasattr(m[0], "active")
    fx.trainmode_(m)
    assert all(l.active is True for l in modal)
    fx.trainmode_(m, None)
    assert all(l.active is None for l in modal)


def test_dropout_mask_streams_are_per_thread():
    out = {}

    def work(i):
        fx.seed_(42)
        out[i] = fx.Dropout(0.5, active=True)(fx.ones(1000)).numpy()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for i in range(1, 4):
        np.testing.assert_array_equal(out[0], out[i])


# ---------------------------------------------------------------- Scale, Bilinear, Embedding

def test_scale_matches_numpy_and_gradients():
    rng = np.random.default_rng(1)
    s = randomise(fx.f64(fx.Scale(3, fx.tanh)), rng)
    x = rng.normal(size=(4, 3))
    np.testing.assert_allclose(s(f64(x)).numpy(), np.tanh(x * s.scale.numpy() + s.bias.numpy()), rtol=1e-12)
    xt = f64(x)
    check_gradients(lambda: s(xt), s, xt)
    assert repr(fx.Scale(2, 3, bias=False)) == "Scale(2, 3, bias=False)  # 6 parameters"


def test_bilinear_matches_numpy_and_gradients():
    rng = np.random.default_rng(2)
    m = randomise(fx.f64(fx.Bilinear((4, 3), 2, fx.tanh)), rng)
    assert repr(fx.Bilinear((4, 3), 2)) == "Bilinear((4, 3) => 2)  # 26 parameters"
    assert repr(fx.Bilinear(3, 2, bias=False)) == "Bilinear(3 => 2, bias=False)  # 18 parameters"
    x, y = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    W, b = m.weight.numpy(), m.bias.numpy()
    want = np.tanh(np.einsum("ni,oij,nj->no", x, W, y) + b)
    np.testing.assert_allclose(m(f64(x), f64(y)).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(m((f64(x), f64(y))).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(m(f64(x[0]), f64(y[0])).numpy(), want[0], rtol=1e-12)
    xt, yt = f64(x), f64(y)
    check_gradients(lambda: m(xt, yt), m, xt, yt)
    sq = fx.f64(fx.Bilinear(3, 2))
    np.testing.assert_allclose(sq(f64(y)).numpy(), sq(f64(y), f64(y)).numpy())
    with pytest.raises(ValueError, match="expects inputs with 4 and 3 features"):
        m(f64(y), f64(x))


def test_embedding_lookup_onehot_and_gradient():
    rng = np.random.default_rng(3)
    e = fx.f64(fx.Embedding((5, 3)))
    assert repr(fx.Embedding(5, 3)) == "Embedding(5 => 3)  # 15 parameters"
    W = e.weight.numpy()
    assert W.shape == (3, 5)  # (out, in), as Flux
    idx = np.array([[0, 4, 4], [2, 1, 0]])
    np.testing.assert_array_equal(e(idx).numpy(), W.T[idx])
    assert e(3).shape == (3,) and e([1, 2]).shape == (2, 3)
    # one-hot input equals the lookup (Embedding(in => out) == Dense(in => out, bias=false) on one-hot)
    oh = fx.onehotbatch([4, 0, 2], range(5))
    np.testing.assert_allclose(e(oh.astype("float64")).numpy(), W.T[[4, 0, 2]], rtol=1e-12)
    np.testing.assert_allclose(e(np.eye(5, dtype=bool)[[1, 3]]).numpy(), W.T[[1, 3]], rtol=1e-12)
    # gradient: only the looked-up columns, accumulated for repeats
    R = rng.normal(size=(2, 3, 3))
    g = fx.gradient(lambda m: (m(idx) * f64(R)).sum(), e)[0].weight.numpy()
    want = np.zeros((3, 5))
    for (n, t), i in np.ndenumerate(idx):
        want[:, i] += R[n, t]
    np.testing.assert_allclose(g, want, rtol=1e-12)
    check_gradients(lambda: e(idx), e)
    with pytest.raises(IndexError, match=r"index 5 is out of range 0..4"):
        e(np.array([1, 5]))
    with pytest.raises(IndexError, match=r"index -1"):
        e(np.array([-1]))
    with pytest.raises(TypeError, match="integer indices"):
        e(np.array([0.5, 1.0]))


NP_REDUCE = {"mean": np.mean, "sum": np.sum, "maximum": np.max}


# Flux: test/layers/basic.jl, "EmbeddingBag" (bags along the last axis here, Flux's first)
@pytest.mark.parametrize("reduction", ["mean", "sum", "maximum"])
def test_embeddingbag_matches_reduced_embedding(reduction):
    rng = np.random.default_rng(4)
    eb = fx.f64(fx.EmbeddingBag((10, 4), reduction))
    W = eb.weight.numpy()
    assert W.shape == (4, 10)
    red = NP_REDUCE[reduction]
    # one bag; one bag per row; bags along the last axis of any array
    bag = np.array([3, 3, 7, 1])
    np.testing.assert_allclose(eb(bag).numpy(), red(W.T[bag], axis=0), rtol=1e-12)
    bags = rng.integers(0, 10, size=(5, 6))
    np.testing.assert_allclose(eb(bags).numpy(), red(W.T[bags], axis=1), rtol=1e-12)
    many = rng.integers(0, 10, size=(2, 3, 6))
    assert eb(many).shape == (2, 3, 4)
    np.testing.assert_allclose(eb(many).numpy(), red(W.T[many], axis=2), rtol=1e-12)
    # it is Embedding followed by the reduction over the bag axis
    e = fx.Embedding(eb.weight)
    np.testing.assert_allclose(eb(bags).numpy(), red(e(bags).numpy(), axis=-2), rtol=1e-12)
    # ragged bags, a list of 1-D arrays, and the same bags given as (data, offsets)
    ragged = [np.array([1, 2, 3]), np.array([9]), np.array([0, 0, 5, 6, 7])]
    want = np.stack([red(W.T[b], axis=0) for b in ragged])
    np.testing.assert_allclose(eb(ragged).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(eb([list(b) for b in ragged]).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(eb(np.concatenate(ragged), [0, 3, 4]).numpy(), want, rtol=1e-12)
    # one-hot bags, (..., L, in)
    oh = np.eye(10, dtype=bool)[bags]
    np.testing.assert_allclose(eb(oh).numpy(), red(W.T[bags], axis=1), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "maximum"])
def test_embeddingbag_gradients_match_finite_differences(reduction):
    rng = np.random.default_rng(5)
    eb = fx.f64(fx.EmbeddingBag(8, 3, reduction))
    bags = rng.integers(0, 8, size=(4, 5))
    check_gradients(lambda: eb(bags), eb)
    ragged = [np.array([1, 2, 3]), np.array([7]), np.array([0, 4, 5, 6])]
    check_gradients(lambda: eb(ragged), eb)
    # the mean's closed form: each bag spreads its incoming gradient evenly over its items
    if reduction == "mean":
        R = rng.normal(size=(3, 3))
        g = fx.gradient(lambda m: (m(ragged) * f64(R)).sum(), eb)[0].weight.numpy()
        want = np.zeros((3, 8))
        for b, r in zip(ragged, R):
            for i in b:
                want[:, i] += r / len(b)
        np.testing.assert_allclose(g, want, rtol=1e-12)


def test_embeddingbag_constructors_repr_and_errors():
    assert repr(fx.EmbeddingBag(26, 3)) == "EmbeddingBag(26 => 3)  # 78 parameters"
    assert repr(fx.EmbeddingBag((26, 3), "sum")) == 'EmbeddingBag(26 => 3, "sum")  # 78 parameters'
    assert fx.EmbeddingBag(26, 3, np.max).reduction == "max"
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    eb = fx.EmbeddingBag(W, "sum")
    assert eb.weight.shape == (2, 3) and eb([0, 2]).tolist() == [2.0, 8.0]
    with pytest.raises(ValueError, match="reduction must be"):
        fx.EmbeddingBag(3, 2, "median")
    with pytest.raises(ValueError, match="not just one"):
        eb(1)
    with pytest.raises(IndexError, match="index 3 is out of range 0..2"):
        eb([[0, 3]])
    with pytest.raises(ValueError, match="bag 1 must be a non-empty 1-D integer array"):
        eb([np.array([0, 1]), np.array([], dtype=int), np.array([2, 2, 2])])
    with pytest.raises(ValueError, match="offsets must start at 0"):
        eb(np.array([0, 1, 2]), [1, 2])
    with pytest.raises(ValueError, match="offsets must start at 0"):
        eb(np.array([0, 1, 2]), [0, 3])
    with pytest.raises(ValueError, match="empty"):
        eb(np.zeros((2, 0), dtype=int))
    with pytest.raises(ValueError, match="needs a bag axis"):
        eb(np.eye(3, dtype=bool)[0])


# ---------------------------------------------------------------- containers

def test_parallel_semantics():
    rng = np.random.default_rng(4)
    a, b = randomise(fx.f64(fx.Dense(2, 3)), rng), randomise(fx.f64(fx.Dense(2, 3)), rng)
    m = fx.Parallel(operator.add, a, b)
    x, x2 = f64(rng.normal(size=(4, 2))), f64(rng.normal(size=(4, 2)))
    np.testing.assert_allclose(m(x).numpy(), (a(x) + b(x)).numpy())
    np.testing.assert_allclose(m(x, x2).numpy(), (a(x) + b(x2)).numpy())
    np.testing.assert_allclose(m((x, x2)).numpy(), (a(x) + b(x2)).numpy())
    one = fx.Parallel(lambda *ys: fx.concat(ys, axis=-1), a)
    assert one(x, x2).shape == (4, 6)  # a single layer applied to each input
    assert fx.Parallel(None, a, b)(x)[1].shape == (4, 3)
    named = fx.Parallel(operator.mul, left=a, right=b)
    assert named["left"] is a and named[1] is b and len(named) == 2
    assert repr(m) == "Parallel(add, Dense(2 => 3), Dense(2 => 3))  # 18 parameters"
    assert repr(named) == "Parallel(mul, left=Dense(2 => 3), right=Dense(2 => 3))  # 18 parameters"
    with pytest.raises(ValueError, match="takes 1 or 2 inputs, got 3"):
        m(x, x, x)
    check_gradients(lambda: m(x, x2), m, x, x2)


def test_parallel_with_concat_joins_features_as_fluxs_vcat():
    rng = np.random.default_rng(5)
    a, b = randomise(fx.f64(fx.Dense(2, 3)), rng), randomise(fx.f64(fx.Dense(2, 4)), rng)
    m = fx.Parallel(fx.concat, a, b)  # Flux: Parallel(vcat, a, b)
    x = f64(rng.normal(size=(5, 2)))
    by_hand = np.concatenate([a(x).numpy(), b(x).numpy()], axis=-1)
    np.testing.assert_array_equal(m(x).numpy(), by_hand)
    np.testing.assert_array_equal(fx.concat(a(x), b(x), axis=-1).numpy(), by_hand)
    n = sum(p.size for p in fx.params(m))
    assert repr(m) == f"Parallel(concat, Dense(2 => 3), Dense(2 => 4))  # {n} parameters"
    # the sequence form keeps numpy's axis 0
    assert fx.concat([a(x), a(x)]).shape == (10, 3) and fx.concat([a(x), b(x)], 1).shape == (5, 7)
    check_gradients(lambda: m(x), m)
    gx = fx.gradient(lambda x: (m(x) * f64(rng.normal(size=(5, 7)))).sum(), x)[0]
    assert gx.shape == (5, 2)
    with pytest.raises(TypeError, match="only the axis may follow"):
        fx.concat([a(x)], 0, 1)


def test_skipconnection_pairwisefusion_maxout():
    rng = np.random.default_rng(5)
    d = randomise(fx.f64(fx.Dense(3, 3, fx.tanh)), rng)
    x = f64(rng.normal(size=(2, 3)))
    s = fx.SkipConnection(d, operator.add)
    np.testing.assert_allclose(s(x).numpy(), np.tanh(x.numpy() @ d.weight.numpy().T + d.bias.numpy()) + x.numpy())
    check_gradients(lambda: s(x), s, x)
    assert repr(s) == "SkipConnection(Dense(3 => 3, tanh), add)  # 12 parameters"

    l1, l2, l3 = (randomise(fx.f64(fx.Dense(3, 3)), rng) for _ in range(3))
    pf = fx.PairwiseFusion(operator.add, l1, l2, l3)
    xs = tuple(f64(rng.normal(size=(2, 3))) for _ in range(3))
    y1 = l1(xs[0])
    y2 = l2(y1 + xs[1])
    y3 = l3(y2 + xs[2])
    got = pf(xs)
    for g, w in zip(got, (y1, y2, y3)):
        np.testing.assert_allclose(g.numpy(), w.numpy())
    assert len(pf(xs[0])) == 3
    with pytest.raises(ValueError, match="takes 1 or 3 inputs"):
        pf(xs[:2])
    check_gradients(lambda: pf(xs), pf, *xs)

    mo = fx.Maxout(lambda: fx.f64(fx.Dense(3, 2)), 3)
    randomise(mo, rng)
    want = np.max([(x.numpy() @ l.weight.numpy().T + l.bias.numpy()) for l in mo], axis=0)
    np.testing.assert_allclose(mo(x).numpy(), want)
    check_gradients(lambda: mo(x), mo, x)
    assert repr(mo).startswith("Maxout(Dense(3 => 2), Dense(3 => 2), Dense(3 => 2))  # 24 parameters")


# ---------------------------------------------------------------- attention

def np_mha(m, q, k, v, mask=None):
    def proj(d, x):
        y = x @ d.weight.numpy().T
        return y if d.bias is None else y + d.bias.numpy()
    h = m.nheads
    Q, K, V = proj(m.q_proj, q), proj(m.k_proj, k), proj(m.v_proj, v)
    n, lq, dq = Q.shape
    lk = K.shape[1]
    Q = Q.reshape(n, lq, h, -1).transpose(0, 2, 1, 3)
    K = K.reshape(n, lk, h, -1).transpose(0, 2, 1, 3)
    V = V.reshape(n, lk, h, -1).transpose(0, 2, 1, 3)
    logits = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(dq // h)
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    y = (a @ V).transpose(0, 2, 1, 3).reshape(n, lq, -1)
    return proj(m.out_proj, y), a


def test_multiheadattention_matches_numpy():
    rng = np.random.default_rng(6)
    m = randomise(fx.f64(fx.MultiHeadAttention(8, nheads=2, bias=True)), rng)
    assert repr(fx.MultiHeadAttention(8, nheads=2)) == "MultiHeadAttention(8, nheads=2)  # 256 parameters"
    q = rng.normal(size=(3, 4, 8))
    kv = rng.normal(size=(3, 5, 8))
    y, a = m(f64(q), f64(kv))
    wy, wa = np_mha(m, q, kv, kv)
    assert y.shape == (3, 4, 8) and a.shape == (3, 2, 4, 5)
    np.testing.assert_allclose(y.numpy(), wy, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.numpy(), wa, rtol=1e-10, atol=1e-12)
    # self-attention with a causal mask; unbatched input
    mask = fx.make_causal_mask(4)
    y, a = m(f64(q), mask=mask)
    wy, wa = np_mha(m, q, q, q, mask=mask)
    np.testing.assert_allclose(y.numpy(), wy, rtol=1e-10, atol=1e-12)
    assert np.all(a.numpy()[..., 0, 1:] == 0)
    y1, _ = m(f64(q[0]), mask=mask)
    np.testing.assert_allclose(y1.numpy(), wy[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"q must be \(N, L, 8\)"):
        m(fx.ones(2, 3, 5))


def test_multiheadattention_gradients_and_shapes():
    rng = np.random.default_rng(7)
    m = randomise(fx.f64(fx.MultiHeadAttention(4, nheads=2, qk_dim=6, v_dim=2, out_dim=3)), rng)
    assert repr(m).startswith("MultiHeadAttention(4, nheads=2, qk_dim=6, v_dim=2, out_dim=3)")
    q = f64(rng.normal(size=(2, 3, 4)))
    y, a = m(q)
    assert y.shape == (2, 3, 3) and a.shape == (2, 2, 3, 3)
    check_gradients(lambda: m(q)[0], m, q, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by nheads"):
        fx.MultiHeadAttention(6, nheads=4)


def test_multiheadattention_with_infinite_bias_masks():
    # an -Inf bias masks a key out, a +Inf bias forces it (NNlib's softmax of +Inf), and no NaN
    # reaches the output or the gradient either way
    fx.seed_(0)
    mha = fx.MultiHeadAttention(4, 2)
    x = fx.randn(2, 3, 4)
    causal = np.zeros((3, 3), np.float32)
    causal[np.triu_indices(3, 1)] = -np.inf
    y, s = mha(x, bias=causal)
    assert np.isfinite(y.numpy()).all()
    np.testing.assert_allclose(np.triu(s.numpy(), 1), 0.0)
    _, mask_scores = mha(x, mask=fx.make_causal_mask(3))
    np.testing.assert_allclose(s.numpy(), mask_scores.numpy(), rtol=1e-6)
    force = np.zeros((3, 3), np.float32)
    force[:, 0] = np.inf
    y, s = mha(x, bias=force)
    assert np.isfinite(y.numpy()).all() and (s.numpy()[..., 0] == 1.0).all()
    g = fx.gradient(lambda m: m(x, bias=causal)[0].sum(), mha)[0]
    assert np.isfinite(g.q_proj.weight.numpy()).all() and np.isfinite(g.v_proj.weight.numpy()).all()
