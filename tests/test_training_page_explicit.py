"""Flux's Training page of Flux 0.14, the explicit style, translated line by line.

Flux                                              fluxrs
grads = Flux.gradient(model) do m ... end         grads = fx.gradient(lambda m: ..., model)
grads[1]                                          grads[0]
Flux.update!(opt, model, grads[1])                fx.update_(opt, model, grads[0])
train!(model, train_set, opt) do m, x, y ... end  fx.train_(lambda m, x, y: ..., model, train_set, opt)
Flux.setup(Adam(0.001), model)                    fx.setup(fx.Adam(0.001), model)
fmap(model, grads[1]) do p, g ... end             fx.fmap(lambda p, g: ..., model, grads[0])
withgradient                                      fx.withgradient
X = rand(28, 28, 60_000)                          X = np.random.rand(60_000, 28, 28)  (batch-first)
"""

import logging
import math
import warnings

import numpy as np
import pytest

import fluxrs as fx


def flatten(x):
    # (28, 28) -> (784,), (N, 28, 28) -> (N, 784)
    return x.reshape(*x.shape[:-2], 784)


def make_model():
    fx.seed_(3)
    return fx.Chain(flatten, fx.Dense(784, 32, fx.relu), fx.Dense(32, 10))


def loss(result, label):
    return fx.logitcrossentropy(result, label)


def image_set(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 28, 28), dtype=np.float32)
    labels = X[:, 0, :10].argmax(axis=1)  # a learnable label
    return X, fx.onehotbatch(labels, range(10)).numpy(), labels


def test_the_loop_is_precisely_how_training_is_done():
    model = make_model()
    X, Y, _ = image_set(64)
    train_set = list(zip(X, Y))[:8]  # (image, label) tuples
    opt = fx.setup(fx.Adam(0.001), model)
    w = model[1].weight.numpy().copy()
    losses_seen = []
    for data in train_set:
        # Unpack this datapoint into the input and the desired result
        input, label = data
        # Calculate the gradient of the objective with respect to the parameters
        grads = fx.gradient(lambda m: loss(m(input), label), model)
        # do-block form: a named function of m
        def objective(m):
            result = m(input)
            return loss(result, label)
        grads2 = fx.gradient(objective, model)
        np.testing.assert_allclose(grads[0].layers[1].weight.numpy(), grads2[0].layers[1].weight.numpy())
        losses_seen.append(float(objective(model)))
        # Update the parameters so as to reduce the objective
        fx.update_(opt, model, grads[0])
    assert not np.array_equal(model[1].weight.numpy(), w)


def test_train_do_block_form():
    model = make_model()
    X, Y, labels = image_set(256)
    train_set = fx.DataLoader((X, Y), batchsize=32, shuffle=True)
    opt = fx.setup(fx.Adam(0.01), model)
    before = float(loss(model(X), Y))
    for _ in range(5):
        fx.train_(lambda m, x, y: loss(m(x), y), model, train_set, opt)
    assert float(loss(model(X), Y)) < 0.7 * before


def test_gradient_returns_one_entry_per_argument():
    # Flux.gradient(f, a, b) always calls f(a, b), and returns a tuple (∂f_∂a, ∂f_∂b)
    f = lambda a, b: (a * b).sum()
    a, b = fx.tensor([1.0, 2.0]), fx.tensor([3.0, 4.0])
    da, db = fx.gradient(f, a, b)
    assert da.tolist() == [3.0, 4.0] and db.tolist() == [1.0, 2.0]
    # with a one-argument function, grads is a tuple with one element
    model = make_model()
    input, label = image_set(1)[0][0], image_set(1)[1][0]
    grads = fx.gradient(lambda m: loss(m(input), label), model)
    assert isinstance(grads, tuple) and len(grads) == 1


def test_grads_mirror_the_model_tree():
    model = make_model()
    X, Y, _ = image_set(4)
    grads = fx.gradient(lambda m: loss(m(X), Y), model)
    g = grads[0]
    assert isinstance(g, fx.Struct)
    assert g.layers[0] is None                     # the flatten function: nothing to differentiate
    assert g.layers[1].weight.shape == (32, 784)   # a similarly nested set of NamedTuples
    assert g.layers[1].bias.shape == (32,)
    assert g.layers[2].weight.shape == model[2].weight.shape
    assert g.layers[1].act is None


