"""Flux's Training page of Flux 0.13, the implicit style (``Params``), translated line by line.

Flux                                              fluxrs
grads = Flux.gradient(parameters) do ... end      grads = fx.gradient(lambda: ..., parameters)
Flux.Optimise.update!(opt, parameters, grads)     fx.update_(opt, parameters, grads)
train!(loss, pars::Params, data, opt; cb)         fx.train_(loss, pars, data, opt, cb=...)
Flux.params(m)                                    fx.params(m)
Dense(784 => 32, σ)                               fx.Dense((784, 32), fx.σ)
Flux.Losses.mse                                   fx.losses.mse
ncycle([(x, y)], 3)                               fx.ncycle([(x, y)], 3)
DataLoader((X, Y), batchsize=128), X 28×28×60000  fx.DataLoader((X, Y), batchsize=128), X (60000, 28, 28)
Flux.stop()                                       fx.stop()
Zygote.pullback(() -> loss(d...), ps)             fx.pullback(lambda: loss(*d), ps)
"""

import logging
import math

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import losses


def make_model():
    fx.seed_(2)
    return fx.Chain(
        fx.Dense((784, 32), fx.σ),
        fx.Dense((32, 10)), fx.softmax)


def sample():
    return np.random.rand(784).astype(np.float32), np.random.rand(10).astype(np.float32)


def test_the_loop_train_is_made_of():
    # for d in datapoints
    #   grads = Flux.gradient(parameters) do loss(d...) end
    #   Flux.Optimise.update!(opt, parameters, grads)
    m = make_model()
    loss = lambda x, y: losses.mse(m(x), y)
    parameters = fx.params(m)
    opt = fx.Descent(0.1)
    datapoints = [sample() for _ in range(3)]
    w = m[0].weight.numpy().copy()
    for d in datapoints:
        grads = fx.gradient(lambda: loss(*d), parameters)
        assert isinstance(grads, fx.Grads) and grads[m[0].weight].shape == (32, 784)
        fx.update_(opt, parameters, grads)
    assert not np.array_equal(m[0].weight.numpy(), w)


def test_train_implicit_gradient_of_tuple_and_non_tuple_datapoints():
    # gradient(() -> loss(d...), pars)  # if d isa Tuple
    # gradient(() -> loss(d), pars)     # otherwise
    m = make_model()
    ps = fx.params(m)
    got = []
    fx.train_(lambda x, y: got.append("tuple") or losses.mse(m(x), y), ps, [sample()], fx.Descent())
    fx.train_(lambda d: got.append("one") or losses.mse(m(d["x"]), d["y"]), ps,
              [{"x": sample()[0], "y": sample()[1]}], fx.Descent())
    assert got == ["tuple", "one"]


def test_train_only_some_layers():
    # train!(loss, params(model[1:end-2]), data, opt): all but the last two layers
    model = fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 16, fx.relu), fx.Dense(16, 10), fx.softmax)
    ps = fx.params(model[:-2])
    assert len(ps) == 4
    frozen = model[2].weight.numpy().copy()
    trained = model[0].weight.numpy().copy()
    fx.train_(lambda x, y: losses.mse(model(x), y), ps, [sample()] * 2, fx.Descent(1.0))
    np.testing.assert_array_equal(model[2].weight.numpy(), frozen)
    assert not np.array_equal(model[0].weight.numpy(), trained)


def test_optimisers_combine():
    # "Different optimisers can be combined using Flux.Optimise.Optimiser"
    m = make_model()
    opt = fx.Optimiser(fx.WeightDecay(1e-4), fx.Descent(0.1))
    loss = lambda x, y: losses.mse(m(x), y)
    x, y = sample()
    before = float(loss(x, y))
    fx.train_(loss, fx.params(m), [(x, y)] * 5, opt)
    assert float(loss(x, y)) < before


