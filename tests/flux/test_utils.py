"""Flux.jl's test/utils.jl (v0.13, the version with the initialiser, Params, modules,
destructure and trigger tests), translated to fluxrs.

Translation: batch-first data; a convolution weight is (out, in, k...) where Flux's is
(k..., in, out), so Flux's dims ``(k1, k2, in, out)`` become ``(out, in, k1, k2)`` (see
`conv_dims`); a Dense weight is (out, in) in both; 0-based indices; ``MersenneTwister(1)``
is ``np.random.default_rng(1)``. Skipped upstream checks are noted where they would be.
"""

import math
import time

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import (glorot_normal, glorot_uniform, identity_init, kaiming_normal, kaiming_uniform, nfan, orthogonal,
                    sparse_init, truncated_normal)


def conv_dims(*flux_dims):
    """Flux's array dims (k..., in, out) in fluxrs's layout (out, in, k...)."""
    *k, n_in, n_out = flux_dims
    return (n_out, n_in, *k)


def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- Throttle

# test/utils.jl, testset "Throttle" > "default behaviour"
def test_throttle_default_behaviour():
    a = []
    f = fx.throttle(lambda: a.append(time.time()), 1, leading=True, trailing=False)
    f()
    f()
    f()
    time.sleep(1.01)
    assert len(a) == 1


# test/utils.jl, testset "Throttle" > "leading behaviour"
def test_throttle_leading_behaviour():
    a = []
    f = fx.throttle(lambda: a.append(time.time()), 1, leading=True, trailing=False)
    f()
    assert len(a) == 1
    f()
    assert len(a) == 1
    time.sleep(1.01)
    f()
    assert len(a) == 2


# test/utils.jl, testset "Throttle" > "trailing behaviour"
def test_throttle_trailing_behaviour():
    a = []
    f = fx.throttle(lambda: a.append(time.time()), 1, leading=False, trailing=True)
    f()
    assert len(a) == 0
    f()
    assert len(a) == 0
    time.sleep(1.01)
    assert len(a) == 1


# test/utils.jl, testset "Throttle" > "arguments"
def test_throttle_arguments():
    a = []
    f = fx.throttle(lambda x: a.append(x), 1, leading=True, trailing=True)
    f(1)
    assert a == [1]
    f(2)
    assert a == [1]
    f(3)
    assert a == [1]
    time.sleep(1.01)
    assert a == [1, 3]


# ---------------------------------------------------------------- Initialization

# test/utils.jl, testset "Initialization" > "Fan in/out"
def test_initialization_fan_in_out():
    assert nfan() == (1, 1)  # For a constant
    assert nfan(100) == (1, 100)  # For vector
    assert nfan(100, 200) == (200, 100) == nfan((100, 200))  # For Dense layer
    assert nfan(*conv_dims(2, 30, 40)) == (2 * 30, 2 * 40)  # For 1D Conv layer
    assert nfan(*conv_dims(2, 3, 40, 50)) == (2 * 3 * 40, 2 * 3 * 50)  # For 2D Conv layer
    assert nfan(*conv_dims(2, 3, 4, 50, 60)) == (2 * 3 * 4 * 50, 2 * 3 * 4 * 60)  # For 3D Conv layer


ALL_INITS = [glorot_uniform, glorot_normal, kaiming_uniform, kaiming_normal, orthogonal, sparse_init,
             truncated_normal, identity_init]


# test/utils.jl, testset "Initialization" > "Basics: $init"
@pytest.mark.parametrize("init", ALL_INITS, ids=lambda f: f.__name__)
def test_initialization_basics(init):
    if init is sparse_init:
        init = sparse_init(sparsity=0.5)  # Flux: (args...) -> sparse_init(args...; sparsity=0.5)
    else:
        # sparse_init is the only one which accepts only matrices:
        assert init(3).shape == (3,)
        assert init(3, 4, 5).shape == (3, 4, 5)
    assert init(3, 4).shape == (3, 4)
    # Flux: "only init(size...) is accepted": init((3, 4, 5)) is a MethodError there; fluxrs
    # also takes the shape as one tuple, as numpy does, so that check is left out

    # rng, and currying:
    assert init(np.random.default_rng(1), 3, 4).shape == (3, 4)
    closure = init(np.random.default_rng(1))
    assert closure(3, 4).shape == (3, 4)

    # eltype, default Float32
    assert init(3, 4).dtype == np.float32

    # @non_differentiable
    g = fx.gradient(lambda x: (x * init(3, 4)).sum(), 5.0)[0]
    assert isinstance(g, float)