def test_implicit_note():
    # pars = Flux.params(model); grad = Flux.gradient(() -> loss(model(input), label), pars)
    model = make_model()
    X, Y, _ = image_set(4)
    input, label = X, Y
    pars = fx.params(model)
    grad = fx.gradient(lambda: loss(model(input), label), pars)
    assert isinstance(pars, fx.Params) and isinstance(grad, fx.Grads)
    explicit = fx.gradient(lambda m: loss(m(input), label), model)[0]
    np.testing.assert_allclose(grad[model[1].weight].numpy(), explicit.layers[1].weight.numpy(), rtol=1e-6)


def test_loss_functions():
    # loss(y_hat, y) = sum((y_hat .- y).^2)
    def loss2(y_hat, y):
        return ((y_hat - y) ** 2).sum()

    model = make_model()
    X, Y, _ = image_set(4)
    grads = fx.gradient(lambda m: loss2(m(X), Y), model)
    assert grads[0].layers[2].bias.shape == (10,)
    # mse and crossentropy are available from the Flux.Losses module
    assert float(fx.losses.mse(fx.tensor([1.0, 2.0]), fx.tensor([1.0, 4.0]))) == pytest.approx(2.0)
    p = fx.tensor([[0.25, 0.75]])
    assert float(fx.losses.crossentropy(p, fx.tensor([[0.0, 1.0]]))) == pytest.approx(-math.log(0.75), rel=1e-5)
    # implicit-style loss closing over a global model still works with params
    loss3 = lambda x, y: ((model(x) - y) ** 2).sum()
    assert isinstance(fx.gradient(lambda: loss3(X, Y), fx.params(model)), fx.Grads)


def test_fmap_descent_by_hand_and_update_descent():
    model = make_model()
    X, Y, _ = image_set(4)
    grads = fx.gradient(lambda m: loss(m(X), Y), model)
    eta = 0.01  # learning rate
    w = model[1].weight.numpy().copy()
    g = grads[0].layers[1].weight.numpy()
    # fmap(model, grads[1]) do p, g; p .= p .- η .* g; end   (in place)
    fx.fmap(lambda p, g: p.assign_(p - eta * g), model, grads[0])
    np.testing.assert_allclose(model[1].weight.numpy(), w - eta * g, rtol=1e-6)
    # the pure form returns a new model, leaving this one alone
    new = fx.fmap(lambda p, g: p - eta * g, model, grads[0])
    np.testing.assert_allclose(new[1].weight.numpy(), w - 2 * eta * g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model[1].weight.numpy(), w - eta * g, rtol=1e-6)
    # Flux.update!(Descent(0.01), model, grads[1]) does the same as the fmap
    fx.update_(fx.Descent(0.01), model, grads[0])
    np.testing.assert_allclose(model[1].weight.numpy(), w - 2 * eta * g, rtol=1e-5, atol=1e-7)


def test_setup_once_then_update_in_the_loop():
    model = make_model()
    opt = fx.setup(fx.Adam(0.001), model)  # Initialise momentum
    assert opt.layers[1].weight.rule == fx.Adam(0.001)
    X, Y, _ = image_set(64)
    train_set = fx.DataLoader((X, Y), batchsize=16)
    for input, label in train_set:
        grads = fx.gradient(lambda m: loss(m(input), label), model)
        fx.update_(opt, model, grads[0])
    # the state has advanced four steps: β₁ · β₁⁴
    assert opt.layers[1].weight.state.scalars[0][0] == pytest.approx(0.9 ** 5)


