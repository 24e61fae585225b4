"""Model utilities: outputsize, destructure, trainables, modules, activations, normalise,
batch and unbatch. Testsets ported from Flux's test/outputsize.jl and test/utils.jl and
Optimisers.jl's test/destructure.jl carry their names; shapes are translated batch-first."""

import operator

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import check_gradients, f64


# ---------------------------------------------------------------- outputsize (Flux: test/outputsize.jl)

def test_outputsize_basic():
    m = fx.Dense(10, 5)
    with pytest.raises(ValueError, match="Dense"):
        fx.outputsize(m, (2, 5))
    assert fx.outputsize(m, (10,), padbatch=True) == (1, 5)

    m = fx.Chain(fx.Dense(10, 8, fx.σ), fx.Dense(8, 5), fx.Dense(5, 2))
    assert fx.outputsize(m, (10,), padbatch=True) == (1, 2)
    assert fx.outputsize(m, (30, 10)) == (30, 2)

    m = fx.Chain(fx.Dense(10, 8, fx.σ), fx.Dense(8, 4), fx.Dense(5, 2))
    with pytest.raises(ValueError, match=r"model\.layers\[2\] = Dense\(5 => 2\)"):
        fx.outputsize(m, (10,), padbatch=True)

    assert fx.outputsize(fx.Scale(10), (1, 10)) == (1, 10)
    m = fx.Maxout(lambda: fx.Conv((3, 3), 3, 16), 2)
    assert fx.outputsize(m, (1, 3, 10, 10)) == (1, 16, 8, 8)
    m = fx.SkipConnection(fx.Conv((3, 3), 3, 16, pad=1), operator.add)
    with pytest.raises(ValueError):  # 16 channels out cannot be added to 3 in
        fx.outputsize(m, (1, 3, 10, 10))
    m = fx.SkipConnection(fx.Conv((3, 3), 3, 16, pad=1), lambda mx, x: fx.concat([mx, x], 1))
    assert fx.outputsize(m, (1, 3, 10, 10)) == (1, 19, 10, 10)
    m = fx.Parallel(lambda a, b: fx.concat([a, b], -1), fx.Dense(2, 3), fx.Dense(2, 4))
    assert fx.outputsize(m, (5, 2)) == (5, 7)


def test_outputsize_multiple_inputs_and_outputs():
    m = fx.Parallel(lambda a, b: fx.concat([a, b], -1), fx.Dense(2, 4, fx.relu), fx.Dense(3, 6, fx.relu))
    assert fx.outputsize(m, (2,), (3,), padbatch=True) == (1, 10)
    assert fx.outputsize(m, (7, 2), (7, 3)) == (7, 10)
    assert fx.outputsize(lambda x: (x, x.sum(-1)), (4, 3)) == ((4, 3), (4,))


def test_outputsize_activations():
    for f in (fx.relu, fx.σ, fx.softmax, fx.tanh):
        assert fx.outputsize(f, (3, 10)) == (3, 10)


def test_outputsize_conv():
    assert fx.outputsize(fx.Conv((3, 3), 3, 16), (1, 3, 10, 10)) == (1, 16, 8, 8)
    assert fx.outputsize(fx.Conv((3, 3), 3, 16, stride=2), (1, 3, 5, 5)) == (1, 16, 2, 2)
    assert fx.outputsize(fx.Conv((3, 3), 3, 16, stride=2, pad=3), (1, 3, 5, 5)) == (1, 16, 5, 5)
    assert fx.outputsize(fx.Conv((3, 3), 3, 16, stride=2, pad=3, dilation=2), (1, 3, 5, 5)) == (1, 16, 4, 4)
    with pytest.raises(ValueError, match="Conv"):
        fx.outputsize(fx.Conv((3, 3), 3, 16), (1, 1, 5, 5))
    assert fx.outputsize(fx.ConvTranspose((3, 3), 3, 16), (1, 3, 10, 10)) == (1, 16, 12, 12)
    assert fx.outputsize(fx.DepthwiseConv((3, 3), 6, 12), (1, 6, 10, 10)) == (1, 12, 8, 8)
    assert fx.outputsize(fx.MaxPool((2, 2)), (1, 3, 10, 10)) == (1, 3, 5, 5)
    assert fx.outputsize(fx.MeanPool((2, 2), stride=1), (1, 3, 10, 10)) == (1, 3, 9, 9)
    assert fx.outputsize(fx.AdaptiveMaxPool((5, 5)), (1, 3, 10, 10)) == (1, 3, 5, 5)
    assert fx.outputsize(fx.GlobalMeanPool(), (1, 3, 10, 10)) == (1, 3, 1, 1)
    assert fx.outputsize(fx.Flatten(), (1, 3, 10, 10)) == (1, 300)
    assert fx.outputsize(fx.PixelShuffle(2), (1, 12, 5, 5)) == (1, 3, 10, 10)
    assert fx.outputsize(fx.Upsample(scale=2), (1, 3, 4, 4)) == (1, 3, 8, 8)