# test/utils.jl, testset "Initialization" > "glorot"
def test_initialization_glorot():
    fx.seed_(0)
    # glorot_uniform and glorot_normal should both yield a kernel with
    # variance ≈ 2/(fan_in + fan_out)
    for dims in [(1000,), (100, 100), (100, 400), conv_dims(2, 3, 32, 64), conv_dims(2, 3, 4, 32, 64)]:
        for init in [glorot_uniform, glorot_normal]:
            v = init(*dims).numpy()
            fan_in, fan_out = nfan(*dims)
            s2 = 2 / (fan_in + fan_out)
            assert 0.9 * s2 < v.var(ddof=1) < 1.1 * s2


# test/utils.jl, testset "Initialization" > "kaiming"
def test_initialization_kaiming():
    fx.seed_(0)
    # kaiming_uniform should yield a kernel in range [-sqrt(6/n_out), sqrt(6/n_out)]
    # and kaiming_normal should yield a kernel with stddev ~= sqrt(2/n_out)
    for n_in, n_out in [(100, 100), (100, 400)]:
        v = kaiming_uniform(n_in, n_out).numpy()
        s2 = math.sqrt(6 / n_out)
        assert -1 * s2 < v.min() < -0.9 * s2
        assert 0.9 * s2 < v.max() < 1 * s2

        v = kaiming_normal(n_in, n_out).numpy()
        s2 = math.sqrt(2 / n_out)
        assert 0.9 * s2 < v.std(ddof=1) < 1.1 * s2


# test/utils.jl, testset "Initialization" > "orthogonal"
def test_initialization_orthogonal():
    # A matrix of dim = (m,n) with m > n should produce a QR decomposition. In the other case,
    # the transpose should be taken to compute the QR decomposition.
    for rows, cols in [(5, 3), (3, 5)]:
        v = orthogonal(rows, cols).numpy().astype(np.float64)
        if rows < cols:
            np.testing.assert_allclose(v @ v.T, np.eye(rows), atol=1e-5)
        else:
            np.testing.assert_allclose(v.T @ v, np.eye(cols), atol=1e-5)
    for mat in [(3, 4, 5), (2, 2, 5)]:
        # Flux reshapes to (prod(mat[1:end-1]), mat[end]); fluxrs's dims are reversed, its
        # matrix is (out, rest): the same check on the transpose
        dims = tuple(reversed(mat))
        v = orthogonal(*dims).numpy().astype(np.float64)
        cols = mat[-1]
        rows = math.prod(mat) // cols
        v = v.reshape(cols, rows).T
        if rows < cols:
            np.testing.assert_allclose(v @ v.T, np.eye(rows), atol=1e-5)
        else:
            np.testing.assert_allclose(v.T @ v, np.eye(cols), atol=1e-5)


# test/utils.jl, testset "Initialization" > "sparse_init"
def test_initialization_sparse_init():
    fx.seed_(0)
    # sparse_init should yield an error for non 2-d dimensions
    # sparse_init should yield no zero elements if sparsity < 0
    # sparse_init should yield all zero elements if sparsity > 1
    # sparse_init should yield exactly ceil(n_in * sparsity) elements in each column for other sparsity values
    # sparse_init should yield a kernel in its non-zero elements consistent with the std parameter
    with pytest.raises(ValueError):  # Flux: ArgumentError
        sparse_init(100, 100, 100, sparsity=0.1)
    v = sparse_init(100, 100, sparsity=-0.1).numpy()
    assert (v == 0).sum() == 0
    v = sparse_init(100, 100, sparsity=1.1).numpy()
    assert (v == 0).sum() == v.size

    for n_in, n_out, sparsity, s in [(100, 100, 0.25, 0.1), (100, 400, 0.75, 0.01)]:
        expected_zeros = math.ceil(n_in * sparsity)
        v = sparse_init(n_in, n_out, sparsity=sparsity, std=s).numpy()
        assert all((v[:, col] == 0).sum() == expected_zeros for col in range(n_out))
        assert 0.9 * s < v[v != 0].std(ddof=1) < 1.1 * s


