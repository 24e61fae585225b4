"""Flux's Training page of Flux ~0.5: ``loss(x, y)``, ``@epochs`` and callbacks, translated line
by line.

Flux                                            fluxrs
m = Chain(Dense(784, 32, σ), Dense(32, 10), softmax)
                                                fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)
loss(x, y) = Flux.mse(m(x), y)                  loss = lambda x, y: fx.mse(m(x), y)
Flux.train!(loss, data, opt)                    fx.train_(loss, data, opt), opt = fx.Descent(0.1, fx.params(m))
@epochs 2 Flux.train!(...)                      for _ in fx.epochs(2): fx.train_(...)
train!(objective, data, opt, cb = () -> println("training"))
                                                fx.train_(objective, data, opt, cb=lambda: print("training"))
"""

import itertools
import logging

import numpy as np
import pytest

import fluxrs as fx


@pytest.fixture
def setting():
    fx.seed_(1)
    m = fx.Chain(
        fx.Dense(784, 32, fx.σ),
        fx.Dense(32, 10), fx.softmax)

    def loss(x, y):
        return fx.mse(m(x), y)

    opt = fx.Descent(0.1, fx.params(m))
    return m, loss, opt


def test_model_and_objective(setting):
    m, loss, opt = setting
    assert repr(m) == "Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax)  # 25_450 parameters"
    x = np.random.rand(784)
    y = np.random.rand(10)
    out = m(x)
    assert out.shape == (10,) and float(out.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(loss(x, y)) == pytest.approx(np.mean((out.numpy() - y) ** 2), rel=1e-5)
    # later
    before = float(loss(x, y))
    fx.train_(loss, [(x, y)], opt)
    assert float(loss(x, y)) < before


def test_datasets(setting):
    m, loss, opt = setting
    x = np.random.rand(784)
    y = np.random.rand(10)
    data = [(x, y)]
    n = []
    counted = lambda x, y: n.append(1) or loss(x, y)
    fx.train_(counted, data, opt)
    assert len(n) == 1
    data = [(x, y), (x, y), (x, y)]
    fx.train_(counted, data, opt)
    data = itertools.repeat((x, y), 3)  # Iterators.repeated((x, y), 3)
    fx.train_(counted, data, opt)
    assert len(n) == 7
    xs = [np.random.rand(784), np.random.rand(784), np.random.rand(784)]
    ys = [np.random.rand(10), np.random.rand(10), np.random.rand(10)]
    data = zip(xs, ys)
    fx.train_(counted, data, opt)
    assert len(n) == 10


def test_train_loops_over_the_data_once_and_epochs(setting, caplog, capsys):
    # "by default, train! only loops over the data once (a single "epoch")"
    m, loss, opt = setting
    x, y = np.random.rand(784), np.random.rand(10)
    # @epochs 2 println("hello")
    with caplog.at_level(logging.INFO, logger="fluxrs"):
        for _ in fx.epochs(2):
            print("hello")
    assert [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2"]
    assert capsys.readouterr().out == "hello\nhello\n"
    # @epochs 2 Flux.train!(...)
    calls = []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fluxrs"):
        for _ in fx.epochs(2):
            fx.train_(lambda x, y: calls.append(1) or loss(x, y), [(x, y)], opt)
    assert len(calls) == 2 and [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2"]


def test_callbacks(setting, capsys):
    m, objective, opt = setting
    x, y = np.random.rand(784), np.random.rand(10)
    data = [(x, y)] * 3
    fx.train_(objective, data, opt, cb=lambda: print("training"))
    assert capsys.readouterr().out == "training\n" * 3
    # evalcb() = @show(loss(test_x, test_y)); train!(objective, data, opt, cb = throttle(evalcb, 5))
    test_x, test_y = np.random.rand(784), np.random.rand(10)
    shown = []
    evalcb = lambda: shown.append(float(objective(test_x, test_y)))
    fx.train_(objective, data * 10, opt, cb=fx.throttle(evalcb, 5))
    assert len(shown) == 1