def test_datasets():
    x = np.random.randn(28, 28)
    y = np.random.rand(10)
    data = [(x, y)]
    assert len(data) == 1
    data = [(x, y), (x, y), (x, y)]
    xs = [np.random.rand(28, 28), np.random.rand(28, 28), np.random.rand(28, 28)]
    ys = [np.random.rand(10), np.random.rand(10), np.random.rand(10)]
    data = zip(xs, ys)
    first = next(iter(data))
    assert isinstance(first, tuple) and first[0].shape == (28, 28) and first[1].shape == (10,)  # Tuple{Matrix, Vector}
    # X = rand(28, 28, 60_000); Y = rand(10, 60_000); data = zip(eachslice(X; dims=3), eachcol(Y))
    X = np.random.rand(60_000, 28, 28).astype(np.float32)
    Y = np.random.rand(60_000, 10).astype(np.float32)
    data = zip(X, Y)
    first = next(iter(data))
    assert first[0].shape == (28, 28) and first[1].shape == (10,)
    # data = Flux.DataLoader((X, Y), batchsize=32); x1, y1 = first(data)
    data = fx.DataLoader((X, Y), batchsize=32)
    x1, y1 = next(iter(data))
    assert x1.shape == (32, 28, 28)              # size(x1) == (28, 28, 32), batch-first
    assert y1.shape == (32, 10)
    assert len(data) == 1875 == 60_000 // 32     # length(data) == 1875 === 60_000 ÷ 32
    # "Flux's layers are set up to accept such a batch of input data"
    model = make_model()
    assert model(x1).shape == (32, 10)


def test_training_loops_train_and_implicit_train():
    model = make_model()
    X, Y, _ = image_set(64)
    train_set = fx.DataLoader((X, Y), batchsize=16)
    opt = fx.setup(fx.Adam(), model)
    fx.train_(lambda m, x, y: loss(m(x), y), model, train_set, opt)
    assert opt.layers[1].weight.state.scalars[0][0] == pytest.approx(0.9 ** 5)
    # train!((x,y) -> loss(model(x), y), Flux.params(model), train_set, Adam())
    w = model[2].weight.numpy().copy()
    fx.train_(lambda x, y: loss(model(x), y), fx.params(model), train_set, fx.Adam())
    assert not np.array_equal(model[2].weight.numpy(), w)


def test_nan_loss_raises_before_any_parameter_changes():
    model = make_model()
    X, Y, _ = image_set(8)
    bad = Y.copy()
    bad[0, 0] = np.nan
    opt = fx.setup(fx.Adam(), model)
    before = [p.numpy().copy() for p in fx.params(model)]
    with pytest.raises(fx.NonFiniteLossError, match="loss is nan on data item 0") as e:
        fx.train_(lambda m, x, y: loss(m(x), y), model, [(X, bad), (X, Y)], opt)
    assert e.value.index == 0
    for p, b in zip(fx.params(model), before):
        np.testing.assert_array_equal(p.numpy(), b)
    assert opt.layers[1].weight.state.scalars[0] == [0.9, 0.999]  # state untouched too


def test_the_real_training_loop(caplog):
    model = make_model()
    X, Y, labels = image_set(192, seed=4)
    Y[5, 3] = np.inf  # one bad item, to exercise the isfinite branch
    train_set = list(zip(np.split(X, 12), np.split(Y, 12)))
    opt = fx.setup(fx.Adam(0.01), model)

    def my_loss(result, label):
        return fx.logitcrossentropy(result, label)

    def my_accuracy(model, train_set):
        good = [(fx.onecold(model(x)) == fx.onecold(y)).mean() for x, y in train_set if np.isfinite(y).all()]
        return float(np.mean(good))

    log = []
    logger = logging.getLogger("test.training")
    stopped_after = None
    for epoch in range(1, 101):
        losses = []
        for i, data in enumerate(train_set):
            input, label = data
            val, grads = fx.withgradient(lambda m: my_loss(m(input), label), model)
            # Save the loss from the forward pass. (Done outside of gradient.)
            losses.append(val)
            # Detect loss of Inf or NaN. Print a warning, and then skip update!
            if not math.isfinite(val):
                logger.warning("loss is %s on item %d (epoch %d)", val, i, epoch)
                continue
            fx.update_(opt, model, grads[0])
        # Compute some accuracy, and save details to log
        acc = my_accuracy(model, train_set)
        log.append({"acc": acc, "losses": losses})
        # Stop training when some criterion is reached
        if acc > 0.95:
            stopped_after = epoch
            break
    assert stopped_after is not None and stopped_after < 100
    assert all(np.isfinite(p.numpy()).all() for p in fx.params(model))
    assert sum("loss is" in r.getMessage() for r in caplog.records) == stopped_after
    assert isinstance(log[0]["losses"][1], float)