# test/utils.jl, testset "Initialization" > "truncated_normal"
def test_initialization_truncated_normal():
    fx.seed_(0)
    m = truncated_normal(100, 100).numpy()
    assert m.min() == pytest.approx(-2, abs=0.05)  # default arguments
    assert m.max() == pytest.approx(2, abs=0.05)
    assert m.mean() == pytest.approx(0, abs=0.1)

    size100 = (100, 100, 100)
    for mu, s, lo, hi in [(0.0, 1, -2, 3), (1, 2, -4.0, 5.0)]:
        v = truncated_normal(*size100, mean=mu, std=s, lo=lo, hi=hi)
        a = v.numpy()
        assert a.mean() == pytest.approx(mu, abs=1e-1)
        assert a.min() == pytest.approx(lo, abs=1e-2)
        assert a.max() == pytest.approx(hi, abs=1e-2)
        assert v.dtype == np.float32  # despite some Float64 arguments
    for mu, s, lo, hi in [(6, 2, -100.0, 100), (-7.0, 10, -100, 100)]:
        a = truncated_normal(*size100, mean=mu, std=s, lo=lo, hi=hi).numpy()
        assert a.mean() == pytest.approx(mu, abs=1e-1)
        assert a.std(ddof=1) == pytest.approx(s, abs=1e-1)


# test/utils.jl, testset "Initialization" > "Partial application"
def test_initialization_partial_application():
    partial_ku = kaiming_uniform(gain=1e9)
    assert partial_ku(8, 8).numpy().max() > 1e9 / 2
    assert partial_ku(8, 8, gain=1).numpy().max() < 1e9 / 2

    partial_kn = kaiming_normal(gain=1e9)
    assert partial_kn(8, 8).numpy().max() > 1e9 / 2
    assert partial_kn(8, 8, gain=1).numpy().max() < 1e9 / 2

    partial_si = sparse_init(sparsity=1)
    assert partial_si(8, 8).numpy().max() == 0
    assert partial_si(8, 8, sparsity=0).numpy().max() > 0


# test/utils.jl, testset "Initialization" > "identity_init" > "Basic"
def test_identity_init_basic():
    partial = identity_init(gain=3)
    assert same(partial(3, 3), identity_init(3, 3, gain=3))
    assert same(identity_init(3, 3, gain=3), [[3, 0, 0], [0, 3, 0], [0, 0, 3]])


# test/utils.jl, testset "Initialization" > "identity_init" > "Non-identity sizes"
def test_identity_init_non_identity_sizes():
    assert same(identity_init(2, 3)[:, -1], np.zeros(2, np.float32))
    assert same(identity_init(3, 2, shift=1)[0, :], np.zeros(2, np.float32))
    # Flux's 4-d dims are (k1, k2, in, out), fluxrs's (out, in, k1, k2)
    assert same(identity_init(*conv_dims(1, 1, 3, 4))[-1, :, :, :], np.zeros((3, 1, 1), np.float32))
    assert same(identity_init(*conv_dims(2, 1, 3, 3))[:, :, -1, :], np.zeros((3, 3, 1), np.float32))
    assert same(identity_init(*conv_dims(1, 2, 3, 3))[:, :, :, -1], np.zeros((3, 3, 1), np.float32))


# test/utils.jl, testset "Initialization" > "identity_init" > "Dense ID mapping"
def test_identity_init_dense_id_mapping():
    l = fx.Dense(3, 3, init=identity_init)
    indata = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    assert same(l(indata), indata)