def test_outputsize_normalisation():
    for layer, shape in [(fx.Dropout(0.1), (4, 5, 32)), (fx.AlphaDropout(0.1), (4, 32)),
                         (fx.LayerNorm(32), (4, 5, 32)), (fx.BatchNorm(3), (4, 3, 5, 5)),
                         (fx.InstanceNorm(3), (4, 3, 5, 5)), (fx.GroupNorm(16, 4), (4, 16, 5, 5))]:
        assert fx.outputsize(layer, shape) == shape


def test_outputsize_large_batch_is_run_as_a_small_one():
    seen = []

    def probe(x):
        seen.append(tuple(x.shape))
        return x @ fx.ones(3, 2)

    assert fx.outputsize(probe, (10**6, 3)) == (10**6, 2)
    assert seen == [(1, 3), (2, 3)]
    # an output whose leading axis does not follow the batch: run on the full batch
    seen.clear()
    assert fx.outputsize(lambda x: probe(x).sum(0, keepdims=True), (50, 3)) == (1, 2)
    assert seen[-1] == (50, 3)


def test_outputsize_leaves_running_statistics_and_modes_alone():
    bn = fx.trainmode_(fx.BatchNorm(3))
    before = bn.running_mean.tolist(), bn.running_var.tolist()
    assert fx.outputsize(fx.Chain(fx.Dense(2, 3), bn), (8, 2)) == (8, 3)
    assert (bn.running_mean.tolist(), bn.running_var.tolist()) == before
    assert bn.active is True


def test_outputsize_integer_input_and_errors():
    m = fx.Chain(fx.Embedding(10, 4), fx.flatten, fx.Dense(28, 2))
    assert fx.outputsize(m, (32, 7), dtype=np.int64) == (32, 2)
    with pytest.raises(ValueError, match=r"layers\[2\] = Dense\(28 => 2\) fails on its input of shape \(1, 24\)"):
        fx.outputsize(m, (32, 6), dtype=np.int64)
    # a plain function in a Chain is named by its place, and the user's shape is reported
    m = fx.Chain(fx.Dense(10, 5), lambda x: x.reshape(3, 3))
    with pytest.raises(ValueError, match=r"model\.layers\[1\] = <lambda>.*model input of shape \(64, 10\)"):
        fx.outputsize(m, (64, 10))
    with pytest.raises(TypeError, match="give the input shape"):
        fx.outputsize(fx.Dense(2, 2))
    with pytest.raises(TypeError, match="shape #0"):
        fx.outputsize(fx.Dense(2, 2), 2)
    with pytest.raises(ValueError, match="shape #1"):
        fx.outputsize(fx.Dense(2, 2), (1, 2), (1, -2))


# ---------------------------------------------------------------- destructure (Optimisers: test/destructure.jl)

def test_destructure_flat_re():
    m = fx.Chain(fx.Dense(3, 4, fx.tanh), fx.Dense(4, 2))
    flat, re = fx.destructure(m)
    ps = fx.trainables(m)
    assert flat.shape == (sum(p.size for p in ps),) == (re.length,)
    np.testing.assert_array_equal(flat.numpy(), np.concatenate([p.numpy().ravel() for p in ps]))
    m2 = re(flat * 2)
    assert type(m2) is fx.Chain and m2[0].act is fx.tanh
    for p, q in zip(ps, fx.trainables(m2)):
        np.testing.assert_allclose(q.numpy(), 2 * p.numpy())
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(re(flat)(x).numpy(), m(x).numpy(), rtol=1e-6)
    assert fx.trainables(m)[0] is ps[0]  # the original is untouched


