"""Flux's own tests of the recurrent layers, translated: Flux.jl test/layers/recurrent.jl
(the Flux 0.16 API: cells step, `RNN(in => out)` takes whole sequences, no hidden state).

Layout: Flux's ``(features, batch)`` step is ``(batch, features)`` here, its sequence
``(features, time, batch)`` is ``(batch, time, features)``. Flux's ``test_gradients``
(Zygote against finite differences, in Float64) is `check_gradients` on an `fx.f64` copy.
"""

import numpy as np
import pytest

import fluxrs as fx
from gradcheck import check_gradients, f64

rng = np.random.default_rng(0)


def rand32(*shape):
    return fx.tensor(rng.random(shape).astype(np.float32))


def randn32(*shape):
    return fx.tensor(rng.standard_normal(shape).astype(np.float32))


def as64(t):
    return f64(t.numpy())


def mean(t):
    return t.mean()


# Flux's four losses, one per way of writing the loop (a for loop, a comprehension, splatting,
# vcat then stack); they exercise different differentiation paths in Zygote.
def cell_loss1(r, x, state):
    for x_t in x:
        _, state = r(x_t, state)
    return mean(state[0] if isinstance(state, tuple) else state)


def cell_loss2(r, x, state):
    y = [r(x_t, state)[0] for x_t in x]
    return sum(mean(y_t) for y_t in y)


def cell_loss3(r, x, state):
    y = []
    for x_t in x:
        y_t, state = r(x_t, state)
        y = [*y, y_t]
    return sum(mean(y_t) for y_t in y)


def cell_loss4(r, x, state):
    y = []
    for x_t in x:
        y_t, state = r(x_t, state)
        y = y + [y_t]
    y = fx.stack(y, -2)  # Flux's stack(y, dims=2): [D, L, B] is (B, L, D) here
    return (y ** 2).mean()


def test_gradients(model, *args, loss=None):
    """Flux's test_gradients: the loss's gradient with respect to the model's parameters and
    to every tensor argument, in float64, against central finite differences."""
    m = fx.f64(model)
    args = [[as64(a) for a in x] if isinstance(x, list) else
            tuple(as64(a) for a in x) if isinstance(x, tuple) else as64(x) for x in args]
    leaves = []
    for a in args:
        leaves.extend(a if isinstance(a, (list, tuple)) else [a])
    if loss is None:
        return check_gradients(lambda: m(*args), m, *leaves)
    return check_gradients(lambda: loss(m, *args), m, *leaves)


test_gradients.__test__ = False  # a helper, not a test


# test/layers/recurrent.jl, @testset "RNNCell"
def test_rnncell():
    r = fx.RNNCell((3, 5))
    assert len(fx.trainables(r)) == 3
    # An input sequence of length 6 and batch size 4.
    x = [rand32(4, 3) for _ in range(6)]

    # Initial State is a single vector
    h = randn32(5)
    test_gradients(r, x, h, loss=cell_loss1)  # for loop
    test_gradients(r, x, h, loss=cell_loss2)  # comprehension
    test_gradients(r, x, h, loss=cell_loss3)  # splat
    test_gradients(r, x, h, loss=cell_loss4)  # vcat and stack

    # initial states are zero
    np.testing.assert_allclose(r.initialstates().numpy(), np.zeros(5, np.float32))

    # no initial state same as zero initial state
    out, state = r(x[0])
    assert out is state
    np.testing.assert_allclose(out.numpy(), r(x[0], fx.zeros(5))[0].numpy(), rtol=1e-6)

    # Now initial state has a batch dimension.
    h = randn32(4, 5)
    test_gradients(r, x, h, loss=cell_loss4)

    # The input sequence has no batch dimension.
    x = [rand32(3) for _ in range(6)]
    h = randn32(5)
    test_gradients(r, x, h, loss=cell_loss4)

    # No Bias
    r = fx.RNNCell((3, 5), bias=False)
    assert len(fx.trainables(r)) == 2
    test_gradients(r, x, h, loss=cell_loss4)


class ModelRNN(fx.Layer):
    """Flux's ModelRNN (and ModelGRU): a sequence layer and a trainable initial state h0 (out,)."""

    def __init__(self, rnn, h0):
        self.rnn = rnn
        self.h0 = h0

    def __call__(self, x):
        return self.rnn(x, self.h0)


class ModelLSTM(fx.Layer):
    def __init__(self, lstm, h0, c0):
        self.lstm = lstm
        self.h0 = h0
        self.c0 = c0

    def __call__(self, x):
        return self.lstm(x, (self.h0, self.c0))


# test/layers/recurrent.jl, @testset "RNN"
def test_rnn():
    model = ModelRNN(fx.RNN((2, 4)), fx.zeros(4))

    x = rand32(1, 3, 2)
    y = model(x)
    assert y.ndim == 3 and y.dtype == np.float32
    assert y.shape == (1, 3, 4)
    test_gradients(model, x)

    rnn = model.rnn
    # initial states are zero
    np.testing.assert_allclose(rnn.initialstates().numpy(), np.zeros(4, np.float32))

    # no initial state same as zero initial state
    np.testing.assert_allclose(rnn(x).numpy(), rnn(x, fx.zeros(4)).numpy(), rtol=1e-6)

    x = rand32(3, 2)
    y = model(x)
    assert y.ndim == 2 and y.dtype == np.float32
    assert y.shape == (3, 4)
    test_gradients(model, x)


