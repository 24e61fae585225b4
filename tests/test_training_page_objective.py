"""Flux's oldest Training page: ``train!(objective, data, opt)`` with the rule bound to
``params(m)``, translated line by line.

Flux                                    fluxrs
Flux.train!(objective, data, opt)       fx.train_(objective, data, opt), opt bound to params(m)
params(m)                               fx.params(m)
Iterators.repeated((x, y), 3)           itertools.repeat((x, y), 3)
Flux.throttle(f, timeout)               fx.throttle(f, timeout)
"""

import itertools

import numpy as np
import pytest

import fluxrs as fx


@pytest.fixture
def model():
    fx.seed_(0)
    return fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)


def test_train_objective_data_opt(model):
    # "With these we can call Flux.train!: Flux.train!(objective, data, opt)"
    m = model
    x, y = np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)
    objective = lambda x, y: fx.mse(m(x), y)
    data = [(x, y)]
    opt = fx.Descent(0.1, fx.params(m))
    before = float(objective(x, y))
    fx.train_(objective, data, opt)
    assert float(objective(x, y)) < before


def test_builtin_cost_functions():
    # "Flux has several of these built in, like mse ... or crossentropy ..."
    yhat = fx.tensor([[0.2, 0.8], [0.6, 0.4]])
    y = fx.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(fx.mse(yhat, y)) == pytest.approx((0.2 ** 2 + 0.2 ** 2 + 0.4 ** 2 + 0.4 ** 2) / 4, rel=1e-6)
    assert float(fx.crossentropy(yhat, y)) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2, rel=1e-5)
    # "... but you can calculate it however you want"
    custom = lambda yhat, y: ((yhat - y) ** 2).sum()
    assert float(custom(yhat, y)) == pytest.approx(0.4, rel=1e-6)


def test_params_are_references_not_copies(model):
    # "The second argument ... must be an object containing those parameters ... params(m).
    #  Such an object contains a reference to the model's parameters, not a copy"
    m = model
    ps = fx.params(m)
    assert len(ps) == 4 and ps[0] is m[0].weight and ps[3] is m[1].bias
    w = m[0].weight.numpy().copy()
    x, y = np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)
    fx.train_(lambda x, y: fx.mse(m(x), y), [(x, y)], fx.Descent(0.1, ps))
    # after training, the model behaves according to the updated values
    assert not np.array_equal(m[0].weight.numpy(), w)
    assert ps[0] is m[0].weight


def test_train_calls_loss_for_each_datapoint(model):
    # "Flux.train! will call loss(x, y), calculate gradients, update the weights and then
    #  move on to the next data point"
    m = model
    x, y = np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)
    calls = []

    def loss(x, y):
        calls.append((x.shape, y.shape))
        return fx.mse(m(x), y)

    opt = fx.Descent(0.1, fx.params(m))
    # "We can train the model on the same data three times"
    fx.train_(loss, [(x, y), (x, y), (x, y)], opt)
    assert calls == [((784,), (10,))] * 3
    # "Or equivalently: data = Iterators.repeated((x, y), 3)"
    fx.train_(loss, itertools.repeat((x, y), 3), opt)
    assert len(calls) == 6


def test_zip_xs_ys(model):
    # "It's common to load the xs and ys separately. In this case you can use zip"
    m = model
    xs = [np.random.rand(784), np.random.rand(784), np.random.rand(784)]
    ys = [np.random.rand(10), np.random.rand(10), np.random.rand(10)]
    seen = []
    loss = lambda x, y: seen.append(1) or fx.mse(m(x), fx.tensor(y))
    fx.train_(loss, zip(xs, ys), fx.Descent(0.1, fx.params(m)))
    assert len(seen) == 3


def test_callbacks_are_throttled(model, capsys):
    # "Callbacks are called for every batch ... throttle(f, timeout) prevents f from being
    #  called more than once every timeout seconds."
    m = model
    x, y = np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)
    loss = lambda x, y: fx.mse(m(x), y)
    test_x, test_y = np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)
    evalcb = lambda: print("loss(test_x, test_y) =", float(loss(test_x, test_y)))
    fx.train_(loss, itertools.repeat((x, y), 20), fx.Descent(0.1, fx.params(m)), cb=fx.throttle(evalcb, 5))
    out = capsys.readouterr().out
    assert out.count("loss(test_x, test_y) =") == 1  # 20 fast batches, one call in 5 seconds
