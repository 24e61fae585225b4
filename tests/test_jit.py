"""fx.jit: a loss recorded once and replayed gives the eager numbers, records again when it
must, and refuses (once, with a warning, then running eagerly) what a replay would get wrong."""

import warnings

import numpy as np
import pytest

import fluxrs as fx


def _data(n=4, batch=6, shape=(5,)):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((batch,) + shape).astype(np.float32),
             rng.standard_normal((batch, 2)).astype(np.float32)) for _ in range(n)]


def _model():
    fx.seed_(1)
    return fx.Chain(fx.Dense(5, 8, fx.tanh), fx.Dense(8, 2))


def _custom(loss, data, model=None):
    m = model or _model()
    opt = fx.setup(fx.Adam(0.05), m)
    vals = []
    for x, y in data:
        val, g = fx.withgradient(lambda m: loss(m, x, y), m)
        vals.append(val)
        fx.update_(opt, m, g[0])
    return m, vals


def _loss(m, x, y):
    return fx.mse(m(x), y)


def test_replays_give_the_eager_losses_and_parameters_bitwise():
    data = _data()
    eager, ev = _custom(_loss, data)
    jl = fx.jit(_loss)
    fast, fv = _custom(jl, data)
    assert (jl.recorded, jl.replayed) == (1, 3)
    assert fv == ev
    for a, b in zip(fx.params(fast), fx.params(eager)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_numpy_and_tensor_data_and_the_implicit_style_and_train():
    data = _data()
    want, _ = _custom(_loss, data)
    jl = fx.jit(_loss)
    m = _model()
    fx.train_(jl, m, data, fx.setup(fx.Adam(0.05), m))  # train_ calls the loss inside its gradient
    for a, b in zip(fx.params(m), fx.params(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m2, ps, rule = _model(), None, fx.Adam(0.05)
    ps = fx.params(m2)
    jl2 = fx.jit(_loss)
    for x, y in data:
        gs = fx.gradient(lambda: jl2(m2, fx.tensor(x), fx.tensor(y)), ps)
        fx.update_(rule, ps, gs)
    assert jl2.replayed == 3
    for a, b in zip(ps, fx.params(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_new_shapes_static_values_and_model_edits_record_again():
    jl = fx.jit(lambda m, x, y, k: fx.mse(m(x), y) * k)
    m = _model()
    (x, y), = _data(1)
    g = lambda k, x=x, y=y: fx.gradient(lambda m: jl(m, x, y, k), m)[0]
    a = g(1.0)
    assert jl.recorded == 1
    b = g(2.0)  # a static argument is part of what was recorded: a new value records again
    assert jl.recorded == 2
    np.testing.assert_allclose(np.asarray(b.layers[0].weight), 2 * np.asarray(a.layers[0].weight), rtol=1e-6)
    fx.gradient(lambda m: jl(m, x[:3], y[:3], 1.0), m)  # a smaller batch
    assert jl.recorded == 3
    m[0].act = fx.relu  # the model changed: its ops differ, so it records again
    got = fx.gradient(lambda m: jl(m, x, y, 1.0), m)[0]
    assert jl.recorded == 4
    want = fx.gradient(lambda m: fx.mse(m(x), y), m)[0]
    np.testing.assert_array_equal(np.asarray(got.layers[0].weight), np.asarray(want.layers[0].weight))


def test_outside_a_gradient_it_is_the_loss():
    jl = fx.jit(_loss)
    (x, y), = _data(1)
    m = _model()
    assert float(jl(m, x, y)) == float(_loss(m, x, y))
    assert jl.recorded == 0


@pytest.mark.parametrize("case", ["reads a value", "batchnorm", "integer labels", "random mask"])
def test_refuses_what_a_replay_would_get_wrong_once_and_trains_eagerly(case):
    (x, y), = _data(1)
    m = _model()
    if case == "reads a value":
        loss = lambda m, x, y: fx.mse(m(x), y) * (1.0 if float(m(x).sum()) > 0 else 2.0)
        match = "reads tensor values"
    elif case == "batchnorm":
        m = fx.Chain(fx.Dense(5, 2), fx.BatchNorm(2))
        loss = _loss
        match = "running statistics"
    elif case == "integer labels":
        y = np.arange(6) % 2
        loss = lambda m, x, y: fx.logitcrossentropy(m(x), fx.onehotbatch(y, [0, 1]))
        match = "numpy array of int"
    else:
        m = fx.Chain(fx.Dense(5, 8), fx.Dropout(0.5), fx.Dense(8, 2))
        loss = _loss
        match = "freeze it"
    jl = fx.jit(loss)
    with pytest.warns(UserWarning, match=match):
        g1 = fx.gradient(lambda m: jl(m, x, y), m)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        fx.gradient(lambda m: jl(m, x, y), m)
    assert jl.recorded == 0 and g1 is not None
    if case in ("reads a value", "integer labels"):  # deterministic: the eager gradient itself
        want = fx.gradient(lambda m: loss(m, x, y), m)[0]
        np.testing.assert_array_equal(np.asarray(g1.layers[0].weight), np.asarray(want.layers[0].weight))


def test_not_a_function():
    with pytest.raises(TypeError, match="must be a function"):
        fx.jit(3)