# test/layers/recurrent.jl, @testset "LSTMCell"
def test_lstmcell():
    cell = fx.LSTMCell((3, 5))
    assert len(fx.trainables(cell)) == 3
    x = [rand32(4, 3) for _ in range(6)]
    h = fx.zeros(4, 5)
    c = fx.zeros(4, 5)
    out, state = cell(x[0], (h, c))
    hnew, cnew = state
    assert out is hnew
    assert hnew.ndim == 2 and hnew.dtype == np.float32
    assert cnew.ndim == 2 and cnew.dtype == np.float32
    assert hnew.shape == (4, 5)
    assert cnew.shape == (4, 5)
    test_gradients(cell, x[0], (h, c), loss=lambda m, x, hc: mean(m(x, hc)[0]))
    test_gradients(cell, x, (h, c), loss=cell_loss4)

    # initial states are zero
    h0, c0 = cell.initialstates()
    np.testing.assert_allclose(h0.numpy(), np.zeros(5, np.float32))
    np.testing.assert_allclose(c0.numpy(), np.zeros(5, np.float32))

    # no initial state same as zero initial state
    _, (hnew1, cnew1) = cell(x[0])
    _, (hnew2, cnew2) = cell(x[0], (fx.zeros(5), fx.zeros(5)))
    np.testing.assert_allclose(hnew1.numpy(), hnew2.numpy(), rtol=1e-6)
    np.testing.assert_allclose(cnew1.numpy(), cnew2.numpy(), rtol=1e-6)

    # no bias
    cell = fx.LSTMCell((3, 5), bias=False)
    assert len(fx.trainables(cell)) == 2


# test/layers/recurrent.jl, @testset "LSTM"
def test_lstm():
    model = ModelLSTM(fx.LSTM((2, 4)), fx.zeros(4), fx.zeros(4))

    x = rand32(1, 3, 2)
    h = model(x)
    assert h.ndim == 3 and h.dtype == np.float32
    assert h.shape == (1, 3, 4)
    test_gradients(model, x)

    x = rand32(3, 2)
    h = model(x)
    assert h.ndim == 2 and h.dtype == np.float32
    assert h.shape == (3, 4)
    # Flux's m(x)[1], the first element: feature 1 at time 1
    test_gradients(model, x, loss=lambda m, x: mean(m(x)[0, 0]))

    # test default initial states
    lstm = model.lstm
    h = lstm(x)
    assert h.ndim == 2 and h.dtype == np.float32
    assert h.shape == (3, 4)

    # initial states are zero
    h0, c0 = lstm.initialstates()
    np.testing.assert_allclose(h0.numpy(), np.zeros(4, np.float32))
    np.testing.assert_allclose(c0.numpy(), np.zeros(4, np.float32))

    # no initial state same as zero initial state
    h1 = lstm(x, (fx.zeros(4), fx.zeros(4)))
    np.testing.assert_allclose(h.numpy(), h1.numpy(), rtol=1e-6)


# test/layers/recurrent.jl, @testset "GRUCell"
def test_grucell():
    r = fx.GRUCell((3, 5))
    assert len(fx.trainables(r)) == 3
    # An input sequence of length 6 and batch size 4.
    x = [rand32(4, 3) for _ in range(6)]

    # Initial State is a single vector
    h = randn32(5)
    out, state = r(x[0], h)
    assert out is state
    test_gradients(r, x, h, loss=cell_loss4)

    # initial states are zero
    np.testing.assert_allclose(r.initialstates().numpy(), np.zeros(5, np.float32))

    # no initial state same as zero initial state
    np.testing.assert_allclose(r(x[0])[0].numpy(), r(x[0], fx.zeros(5))[0].numpy(), rtol=1e-6)

    # Now initial state has a batch dimension.
    h = randn32(4, 5)
    test_gradients(r, x, h, loss=cell_loss4)

    # The input sequence has no batch dimension.
    x = [rand32(3) for _ in range(6)]
    h = randn32(5)
    test_gradients(r, x, h, loss=cell_loss4)

    # No Bias
    r = fx.GRUCell((3, 5), bias=False)
    assert len(fx.trainables(r)) == 2


# test/layers/recurrent.jl, @testset "GRU"
def test_gru():
    model = ModelRNN(fx.GRU((2, 4)), fx.zeros(4))

    x = rand32(1, 3, 2)
    y = model(x)
    assert y.ndim == 3 and y.dtype == np.float32
    assert y.shape == (1, 3, 4)
    test_gradients(model, x)

    gru = model.rnn
    # initial states are zero
    np.testing.assert_allclose(gru.initialstates().numpy(), np.zeros(4, np.float32))

    # no initial state same as zero initial state
    np.testing.assert_allclose(gru(x).numpy(), gru(x, fx.zeros(4)).numpy(), rtol=1e-6)

    # No Bias
    gru = fx.GRU((2, 4), bias=False)
    assert len(fx.trainables(gru)) == 2
    test_gradients(gru, x)


# test/layers/recurrent.jl, @testset "GRUv3Cell"
@pytest.mark.skip(reason="fluxrs has no GRUv3Cell (Flux's GRU variant v3, reset gate before the recurrent product)")
def test_gruv3cell():
    pass


# test/layers/recurrent.jl, @testset "GRUv3"
@pytest.mark.skip(reason="fluxrs has no GRUv3 (Flux's GRU variant v3, reset gate before the recurrent product)")
def test_gruv3():
    pass


# test/layers/recurrent.jl, @testset "Recurrence"
def test_recurrence():
    x = rand32(4, 3, 2)
    for rnn in [fx.RNN((2, 3)), fx.LSTM((2, 3)), fx.GRU((2, 3))]:
        cell = rnn.cell
        rec = fx.Recurrence(cell)
        np.testing.assert_allclose(rec(x).numpy(), rnn(x).numpy(), rtol=1e-6)