def test_destructure_shared_weights_appear_once():
    d = fx.Dense(3, 3)
    m = fx.Chain(d, d)
    flat, re = fx.destructure(m)
    assert flat.shape == (12,)
    m2 = re(fx.zeros(12))
    assert m2[0].weight is m2[1].weight  # still shared


def test_destructure_non_trainable_state_is_kept():
    bn = fx.BatchNorm(2)
    bn.running_mean.assign_(fx.tensor([1.0, 2.0]))
    flat, re = fx.destructure(fx.Chain(fx.Dense(2, 2), bn))
    assert flat.shape == (10,)  # weight, bias, β, γ: not the running statistics
    assert re(flat)[1].running_mean.tolist() == [1.0, 2.0]


def test_destructure_gradient_through_re():
    # the flat gradient against central finite differences, in float64
    rng = np.random.default_rng(1)
    m = fx.f64(fx.Chain(fx.Dense(3, 4, fx.tanh), fx.Dense(4, 2)))
    flat, re = fx.destructure(m)
    assert flat.dtype == np.float64
    x, r = f64(rng.normal(size=(5, 3))), f64(rng.normal(size=(5, 2)))
    v = fx.tensor(flat.numpy().copy(), dtype="float64")
    check_gradients(lambda: re(v)(x) * r, v)
    # and it equals the model's own gradient, flattened in params order
    g = fx.gradient(lambda v: (re(v)(x) * r).sum(), v)[0]
    gm = fx.gradient(lambda: (m(x) * r).sum(), fx.params(m))
    np.testing.assert_allclose(g.numpy(), np.concatenate([gm[p].numpy().ravel() for p in fx.params(m)]),
                               rtol=1e-12)


def test_destructure_errors_and_edge_cases():
    flat, re = fx.destructure(fx.Dense(2, 3))
    with pytest.raises(ValueError, match="length 9.*got shape \\(8,\\)"):
        re(fx.zeros(8))
    with pytest.raises(ValueError, match="length 9.*got shape \\(3, 3\\)"):
        re(fx.zeros(3, 3))
    assert re(np.arange(9.0)).weight.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    flat, re = fx.destructure(fx.Chain(fx.relu))
    assert flat.shape == (0,) and re(flat)(fx.tensor([-1.0])).tolist() == [0.0]
    assert "Restructure(Dense, ..., 9)" == repr(fx.destructure(fx.Dense(2, 3))[1])


# ---------------------------------------------------------------- trainables, modules, activations (Flux: test/utils.jl)

def test_trainables():
    bn = fx.BatchNorm(3)
    m = fx.Chain(fx.Dense(2, 3), bn)
    ts = fx.trainables(m)
    assert isinstance(ts, list) and len(ts) == 4
    assert all(t is p for t, p in zip(ts, fx.params(m)))
    assert not any(t is bn.running_mean for t in ts)


def test_modules():
    m1 = fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3, fx.relu))
    m2 = fx.Chain(m1, fx.Dense(3, 4))
    mods = fx.modules(m2)
    assert len(mods) == 5
    assert [id(x) for x in mods] == [id(m2), id(m1), id(m1[0]), id(m1[1]), id(m2[1])]
    # a penalty over the weights of every Dense, as in Flux's docstring
    w2 = sum(float((l.weight ** 2).sum()) for l in mods if isinstance(l, fx.Dense))
    assert w2 == pytest.approx(float((m1[0].weight ** 2).sum()) + float((m2[1].weight ** 2).sum()))
    # shared layers once; named chains and dicts walked through
    d = fx.Dense(2, 2)
    assert len(fx.modules(fx.Chain(a=d, b=d))) == 2
    assert fx.modules(fx.relu) == [] and fx.modules([fx.Dense(1, 1)])[0].weight.shape == (1, 1)


def test_chain_activations():
    c = fx.Chain(fx.Dense(3, 5, fx.relu), fx.Dense(5, 1, fx.relu))
    x = np.random.default_rng(0).random((7, 3)).astype(np.float32)
    acts = fx.activations(c, x)
    assert isinstance(acts, tuple) and len(acts) == 2
    np.testing.assert_array_equal(acts[0].numpy(), c[0](x).numpy())
    np.testing.assert_array_equal(acts[1].numpy(), c(x).numpy())
    assert fx.activations(fx.Chain(), x) == ()
    with pytest.raises(TypeError, match="Chain"):
        fx.activations(fx.Dense(3, 5), x)
    assert fx.activations.relu is fx.relu  # the module of activation functions is still there


