"""Normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm): Flux's documented
numbers, values against numpy references written here, running statistics, train/test mode,
and gradients against central finite differences in float64."""

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import check_gradients, f64

EPS = 1e-5


def np_norm(x, axes, eps=EPS):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased, as Flux normalises
    return (x - mean) / np.sqrt(var + eps)


def np_flux_normalise(x, axes, eps=EPS):
    """Flux's normalise, which its LayerNorm is: (x - μ) / (σ + eps)."""
    return (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + eps)


def chan(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


# ---------------------------------------------------------------- Flux's documented numbers

def test_batchnorm_flux_documented_example():
    bn = fx.BatchNorm(2)
    x = fx.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # 3 samples, 2 channels
    y = fx.trainmode_(bn)(x).numpy()
    np.testing.assert_allclose(y, [[-1.2247, -1.2247], [0, 0], [1.2247, 1.2247]], atol=1e-4)
    np.testing.assert_allclose(bn.running_mean.numpy(), [0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), [1.3, 1.3], rtol=1e-6)


def test_batchnorm_params_and_repr_as_the_implicit_training_page():
    bn = fx.BatchNorm(2, relu := fx.relu)
    assert repr(bn) == "BatchNorm(2, relu)  # 4 parameters, plus 4 non-trainable"
    assert bn.act is relu
    ps = fx.params(bn)  # only the trainable parameters: Params([Float32[0.0, 0.0], Float32[1.0, 1.0]])
    assert [p.tolist() for p in ps] == [[0.0, 0.0], [1.0, 1.0]] and ps[0].dtype == np.float32
    assert ps[0] is bn.bias and ps[1] is bn.scale
    bn = fx.BatchNorm(2)
    assert repr(bn) == "BatchNorm(2)  # 4 parameters, plus 4 non-trainable"
    assert repr(fx.BatchNorm(3, fx.relu)) == "BatchNorm(3, relu)  # 6 parameters, plus 6 non-trainable"
    assert repr(fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3))) == \
        "Chain(Dense(2 => 3), BatchNorm(3))  # 15 parameters, plus 6 non-trainable"
    assert fx.layers.param_count(bn) == (4, 4)
    # the optimiser sees only the trainable ones
    st = fx.setup(fx.Adam(), bn)
    assert set(vars(st)) == {"bias", "scale"} and st.scale is not None
    assert bn.β is bn.bias and bn.γ is bn.scale and bn.μ is bn.running_mean and bn.σ2 is bn.running_var


# ---------------------------------------------------------------- BatchNorm vs numpy

@pytest.mark.parametrize("shape", [(8, 3), (5, 3, 7), (4, 3, 5, 6)])
def test_batchnorm_training_and_test_mode_match_numpy(shape):
    rng = np.random.default_rng(0)
    bn = fx.f64(fx.BatchNorm(3, momentum=0.2))
    bn.scale.assign_(f64(rng.normal(size=3)))
    bn.bias.assign_(f64(rng.normal(size=3)))
    g, b = bn.scale.numpy().copy(), bn.bias.numpy().copy()
    axes = (0,) + tuple(range(2, len(shape)))
    mu, var = np.zeros(3), np.ones(3)
    fx.trainmode_(bn)
    for step in range(3):
        x = rng.normal(loc=step, scale=2.0, size=shape)
        got = bn(f64(x)).numpy()
        want = np_norm(x, axes) * chan(g, x.ndim) + chan(b, x.ndim)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        m = x.size // 3
        mu = 0.8 * mu + 0.2 * x.mean(axis=axes)
        var = 0.8 * var + 0.2 * x.var(axis=axes) * m / (m - 1)
        np.testing.assert_allclose(bn.running_mean.numpy(), mu, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)
    fx.testmode_(bn)
    x = rng.normal(size=shape)
    got = bn(f64(x)).numpy()
    want = (x - chan(mu, x.ndim)) / np.sqrt(chan(var, x.ndim) + EPS) * chan(g, x.ndim) + chan(b, x.ndim)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), mu, rtol=1e-12)  # test mode leaves them alone


def test_batchnorm_without_tracking_or_affine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2, 3))
    bn = fx.f64(fx.BatchNorm(2, affine=False, track_stats=False))
    assert bn.running_mean is None and bn.scale is None and len(fx.params(bn)) == 0
    assert repr(bn) == "BatchNorm(2, affine=False, track_stats=False)"
    for mode in (True, False):  # without running statistics both modes use the batch's
        fx.trainmode_(bn, mode)
        np.testing.assert_allclose(bn(f64(x)).numpy(), np_norm(x, (0, 2)), rtol=1e-10, atol=1e-12)