# test/utils.jl, testset "Initialization" > "identity_init" > "$layer ID mapping with kernelsize $kernelsize"
@pytest.mark.parametrize("layer", [fx.Conv, fx.ConvTranspose, fx.CrossCor], ids=lambda c: c.__name__)
@pytest.mark.parametrize("kernelsize", [(1,), (3,), (1, 3), (3, 5), (3, 5, 7)], ids=str)
def test_identity_init_layer_id_mapping_with_kernelsize(layer, kernelsize):
    nch = 3
    l = layer(kernelsize, (nch, nch), init=identity_init, pad=fx.SamePad())
    indata = np.random.randn(nch, nch, *kernelsize).astype(np.float32)  # (batch, channels, spatial...)
    assert same(l(indata), indata)


# test/utils.jl, testset "Initialization" > "identity_init" > "Inception identity"
def test_identity_init_inception_identity():
    insize = 7
    # Flux's shift=(0, 0, 2, 0) rolls the input channels of its (k1, k2, in, out) weight;
    # here they are the second axis of (out, in, k1, k2)
    path1 = fx.Conv((1, 3), (insize, 2), init=identity_init, pad=fx.SamePad())
    path2 = fx.Conv((3, 5), (insize, 3), init=identity_init(shift=(0, 2, 0, 0)), pad=fx.SamePad())
    path3 = fx.Conv((5, 7), (insize, 2), init=identity_init(shift=(0, 5, 0, 0)), pad=fx.SamePad())
    block = fx.Parallel(lambda *xs: fx.concat(*xs, axis=1), path1, path2, path3)

    indata = np.random.randn(2, 7, 9, 9).astype(np.float32)
    assert same(block(indata), indata)


# ---------------------------------------------------------------- Params, Precision, zero bias

# test/utils.jl, testset "Params"
def test_params():
    m = fx.Dense(10, 5)
    assert [tuple(p.shape) for p in fx.params(m)] == [(5, 10), (5,)]
    m = fx.RNN(10, 5)
    # Flux v0.13's RNN also has a trainable initial state (5, 1); fluxrs's RNN (as Flux ≥ 0.15) has none
    rnn_shapes = [(5, 10), (5, 5), (5,)]
    assert [tuple(p.shape) for p in fx.params(m)] == rnn_shapes

    # Layer duplicated in same chain, params just once pls.
    c = fx.Chain(m, m)
    assert [tuple(p.shape) for p in fx.params(c)] == rnn_shapes

    # Self-referential array. Just want params, no stack overflow pls.
    r = [None, m]
    r[0] = r
    assert [tuple(p.shape) for p in fx.params(r)] == rnn_shapes


# test/utils.jl, testset "Precision"
def test_precision(monkeypatch):
    from fluxrs.layers import basic
    monkeypatch.setattr(basic, "_warned_f64", False)  # the warning is shown once per process
    m = fx.Chain(fx.Dense(10, 5, fx.relu), fx.Dense(5, 2))
    x64 = np.random.rand(10)
    x32 = np.random.rand(10).astype(np.float32)
    assert m[0].weight.dtype == np.float32
    assert m(x32).dtype == np.float32
    # Flux: eltype(m(x64)) == Float64 (Julia promotes); fluxrs converts the input to the
    # layer's dtype, with a warning, so the output is float32
    with pytest.warns(UserWarning, match="float64 input converted to float32"):
        assert m(x64).dtype == np.float32
    assert fx.f64(m)(x32).dtype == np.float64
    assert fx.f64(m)(x64).dtype == np.float64
    assert fx.f64(m)[0].weight.dtype == np.float64
    assert fx.f32(fx.f64(m))[0].weight.dtype == np.float32


# test/utils.jl, testset "zero bias"
def test_zero_bias():
    m = fx.Dense(3, 2, bias=False)
    assert fx.f64(m).bias is m.bias is None  # Flux: === false
    assert fx.f32(m).bias is m.bias is None