def test_activations_are_differentiable():
    c = fx.f64(fx.Chain(fx.Dense(3, 4, fx.tanh), fx.Dense(4, 2)))
    x = f64(np.random.default_rng(2).normal(size=(5, 3)))
    check_gradients(lambda: fx.activations(c, x), c)


# ---------------------------------------------------------------- normalise (Flux: test/layers/stateless.jl)

def test_normalise():
    x = np.array([90.0, 100.0, 110.0, 130.0, 70.0])
    y = fx.normalise(fx.tensor(x, dtype="float64")).numpy()
    np.testing.assert_allclose(y, (x - 100) / (20 + 1e-5))
    rng = np.random.default_rng(3)
    a = rng.integers(10, 100, size=(10, 6, 4)).astype(np.float64)
    for dims in (0, 1, (0, 2), -1):
        ax = dims if isinstance(dims, tuple) else (dims,)
        want = (a - a.mean(ax, keepdims=True)) / (a.std(ax, keepdims=True) + 1e-5)
        np.testing.assert_allclose(fx.normalise(fx.tensor(a, dtype="float64"), dims=dims).numpy(), want,
                                   rtol=1e-10)
    got = fx.normalise(fx.tensor(a, dtype="float64"), eps=0.0).numpy()
    np.testing.assert_allclose(got.std(0), np.ones((6, 4)), rtol=1e-10)  # default: across the batch axis


def test_normalise_gradient_and_errors():
    x = f64(np.random.default_rng(4).normal(size=(6, 3)))
    check_gradients(lambda: fx.normalise(x, dims=0), x)
    with pytest.raises(ValueError, match=r"dims 2 are not axes of x of shape \(6, 3\)"):
        fx.normalise(x, dims=2)
    with pytest.raises(TypeError, match="dims"):
        fx.normalise(x, dims="0")
    with pytest.raises(ValueError, match="0-d"):
        fx.normalise(fx.tensor(1.0))


# ---------------------------------------------------------------- batch and unbatch (MLUtils' batch, unbatch)

def test_batch_unbatch():
    xs = [np.full((2, 3), i, dtype=np.float32) for i in range(4)]
    b = fx.batch(xs)
    assert isinstance(b, fx.Tensor) and b.shape == (4, 2, 3)
    assert [float(t[0, 0]) for t in fx.unbatch(b)] == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_array_equal(np.stack([u.numpy() for u in fx.unbatch(b)]), b.numpy())
    labels = fx.batch([3, 1, 2])
    assert isinstance(labels, np.ndarray) and labels.tolist() == [3, 1, 2]
    x, y = fx.batch([(np.ones(2), 0), (np.zeros(2), 1)])
    assert x.shape == (2, 2) and y.tolist() == [0, 1]
    d = fx.batch([{"a": [1.0], "b": 5}, {"a": [2.0], "b": 6}])
    assert d["a"].tolist() == [[1.0], [2.0]] and d["b"].tolist() == [5, 6]
    assert [a.tolist() for a in fx.unbatch(np.arange(6).reshape(3, 2))] == [[0, 1], [2, 3], [4, 5]]


def test_batch_of_tensors_is_differentiable():
    a, b = f64([1.0, 2.0]), f64([3.0, 4.0])
    r = f64([[1.0, -1.0], [2.0, 0.5]])
    ga, gb = fx.gradient(lambda a, b: (fx.batch([a, b]) * r).sum(), a, b)
    assert ga.tolist() == [1.0, -1.0] and gb.tolist() == [2.0, 0.5]
    x = f64([[1.0, 2.0], [3.0, 4.0]])
    g = fx.gradient(lambda x: fx.unbatch(x)[1].sum() * 3, x)[0]
    assert g.tolist() == [[0.0, 0.0], [3.0, 3.0]]


def test_batch_errors():
    with pytest.raises(ValueError, match=r"item 1 has shape \(3,\), item 0 has shape \(2,\)"):
        fx.batch([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="empty"):
        fx.batch([])
    with pytest.raises(ValueError, match="same fields"):
        fx.batch([(1, 2), (1,)])
    with pytest.raises(ValueError, match="0-d"):
        fx.unbatch(fx.tensor(1.0))