def test_batchnorm_activation_and_eps():
    x = np.random.default_rng(2).normal(size=(5, 4))
    bn = fx.f64(fx.BatchNorm(4, fx.relu, eps=0.1, active=True))
    np.testing.assert_allclose(bn(f64(x)).numpy(), np.maximum(np_norm(x, (0,), eps=0.1), 0), rtol=1e-10, atol=1e-12)


def test_batchnorm_is_automatic_inside_gradient():
    bn = fx.BatchNorm(2)
    x = fx.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = bn(x)  # outside gradient: test mode, running stats (0, 1)
    np.testing.assert_allclose(y.numpy(), x.numpy() / np.sqrt(1 + EPS), rtol=1e-6)
    assert bn.running_mean.tolist() == [0.0, 0.0]
    g = fx.gradient(lambda m: (m(x) * fx.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])).sum(), bn)[0]
    np.testing.assert_allclose(bn.running_mean.numpy(), [0.3, 0.4], rtol=1e-6)  # updated: training mode
    assert g.scale is not None and g.bias is not None
    assert g.running_mean is None and g.running_var is None  # not part of the graph
    assert not bn.running_mean.is_tracked and not bn.running_var.is_tracked


def test_running_stats_never_chain_graphs_across_steps():
    fx.seed_(0)
    m = fx.Chain(fx.Dense(3, 4), fx.BatchNorm(4), fx.relu, fx.Dense(4, 1))
    opt = fx.setup(fx.Adam(0.01), m)
    x = fx.randn(16, 3)
    for _ in range(5):
        g = fx.gradient(lambda m: (m(x) ** 2).mean(), m)[0]
        fx.update_(opt, m, g)
        assert not m[1].running_mean.is_tracked and m[1].running_mean.op is None
        assert not m[1].running_var.is_tracked and m[1].running_var.op is None


def test_batchnorm_errors_name_the_layer_and_shapes():
    bn = fx.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) expects input \(N, 3, \.\.\.\).*got \(4, 2\)"):
        bn(fx.ones(4, 2))
    with pytest.raises(ValueError, match="more than one value per channel"):
        fx.trainmode_(bn)(fx.ones(1, 3))
    with pytest.raises(ValueError, match="number of channels"):
        fx.BatchNorm(0)
    with pytest.raises(ValueError, match="momentum"):
        fx.BatchNorm(2, momentum=2.0)


def test_batchnorm_f64_conversion_converts_running_stats():
    bn = fx.f64(fx.BatchNorm(2))
    assert bn.running_mean.dtype == np.float64 and bn.scale.dtype == np.float64
    assert bn(np.ones((3, 2))).dtype == np.float64


# ---------------------------------------------------------------- the other normalisations

@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 6)])
def test_layernorm_matches_numpy(shape):
    rng = np.random.default_rng(3)
    ln = fx.f64(fx.LayerNorm(6))
    ln.scale.assign_(f64(rng.normal(size=6)))
    ln.bias.assign_(f64(rng.normal(size=6)))
    x = rng.normal(size=shape)
    want = np_flux_normalise(x, (-1,)) * ln.scale.numpy() + ln.bias.numpy()
    np.testing.assert_allclose(ln(f64(x)).numpy(), want, rtol=1e-10, atol=1e-12)
    # same in both modes: LayerNorm has no running statistics
    np.testing.assert_allclose(fx.gradient(lambda: ln(f64(x)).sum() * 0, fx.params(ln))[ln.scale].numpy(), 0)


def test_layernorm_over_several_axes_and_repr():
    rng = np.random.default_rng(4)
    ln = fx.f64(fx.LayerNorm(3, 4, fx.tanh))
    x = rng.normal(size=(2, 3, 4))
    np.testing.assert_allclose(ln(f64(x)).numpy(), np.tanh(np_flux_normalise(x, (1, 2))), rtol=1e-10, atol=1e-12)
    assert repr(fx.LayerNorm(5)) == "LayerNorm(5)  # 10 parameters"
    assert repr(fx.LayerNorm((3, 4), fx.relu)) == "LayerNorm(3, 4, relu)  # 24 parameters"
    assert repr(fx.LayerNorm(5, affine=False)) == "LayerNorm(5, affine=False)"
    with pytest.raises(ValueError, match=r"last 2 axes have shape \(3, 4\), got \(2, 4, 3\)"):
        ln(np.ones((2, 4, 3)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layernorm_and_normalise_gradients_are_finite_on_a_constant_slice(dtype):
    """σ = 0 (a constant row, e.g. padding) gives zero output and a finite gradient, not NaN."""
    ln = fx.LayerNorm(3) if dtype == "float32" else fx.f64(fx.LayerNorm(3))
    x = fx.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]], dtype=dtype)
    w = fx.tensor([[1.0, -2.0, 0.5], [1.0, 2.0, 3.0]], dtype=dtype)
    for f in (lambda x: ln(x), lambda x: fx.normalise(x, dims=1)):
        np.testing.assert_array_equal(f(x).numpy()[0], 0)
        g = fx.gradient(lambda x: (f(x) * w).sum(), x)[0].numpy()
        assert np.isfinite(g).all(), g