# test/utils.jl, testset "zero bias" > "Gradients for broadcasted $op with sizes $s" > "Explicit"
@pytest.mark.parametrize("op", ["+", "-", "*"])
@pytest.mark.parametrize("s", [(1,), (2, 3)], ids=str)
def test_zero_bias_gradients_for_broadcasted_op_explicit(op, s):
    f = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}[op]
    o = np.ones(s)
    z = np.zeros(s)

    def gfun(*args):
        return fx.gradient(lambda x, y: f(x, y).sum(), *args)

    g = gfun(o, z)
    g2 = gfun(o, False)
    assert same(g2[0], g[0]) and g2[1] is None

    g = gfun(z, o)
    g2 = gfun(False, o)
    assert g2[0] is None and same(g2[1], g[1])
    # the "Implicit" half (gradient(() -> ..., params(collect(args)))) is left out: fx.params
    # copies numpy arrays into new tensors, so its Grads cannot be looked up by the array


# ---------------------------------------------------------------- unsqueeze, stacking, batching

# test/utils.jl, testset "unsqueeze"
@pytest.mark.skip(reason="fluxrs has no unsqueeze (Flux moved it to MLUtils.jl); numpy's expand_dims does it")
def test_unsqueeze():
    pass


# test/utils.jl, testset "Stacking"
def test_stacking():
    x = np.random.randn(3, 3).astype(np.float32)
    stacked = fx.stack([x, x], axis=1)
    assert stacked.shape == (3, 2, 3)

    stacked_array = np.array([[8, 9, 3, 5], [9, 6, 6, 9], [9, 1, 7, 2], [7, 4, 10, 6]])
    unstacked_array = [[8, 9, 9, 7], [9, 6, 1, 4], [3, 6, 7, 10], [5, 9, 2, 6]]
    # unstack is left out: fluxrs has none (Flux moved it to MLUtils.jl); list(a) or
    # np.moveaxis do it in numpy
    assert same(fx.stack([np.array(u) for u in unstacked_array], axis=1), stacked_array)


# test/utils.jl, testset "Batching"
def test_batching():
    stacked_array = np.array([[8, 9, 3, 5],
                              [9, 6, 6, 9],
                              [9, 1, 7, 2],
                              [7, 4, 10, 6]])
    unstacked_array = [[8, 9, 9, 7], [9, 6, 1, 4], [3, 6, 7, 10], [5, 9, 2, 6]]
    # batch-first: observations are rows here, Flux's columns
    assert [u.tolist() for u in fx.unbatch(stacked_array.T)] == unstacked_array
    assert same(fx.batch(unstacked_array), stacked_array.T)

    # no-op for vector of non-arrays
    assert list(fx.batch([1, 2, 3])) == [1, 2, 3]
    assert list(fx.unbatch([1, 2, 3])) == [1, 2, 3]

    # generic iterable
    assert same(fx.batch(np.ones(2) for i in range(3)), np.ones((3, 2)))
    assert all(same(u, np.ones(2)) for u in fx.unbatch(np.ones((3, 2)))) and len(fx.unbatch(np.ones((3, 2)))) == 3


# ---------------------------------------------------------------- Param remapping, destructure

def ls(*dims):  # accepts dims in reverse order to Dense
    """Flux's reshape(collect(Float32, 1:prod(dims)), dims...), column-major like Julia's."""
    return np.arange(1, math.prod(dims) + 1, dtype=np.float32).reshape(dims, order="F")


def dl(nin, nout, bias):
    return fx.Dense(ls(nout, nin), bias(nout))


def dm(bias):
    return fx.Chain(dl(3, 5, bias), dl(5, 4, bias), dl(4, 3, bias))


def nobias(n):
    return False


def zeros(n):
    return np.zeros(n, np.float32)


def check_dense(m, bt):  # Flux: testdense
    for l1, l2 in zip(m, dm(bt)):
        assert same(l1.weight, l2.weight)
        assert (l1.bias is None and l2.bias is None) or same(l1.bias, l2.bias)