def test_callbacks_throttle_stop_and_lists(capsys):
    m = make_model()
    loss = lambda x, y: losses.mse(m(x), y)
    params = fx.params(m)
    data = [sample()] * 10
    opt = fx.Descent(0.1)
    # train!(loss, params, data, opt, cb = throttle(() -> println("training"), 10))
    fx.train_(loss, params, data, opt, cb=fx.throttle(lambda: print("training"), 10))
    assert capsys.readouterr().out == "training\n"
    # "The callback can call Flux.stop to interrupt the training loop."
    n = []
    fx.train_(loss, params, data, opt, cb=lambda: n.append(1) or (len(n) == 4 and fx.stop()))
    assert len(n) == 4
    # "Multiple callbacks can be passed to cb as array."
    a, b = [], []
    fx.train_(loss, params, data, opt, cb=[lambda: a.append(1), lambda: b.append(1)])
    assert len(a) == len(b) == 10


def test_loss_in_terms_of_the_model():
    m = fx.Chain(
        fx.Dense((784, 32), fx.σ),
        fx.Dense((32, 10)), fx.softmax)
    loss = lambda x, y: fx.losses.mse(m(x), y)
    ps = fx.params(m)
    # later
    x, y = sample()
    data = [(x, y)] * 5
    opt = fx.Descent(0.1)
    before = float(loss(x, y))
    fx.train_(loss, ps, data, opt)
    assert float(loss(x, y)) < before


def test_params_reference_not_copy_and_the_docstring_examples():
    m = make_model()
    ps = fx.params(m)
    assert all(p is q for p, q in zip(ps, [m[0].weight, m[0].bias, m[1].weight, m[1].bias]))
    # params(Chain(Dense(ones(2,3)), softmax))  # unpacks Flux models
    ps = fx.params(fx.Chain(fx.Dense(np.ones((2, 3))), fx.softmax))
    assert [p.tolist() for p in ps] == [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [0.0, 0.0]]
    # Flux prints the values; shapes and the count read better for a model of any size
    assert repr(ps) == "Params([(2, 3), (2,)])  # 8 parameters"
    # (BatchNorm's "4 parameters, plus 4 non-trainable" lives in test_layers_norm.py; the
    # trainable-only rule is checked here with a layer that declares its trainable fields.)

    class Norm(fx.Layer):
        def __init__(self, n):
            self.shift, self.scale = fx.zeros(n), fx.ones(n)
            self.mean, self.var = fx.zeros(n), fx.ones(n)

        def trainable(self):
            return ("shift", "scale")

    assert [p.tolist() for p in fx.params(Norm(2))] == [[0.0, 0.0], [1.0, 1.0]]
    # params([1, 2, 3], [4])  # one or more arrays of numbers
    assert [p.tolist() for p in fx.params([1, 2, 3], [4])] == [[1, 2, 3], [4]]
    # params([[1, 2, 3], [4]])  # unpacks array of arrays
    assert [p.tolist() for p in fx.params([[1, 2, 3], [4]])] == [[1, 2, 3], [4]]
    # params(1, [2 2], (alpha=[3,3,3], beta=Ref(4), gamma=sin))  # ignores scalars, unpacks NamedTuples
    ps = fx.params(1, np.array([[2, 2]]), {"alpha": [3, 3, 3], "beta": 4, "gamma": math.sin})
    assert [p.tolist() for p in ps] == [[[2, 2]], [3, 3, 3]]


def test_datasets_ncycle_zip_dataloader():
    m = make_model()
    loss = lambda x, y: losses.mse(m(x), y)
    ps, opt = fx.params(m), fx.Descent(0.1)
    calls = []
    counted = lambda x, y: calls.append(1) or loss(x, y)
    x = np.random.rand(784)
    y = np.random.rand(10)
    data = [(x, y)]
    fx.train_(counted, ps, data, opt)
    data = [(x, y), (x, y), (x, y)]
    fx.train_(counted, ps, data, opt)
    data = fx.ncycle([(x, y)], 3)  # using IterTools: ncycle
    fx.train_(counted, ps, data, opt)
    xs = [np.random.rand(784), np.random.rand(784), np.random.rand(784)]
    ys = [np.random.rand(10), np.random.rand(10), np.random.rand(10)]
    data = zip(xs, ys)
    fx.train_(counted, ps, data, opt)
    assert len(calls) == 10
    # X = rand(28, 28, 60000); Y = rand(0:9, 60000); data = DataLoader((X, Y), batchsize=128)
    X = np.random.rand(60000, 28, 28).astype(np.float32)
    Y = np.random.randint(0, 10, 60000)
    data = fx.DataLoader((X, Y), batchsize=128)
    assert len(data) == 469
    x1, y1 = next(iter(data))
    assert x1.shape == (128, 28, 28) and y1.shape == (128,)