@pytest.mark.parametrize("shape", [(3, 6, 5), (2, 6, 3, 4)])
def test_groupnorm_matches_numpy(shape):
    rng = np.random.default_rng(5)
    gn = fx.f64(fx.GroupNorm(6, 3))
    gn.scale.assign_(f64(rng.normal(size=6)))
    gn.bias.assign_(f64(rng.normal(size=6)))
    x = rng.normal(size=shape)
    xg = x.reshape((shape[0], 3, 2) + shape[2:])
    want = np_norm(xg, tuple(range(2, xg.ndim))).reshape(shape)
    want = want * chan(gn.scale.numpy(), x.ndim) + chan(gn.bias.numpy(), x.ndim)
    np.testing.assert_allclose(gn(f64(x)).numpy(), want, rtol=1e-10, atol=1e-12)
    assert repr(fx.GroupNorm(6, 3)) == "GroupNorm(6, 3)  # 12 parameters"
    with pytest.raises(ValueError, match="divisible"):
        fx.GroupNorm(6, 4)


def test_instancenorm_matches_numpy_and_tracks_stats():
    rng = np.random.default_rng(6)
    x = rng.normal(loc=1.0, size=(4, 3, 5))
    inorm = fx.f64(fx.InstanceNorm(3))
    assert len(fx.params(inorm)) == 0 and repr(inorm) == "InstanceNorm(3)"
    np.testing.assert_allclose(inorm(f64(x)).numpy(), np_norm(x, (2,)), rtol=1e-10, atol=1e-12)
    tr = fx.f64(fx.InstanceNorm(3, affine=True, track_stats=True, active=True))
    assert repr(tr) == "InstanceNorm(3, affine=True, track_stats=True, active=True)  # 6 parameters, plus 6 non-trainable"
    tr(f64(x))
    np.testing.assert_allclose(tr.running_mean.numpy(), 0.1 * x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(tr.running_var.numpy(), 0.9 + 0.1 * (x.var(axis=2) * 5 / 4).mean(axis=0), rtol=1e-12)
    fx.testmode_(tr)
    want = (x - chan(tr.running_mean.numpy(), 3)) / np.sqrt(chan(tr.running_var.numpy(), 3) + EPS)
    np.testing.assert_allclose(tr(f64(x)).numpy(), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least one spatial axis"):
        inorm(np.ones((2, 3), dtype=np.float32))


# ---------------------------------------------------------------- gradients

def _randomise(layer, rng):
    for p in fx.params(layer):
        p.assign_(f64(rng.normal(size=tuple(p.shape))))


@pytest.mark.parametrize("make,shape", [
    (lambda: fx.BatchNorm(3, fx.tanh, active=True), (5, 3)),
    (lambda: fx.BatchNorm(3, active=True), (4, 3, 2)),
    (lambda: fx.BatchNorm(3, active=False), (4, 3, 2)),
    (lambda: fx.LayerNorm(4), (3, 4)),
    (lambda: fx.LayerNorm(2, 3, fx.σ), (2, 2, 3)),
    (lambda: fx.GroupNorm(4, 2), (3, 4, 3)),
    (lambda: fx.InstanceNorm(2, affine=True), (3, 2, 4)),
])
def test_normalisation_gradients_match_finite_differences(make, shape):
    rng = np.random.default_rng(7)
    layer = fx.f64(make())
    _randomise(layer, rng)
    if getattr(layer, "running_var", None) is not None:
        layer.running_mean.assign_(f64(rng.normal(size=3)))
        layer.running_var.assign_(f64(rng.random(3) + 0.5))
    x = f64(rng.normal(size=shape))
    check_gradients(lambda: layer(x), layer, x, rtol=1e-5, atol=1e-7)


def test_instancenorm_tracking_stats_refuses_an_empty_batch():
    m = fx.trainmode_(fx.InstanceNorm(3, track_stats=True))
    with pytest.raises(ValueError, match=r"needs at least one sample .* got input of shape \(0, 3, 4\)"):
        m(np.zeros((0, 3, 4), np.float32))
    # the running statistics were left as they were, not averaged over no samples
    np.testing.assert_array_equal(m.running_mean.numpy(), np.zeros(3, np.float32))
    np.testing.assert_array_equal(m.running_var.numpy(), np.ones(3, np.float32))