# test/utils.jl, testset "Param remapping" > "loadparams!"
@pytest.mark.skip(reason="fluxrs has no loadparams! (Flux's implicit-parameter API, deprecated there); "
                         "fx.loadmodel_ replaces it, see tests/flux/test_loading.py")
def test_param_remapping_loadparams():
    pass


# test/utils.jl, testset "Param remapping" > "destructure" > "Bias type $bt"
@pytest.mark.parametrize("bt", [zeros, nobias], ids=lambda f: f.__name__)
def test_param_remapping_destructure_bias_type(bt):
    m = dm(bt)
    p, re = fx.destructure(m)
    check_dense(re(p), bt)


# test/utils.jl, testset "Param remapping" > "destructure" > "restructure in gradient"
def test_param_remapping_destructure_restructure_in_gradient():
    x = np.random.rand(1, 3).astype(np.float32)  # Flux: rand(Float32, 3, 1), batch-first here
    m = dm(zeros)
    gm = fx.gradient(lambda m: m(x).sum(), m)[0]
    p, re = fx.destructure(m)
    gp = fx.gradient(lambda t: re(t)(x).sum(), p)[0]
    np.testing.assert_allclose(gp.numpy(), fx.destructure(gm)[0].numpy(), rtol=1e-6)


# test/utils.jl, testset "loadparams! & absent bias"
@pytest.mark.skip(reason="fluxrs has no loadparams!; the same checks for fx.loadmodel_ are in "
                         "tests/flux/test_loading.py::test_loadmodel_absent_bias")
def test_loadparams_absent_bias():
    pass


# ---------------------------------------------------------------- modes, modules

# test/utils.jl, testset "Train and test mode"
def test_train_and_test_mode():
    # Flux adds a method to testmode!; in fluxrs a layer joins in by marking its class modal
    # and reading its `active` (False in test mode, True in training mode)
    class DummyLayer:
        __fluxrs_modal__ = True

        def __init__(self, testing):
            self.active = not testing

        @property
        def testing(self):
            return self.active is False

        def __call__(self, x):  # fluxrs's Chain checks that its layers are callable
            return x

    c = fx.Chain(DummyLayer(True))
    fx.testmode_(c)
    assert c[0].testing
    fx.trainmode_(c)
    assert not c[0].testing


# test/utils.jl, testset "modules"
def test_modules():
    # Flux's modules also lists the tuple of a Chain's or Parallel's layers (fluxrs walks
    # through containers without listing them), and Flux's LayerNorm holds its scale and bias
    # in a `diag::Scale` layer (fluxrs's holds them itself): the counts below subtract those
    m1 = fx.Conv((2, 3), (4, 5), pad=6, stride=7)
    m2 = fx.LayerNorm(8)
    m4 = fx.SkipConnection(m1, lambda a, b: a + b)
    m5 = fx.Chain(m4, m2)
    modules = fx.modules(m5)
    # Depth-first descent
    assert len(modules) == 6 - 1 - 1  # the tuple of layers, LayerNorm's diag
    assert modules[0] is m5
    assert modules[1] is m4
    assert modules[2] is m1
    assert modules[3] is m2

    mod_par = fx.modules(fx.Parallel(fx.Bilinear((2, 2), 2, np.cbrt), fx.Dense(2, 2, abs), fx.Dense(2, 2, np.square)))
    assert len(mod_par) == 5 - 1  # the tuple of layers

    mod_rnn = fx.modules(fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3), fx.LSTM(3, 4)))
    assert len(mod_rnn) == 6 - 1  # the tuple of layers
    assert isinstance(mod_rnn[-1], fx.LSTMCell)

    mod_skip = fx.modules(fx.Chain(fx.SkipConnection(fx.Conv((2, 3), (4, 5), pad=6, stride=7), lambda a, b: a + b),
                                   fx.LayerNorm(8)))
    assert len(mod_skip) == 6 - 1 - 1  # the tuple of layers, LayerNorm's diag
    assert isinstance(mod_skip[-1], fx.LayerNorm)  # Flux: isa Flux.Diagonal, LayerNorm's child