def test_epochs(caplog):
    with caplog.at_level(logging.INFO, logger="fluxrs"):
        for _ in fx.epochs(2):
            print("hello")
    assert [r.getMessage() for r in caplog.records] == ["Epoch 1", "Epoch 2"]


def test_typical_callback_and_stop_on_accuracy():
    # evalcb() = @show(loss(test_x, test_y)); throttled_cb = throttle(evalcb, 5)
    # Flux.@epochs 20 Flux.train!(objective, ps, data, opt, cb = throttled_cb)
    # cb = function () accuracy() > 0.9 && Flux.stop() end
    fx.seed_(5)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(256, 784)).astype(np.float32)
    labels = (X[:, :10]).argmax(axis=1)
    Y = fx.onehotbatch(labels, range(10)).numpy()
    m = fx.Chain(fx.Dense(784, 32, fx.relu), fx.Dense(32, 10), fx.softmax)
    objective = lambda x, y: fx.crossentropy(m(x), y)
    ps = fx.params(m)
    opt = fx.Adam(0.01)
    data = fx.DataLoader((X, Y), batchsize=32, shuffle=True)
    test_x, test_y = X[:64], Y[:64]
    shown = []
    throttled_cb = fx.throttle(lambda: shown.append(float(objective(test_x, test_y))), 5)
    accuracy = lambda: float((fx.onecold(m(X)) == labels).mean())
    stops = []

    def cb():
        throttled_cb()
        if accuracy() > 0.9:
            stops.append(1)
            fx.stop()

    epochs_run = 0
    for _ in fx.epochs(20):
        epochs_run += 1
        fx.train_(objective, ps, data, opt, cb=cb)
        if stops:
            break
    assert stops and accuracy() > 0.9 and epochs_run < 20
    assert len(shown) == 1  # throttled: all of this takes well under 5 s


def test_custom_training_loop_with_gradient():
    # function my_custom_train!(loss, ps, data, opt)
    #   local training_loss; ps = Params(ps)
    #   for d in data
    #     gs = gradient(ps) do
    #       training_loss = loss(d...)
    #       return training_loss
    #     end
    #     update!(opt, ps, gs)
    m = make_model()
    logged = []

    def my_custom_train_(loss, ps, data, opt):
        training_loss = None
        ps = fx.Params(ps)
        for d in data:
            def f():
                nonlocal training_loss
                training_loss = loss(*d)
                return training_loss
            gs = fx.gradient(f, ps)
            logged.append(float(training_loss))  # logging_callback(training_loss)
            fx.update_(opt, ps, gs)

    x, y = sample()
    my_custom_train_(lambda x, y: losses.mse(m(x), y), fx.params(m), [(x, y)] * 10, fx.Descent(0.5))
    assert len(logged) == 10 and logged[-1] < logged[0]


def test_custom_training_loop_with_pullback():
    #     train_loss, back = Zygote.pullback(() -> loss(d...), ps)
    #     gs = back(one(train_loss))
    #     update!(opt, ps, gs)
    m = make_model()
    logged = []

    def my_custom_train_(loss, ps, data, opt):
        ps = fx.Params(ps)
        for d in data:
            train_loss, back = fx.pullback(lambda: loss(*d), ps)
            logged.append(train_loss)
            gs = back(1.0)
            assert isinstance(gs, fx.Grads)
            fx.update_(opt, ps, gs)

    x, y = sample()
    loss = lambda x, y: losses.mse(m(x), y)
    # back(1.0) gives the same gradient as gradient()
    ps = fx.params(m)
    l, back = fx.pullback(lambda: loss(x, y), ps)
    g1, g2 = back(1.0), fx.gradient(lambda: loss(x, y), ps)
    for p in ps:
        np.testing.assert_allclose(g1[p].numpy(), g2[p].numpy(), rtol=1e-6)
    my_custom_train_(loss, fx.params(m), [(x, y)] * 10, fx.Descent(0.5))
    assert isinstance(logged[0], float) and logged[-1] < logged[0]