# test/utils.jl, testset "Patience triggers" (patience, early stopping, plateau)
@pytest.mark.skip(reason="fluxrs has no Flux.patience / early_stopping / plateau closures; it has the "
                         "callbacks fx.callbacks.EarlyStopping and ReduceLROnPlateau for fx.epochs instead")
def test_patience_triggers():
    pass


# ---------------------------------------------------------------- Various destructure bugs

# test/utils.jl, testset "Various destructure bugs", first subtestset (a layer the model never calls)
def test_various_destructure_bugs_unused_layer():
    class TwoDenses(fx.Layer):
        def __init__(self, dense, dense2):
            self.dense, self.dense2 = dense, dense2

        def __call__(self, x):
            return self.dense(x)

    model = TwoDenses(fx.Dense(3, 1), fx.Dense(3, 2))
    p, re = fx.destructure(model)

    x = np.array([1.0, 2.0, 3.0], np.float32)
    y, back = fx.pullback(lambda x, p: re(p)(x), x, p)

    dy = fx.tensor([4.0])
    dx, dp = back(dy)
    assert len(p) == len(dp)


# test/utils.jl, testset "Various destructure bugs", second subtestset (BatchNorm)
def test_various_destructure_bugs_batchnorm():
    p, re = fx.destructure(fx.BatchNorm(3))  # 6 parameters, plus 6 non-trainable
    assert len(p) == 6

    x = np.random.rand(4, 3).astype(np.float32)  # Flux: rand(Float32, 3, 4)
    y, back = fx.pullback(lambda x, p: re(p)(x).reshape(-1), x, p)
    b = back(y)

    assert b[0].shape == x.shape
    assert b[1].shape == p.shape


# test/utils.jl, testset "Various destructure bugs", third subtestset (a layer shared twice)
def test_various_destructure_bugs_shared_layer():
    class Model(fx.Layer):
        def __init__(self, a, b):
            self.a, self.b = a, b

        def __call__(self, x):
            return self.a(x) + self.b(x)

    d = fx.Dense(1, 1)
    x = np.random.rand(1, 1).astype(np.float32)

    # Sharing the parameters
    model = Model(d, d)

    # Works
    g1 = fx.gradient(lambda: model(x).sum(), fx.params(model))

    p, re = fx.destructure(model)
    # Fails
    g2 = fx.gradient(lambda p: re(p)(x).sum(), p)

    np.testing.assert_allclose(g2[0].numpy(), np.concatenate([g1[d.weight].numpy().ravel(), g1[d.bias].numpy()]),
                               rtol=1e-6)


# test/utils.jl, testset "Various destructure bugs", fourth subtestset (a layer returning a tuple)
def test_various_destructure_bugs_split_outputs():
    class Split(fx.Layer):
        def __init__(self, *paths):
            self.paths = paths

        def __call__(self, x):
            return tuple(f(x) for f in self.paths)

    n_input, n_batch, n_shared = 5, 13, 11
    n_outputs = [3, 7]

    data = np.random.rand(n_batch, n_input)
    model = fx.f64(fx.Chain(fx.Dense(n_input, n_shared),
                            Split(fx.Dense(n_shared, n_outputs[0]), fx.Dense(n_shared, n_outputs[1]))))

    pvec, re = fx.destructure(model)

    def loss(x, idx, pv):  # loss wrt `idx`th output term
        return (re(pv)(x)[idx] ** 2).sum()

    # Flux compares with ForwardDiff's gradient; Python has no forward mode here, so
    # central differences in float64 stand in for it
    pv = pvec.numpy()
    eps = 1e-6
    g = np.empty_like(pv)
    for i in range(pv.size):
        e = np.zeros_like(pv)
        e[i] = eps
        g[i] = (float(loss(data, 0, fx.tensor(pv + e, dtype="float64")))
                - float(loss(data, 0, fx.tensor(pv - e, dtype="float64")))) / (2 * eps)
    np.testing.assert_allclose(g, fx.gradient(lambda p: loss(data, 0, p), pvec)[0].numpy(), rtol=1e-5, atol=1e-6)
