"""Recurrent layers (RNN, LSTM, GRU cells and sequence layers, Bidirectional): values against
numpy references written here, state handling, gradients against central finite
differences in float64, the fused sequence kernels against the cells run step by step
(values, gradients, compiled training, the cases they leave to the cells), and a small GRU
that learns a memory task."""

import warnings

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import _core
from gradcheck import check_gradients, f64, numeric_gradient


def sig(z):
    return 1 / (1 + np.exp(-z))


def np_rnn_cell(p, x, h, act=np.tanh):
    h = act(x @ p["Wi"].T + h @ p["Wh"].T + p["b"])
    return h, h


def np_lstm_cell(p, x, state):
    h, c = state
    g = x @ p["Wi"].T + h @ p["Wh"].T + p["b"]
    i, f, cc, o = np.split(g, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(cc)
    h = sig(o) * np.tanh(c)
    return h, (h, c)


def np_gru_cell(p, x, h):
    gx = x @ p["Wi"].T + p["b"]
    gh = h @ p["Wh"].T
    xr, xz, xn = np.split(gx, 3, axis=-1)
    hr, hz, hn = np.split(gh, 3, axis=-1)
    r, z = sig(xr + hr), sig(xz + hz)
    cand = np.tanh(xn + r * hn)
    h = (1 - z) * cand + z * h
    return h, h


def params_of(cell):
    return {"Wi": cell.Wi.numpy(), "Wh": cell.Wh.numpy(), "b": cell.bias.numpy()}


def randomise(layer, rng, scale=0.5):
    for p in fx.params(layer):
        p.assign_(fx.tensor(rng.normal(scale=scale, size=tuple(p.shape)), dtype=p.dtype.name))
    return layer


def np_sequence(step, p, x, state):
    outs = []
    for t in range(x.shape[1]):
        out, state = step(p, x[:, t], state)
        outs.append(out)
    return np.stack(outs, axis=1), state


# ---------------------------------------------------------------- cells

def test_cell_shapes_params_and_repr():
    assert repr(fx.RNNCell((3, 5))) == "RNNCell(3 => 5)  # 45 parameters"
    assert repr(fx.RNNCell(3, 5, fx.relu)) == "RNNCell(3 => 5, relu)  # 45 parameters"
    assert repr(fx.LSTMCell(3, 5)) == "LSTMCell(3 => 5)  # 180 parameters"
    assert repr(fx.GRUCell((3, 5))) == "GRUCell(3 => 5)  # 135 parameters"
    c = fx.LSTMCell(3, 5)
    assert c.Wi.shape == (20, 3) and c.Wh.shape == (20, 5) and c.bias.shape == (20,)
    assert [p.shape for p in fx.params(c)] == [(20, 3), (20, 5), (20,)]
    assert repr(fx.GRUCell(2, 3, bias=False)) == "GRUCell(2 => 3, bias=False)  # 45 parameters"


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cells_match_numpy(kind):
    rng = np.random.default_rng(0)
    make, ref = {"rnn": (fx.RNNCell, np_rnn_cell), "lstm": (fx.LSTMCell, np_lstm_cell),
                 "gru": (fx.GRUCell, np_gru_cell)}[kind]
    cell = randomise(fx.f64(make(3, 4)), rng)
    p = params_of(cell)
    x = rng.normal(size=(5, 3))
    state = (rng.normal(size=(5, 4)), rng.normal(size=(5, 4))) if kind == "lstm" else rng.normal(size=(5, 4))
    fx_state = tuple(f64(s) for s in state) if kind == "lstm" else f64(state)
    out, new = cell(f64(x), fx_state)
    want_out, want_state = ref(p, x, state)
    np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-12, atol=1e-12)
    if kind == "lstm":
        np.testing.assert_allclose(new[1].numpy(), want_state[1], rtol=1e-12, atol=1e-12)
    # default state is zeros; a single vector works too
    out0, _ = cell(f64(x[0]))
    zero = np.zeros(4)
    want0, _ = ref(p, x[0], (zero, zero) if kind == "lstm" else zero)
    np.testing.assert_allclose(out0.numpy(), want0, rtol=1e-12, atol=1e-12)
    assert out0.shape == (4,)


def test_cell_errors():
    cell = fx.GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"GRUCell\(3 => 4\) expects one time step \(N, 3\).*\(2, 5, 3\)"):
        cell(fx.ones(2, 5, 3))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4\).*got \(2, 3\)"):
        cell(fx.ones(2, 3), fx.ones(2, 3))
    with pytest.raises(TypeError, match=r"pair \(h, c\)"):
        fx.LSTMCell(3, 4)(fx.ones(2, 3), fx.ones(2, 4))
    with pytest.raises(TypeError, match="sizes"):
        fx.RNNCell(3)


# ---------------------------------------------------------------- sequence layers

@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_sequence_layers_match_numpy(kind):
    rng = np.random.default_rng(1)
    make, ref = {"rnn": (fx.RNN, np_rnn_cell), "lstm": (fx.LSTM, np_lstm_cell), "gru": (fx.GRU, np_gru_cell)}[kind]
    layer = randomise(fx.f64(make((3, 4))), rng)
    p = params_of(layer.cell)
    x = rng.normal(size=(2, 6, 3))
    zero = np.zeros((2, 4))
    init = (zero, zero) if kind == "lstm" else zero
    want, want_state = np_sequence(ref, p, x, init)
    y = layer(f64(x))
    assert y.shape == (2, 6, 4)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    # one unbatched sequence (T, in)
    y1 = layer(f64(x[1]))
    np.testing.assert_allclose(y1.numpy(), want[1], rtol=1e-12, atol=1e-12)
    # return_state, and continuing from a state equals running the whole sequence
    layer.return_state = True
    y_a, s_a = layer(f64(x[:, :4]))
    y_b, s_b = layer(f64(x[:, 4:]), s_a)
    np.testing.assert_allclose(np.concatenate([y_a.numpy(), y_b.numpy()], axis=1), want, rtol=1e-12, atol=1e-12)
    final = s_b[0] if kind == "lstm" else s_b
    np.testing.assert_allclose(final.numpy(), want[:, -1], rtol=1e-12, atol=1e-12)


def test_sequence_layer_repr_and_errors():
    assert repr(fx.RNN((3, 4))) == "RNN(3 => 4)  # 32 parameters"
    assert repr(fx.RNN(3, 4, fx.relu)) == "RNN(3 => 4, relu)  # 32 parameters"
    assert repr(fx.LSTM(3, 4, return_state=True)) == "LSTM(3 => 4, return_state=True)  # 128 parameters"
    assert repr(fx.Recurrence(fx.GRUCell(3, 4))) == "Recurrence(GRUCell(3 => 4))  # 96 parameters"
    with pytest.raises(ValueError, match=r"GRU\(3 => 4\) expects a batch of sequences \(N, T, 3\)"):
        fx.GRU(3, 4)(fx.ones(2, 5, 2))
    with pytest.raises(TypeError, match="cell must be"):
        fx.Recurrence(fx.Dense(2, 2))


def test_bidirectional_matches_numpy():
    rng = np.random.default_rng(2)
    fwd = randomise(fx.f64(fx.GRU(3, 4)), rng)
    bwd = randomise(fx.f64(fx.GRU(3, 2)), rng)
    m = fx.Bidirectional(fwd, bwd, return_state=True)
    x = rng.normal(size=(2, 5, 3))
    y, (sf, sb) = m(f64(x))
    yf, _ = np_sequence(np_gru_cell, params_of(fwd.cell), x, np.zeros((2, 4)))
    yb, _ = np_sequence(np_gru_cell, params_of(bwd.cell), x[:, ::-1], np.zeros((2, 2)))
    want = np.concatenate([yf, yb[:, ::-1]], axis=-1)
    assert y.shape == (2, 5, 6)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sb.numpy(), yb[:, -1], rtol=1e-12, atol=1e-12)
    # one layer given: a twin with fresh weights for the backward direction
    b2 = fx.Bidirectional(fx.LSTM(3, 4))
    assert repr(b2) == "Bidirectional(LSTM(3 => 4), LSTM(3 => 4))  # 256 parameters"
    assert not np.array_equal(b2.forward.cell.Wi.numpy(), b2.backward.cell.Wi.numpy())
    assert b2(fx.ones(2, 5, 3)).shape == (2, 5, 8)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("make", [
    lambda: fx.RNNCell(3, 2),
    lambda: fx.LSTMCell(3, 2),
    lambda: fx.GRUCell(3, 2),
])
def test_cell_gradients_match_finite_differences(make):
    rng = np.random.default_rng(3)
    cell = randomise(fx.f64(make()), rng)
    x = f64(rng.normal(size=(4, 3)))
    if isinstance(cell, fx.LSTMCell):
        h, c = f64(rng.normal(size=(4, 2))), f64(rng.normal(size=(4, 2)))
        check_gradients(lambda: (lambda o, s: (o, s[1]))(*cell(x, (h, c))), cell, x, h, c)
    else:
        h = f64(rng.normal(size=(4, 2)))
        check_gradients(lambda: cell(x, h)[0], cell, x, h)


@pytest.mark.parametrize("make", [
    lambda: fx.RNN(2, 3),
    lambda: fx.LSTM(2, 3),
    lambda: fx.GRU(2, 3),
    lambda: fx.Bidirectional(fx.GRU(2, 2), fx.RNN(2, 1)),
])
def test_sequence_gradients_match_finite_differences(make):
    rng = np.random.default_rng(4)
    layer = randomise(fx.f64(make()), rng)
    x = f64(rng.normal(size=(2, 4, 2)))
    check_gradients(lambda: layer(x), layer, x)


def test_stacked_gru_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    m = randomise(fx.f64(fx.Chain(fx.GRU(2, 3), fx.LSTM(3, 2), lambda y: y[:, -1])), rng)
    x = f64(rng.normal(size=(2, 3, 2)))
    check_gradients(lambda: m(x), m, x)


# ---------------------------------------------------------------- one state vector for a batch

def _state_pair(kind, make):
    return (make(), make()) if kind == "lstm" else make()


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_state_vector_is_broadcast_over_the_batch(kind):
    """A state of shape (out,) with a batch (N, in): every sequence starts from it, as Flux."""
    rng = np.random.default_rng(6)
    cell_t, seq_t = {"rnn": (fx.RNNCell, fx.RNN), "lstm": (fx.LSTMCell, fx.LSTM), "gru": (fx.GRUCell, fx.GRU)}[kind]
    vec = _state_pair(kind, lambda: rng.normal(size=4))
    tiled = tuple(np.tile(v, (5, 1)) for v in vec) if kind == "lstm" else np.tile(vec, (5, 1))
    as_t = (lambda s: tuple(f64(a) for a in s)) if kind == "lstm" else f64
    cell = randomise(fx.f64(cell_t(3, 4)), rng)
    x = f64(rng.normal(size=(5, 3)))
    out_v, _ = cell(x, as_t(vec))
    out_t, _ = cell(x, as_t(tiled))
    assert out_v.shape == (5, 4)
    np.testing.assert_allclose(out_v.numpy(), out_t.numpy(), rtol=1e-12, atol=1e-12)
    # sequence layers, the fused GRU kernel included, with and without a gradient being taken
    layer = randomise(fx.f64(seq_t(3, 4)), rng)
    xs = f64(rng.normal(size=(5, 6, 3)))
    want = layer(xs, as_t(tiled)).numpy()
    np.testing.assert_allclose(layer(xs, as_t(vec)).numpy(), want, rtol=1e-12, atol=1e-12)
    (val, _) = fx.withgradient(lambda m: m(xs, as_t(vec)).sum(), layer)
    np.testing.assert_allclose(val, want.sum(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_state_vector_gradient_matches_finite_differences(kind):
    """The gradient reaches a (out,) initial state through the broadcast (summed over the batch)."""
    rng = np.random.default_rng(7)
    seq_t = {"rnn": fx.RNN, "lstm": fx.LSTM, "gru": fx.GRU}[kind]
    layer = randomise(fx.f64(seq_t(2, 3)), rng)
    x = f64(rng.normal(size=(4, 5, 2)))
    state = _state_pair(kind, lambda: f64(rng.normal(size=3)))
    roots = state if kind == "lstm" else (state,)
    check_gradients(lambda: layer(x, state), layer, *roots)


def test_state_of_a_wrong_shape_names_the_shapes():
    with pytest.raises(ValueError, match=r"GRUCell\(3 => 4\): the state must have shape \(2, 4\) \(or \(4,\).*got \(3,\)"):
        fx.GRU(3, 4)(fx.ones(2, 5, 3), fx.ones(3))


# ---------------------------------------------------------------- fused sequence kernels

FUSED = {
    "rnn": lambda: fx.RNN(3, 4), "rnn-relu": lambda: fx.RNN(3, 4, fx.relu),
    "rnn-identity": lambda: fx.RNN(3, 4, fx.identity), "rnn-sigmoid": lambda: fx.RNN(3, 4, fx.sigmoid),
    "lstm": lambda: fx.LSTM(3, 4), "gru": lambda: fx.GRU(3, 4),
}


def _step_by_step(monkeypatch, layer):
    """The sequence layer's cell run step by step from now on, as where no kernel fits."""
    monkeypatch.setattr(type(layer.cell), "_fuses", lambda self: False)


def _as_state(kind, make):
    return (make(), make()) if kind == "lstm" else make()


def _outputs_and_gradients(layer, x, state):
    """The outputs and final state, and the gradient of a weighted sum of both w.r.t. every
    parameter, the input and the initial state."""
    seen = {}

    def loss(m, x, *s):
        s = None if not s else s if len(s) == 2 else s[0]  # none, (h, c), or h
        y, final = m(x, s)
        seen["y"], seen["final"] = y, final
        parts = [y] + (list(final) if isinstance(final, tuple) else [final])
        total = 0
        for k, p in enumerate(parts):
            w = np.random.default_rng(k).normal(size=tuple(p.shape)).astype(p.dtype.name)
            total = total + (p * w).sum()
        return total

    args = () if state is None else state if isinstance(state, tuple) else (state,)
    _, g = fx.withgradient(loss, layer, x, *args)
    final = seen["final"]
    values = [np.asarray(seen["y"])] + [np.asarray(f) for f in (final if isinstance(final, tuple) else (final,))]
    grads = [np.asarray(t) for t in fx.functor.leaves(g[0])] + [np.asarray(t) for t in g[1:]]
    return values, grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("kind", sorted(FUSED))
def test_fused_sequence_equals_step_by_step(kind, with_state, dtype, monkeypatch):
    """One Rust call for the whole sequence gives the outputs, the final state (an LSTM's
    (h, c)) and the gradients of every parameter, of the input and of the initial state that
    the cell run step by step gives."""
    rng = np.random.default_rng(10)
    fx.seed_(4)
    layer = FUSED[kind]()
    layer.return_state = True
    if dtype == "float64":
        layer = fx.f64(layer)
    randomise(layer, rng)
    tensor = (lambda a: fx.tensor(np.asarray(a, np.float32))) if dtype == "float32" else f64
    x = tensor(rng.normal(size=(5, 6, 3)))
    state = _as_state(kind.split("-")[0], lambda: tensor(rng.normal(size=(5, 4)))) if with_state else None
    calls = []
    kernel = type(layer.cell)._sequence
    monkeypatch.setattr(type(layer.cell), "_sequence", lambda self, *a: calls.append(1) or kernel(self, *a))
    fused = _outputs_and_gradients(layer, x, state)
    assert calls, "the fused kernel ran"
    _step_by_step(monkeypatch, layer)
    stepped = _outputs_and_gradients(layer, x, state)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(fused[0] + fused[1], stepped[0] + stepped[1], strict=True):
        assert a.dtype == np.dtype(dtype) and a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_fused_one_sequence_and_state_vector_equal_step_by_step(kind, monkeypatch):
    """An unbatched sequence (T, in) and a state vector (out,) shared by a batch take the
    kernel too, with the shapes the cell gives."""
    rng = np.random.default_rng(11)
    layer = randomise(fx.f64(FUSED[kind]()), rng)
    layer.return_state = True
    x1, xb = f64(rng.normal(size=(6, 3))), f64(rng.normal(size=(5, 6, 3)))
    vec = _as_state(kind, lambda: f64(rng.normal(size=4)))
    fused = [layer(x1), layer(x1, vec), layer(xb, vec)]
    _step_by_step(monkeypatch, layer)
    stepped = [layer(x1), layer(x1, vec), layer(xb, vec)]
    for (ya, sa), (yb, sb), state_shape in zip(fused, stepped, [(4,), (4,), (5, 4)], strict=True):
        assert ya.shape == yb.shape
        np.testing.assert_allclose(ya.numpy(), yb.numpy(), rtol=1e-12, atol=1e-12)
        for a, b in zip(sa if kind == "lstm" else (sa,), sb if kind == "lstm" else (sb,), strict=True):
            assert a.shape == b.shape == state_shape
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_compiled_training_of_fused_layers_equals_eager(kind):
    """train_(compile=True) and fx.jit record the fused op (its zero initial state made
    inside it) and replay it: the parameters after several steps are eager's."""
    make_layer = {"rnn": lambda: fx.RNN(2, 6), "lstm": lambda: fx.LSTM(2, 6), "gru": lambda: fx.GRU(2, 6)}[kind]

    def make():
        fx.seed_(5)
        return fx.Chain(make_layer(), lambda h: h[:, -1, :], fx.Dense(6, 3))

    rng = np.random.default_rng(12)
    data = [(rng.normal(size=(8, 7, 2)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32))
            for _ in range(5)]

    def loss(m, x, y):
        return fx.mse(m(x), y)

    eager, comp, jitted = make(), make(), make()
    fx.train_(loss, eager, data, fx.setup(fx.Adam(0.02), eager))
    jl = fx.jit(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing falls back to eager
        fx.train_(loss, comp, data, fx.setup(fx.Adam(0.02), comp), compile=True)
        fx.train_(jl, jitted, data, fx.setup(fx.Adam(0.02), jitted))
    assert (jl.recorded, jl.replayed) == (1, 4)
    for m in (comp, jitted):
        for a, b in zip(fx.params(m), fx.params(eager), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(fx.params(eager)[1]), np.asarray(fx.params(make())[1]))  # it trained


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_second_derivatives_run_step_by_step(kind):
    """Inside an outer gradient the layer runs the cell step by step (the kernel's backward
    is not differentiable): the gradient of a gradient matches finite differences of the
    first (fused) gradient."""
    rng = np.random.default_rng(13)
    layer = randomise(fx.f64({"rnn": fx.RNN, "lstm": fx.LSTM, "gru": fx.GRU}[kind](2, 3)), rng)
    x0 = rng.normal(size=(2, 4, 2))

    def inner(x):
        return fx.gradient(lambda z: (layer(z) ** 2).sum(), x)[0]

    def outer(x):
        return (inner(x) ** 2).sum()

    got = np.asarray(fx.gradient(outer, f64(x0))[0])
    want = numeric_gradient(lambda a: float(outer(f64(a))), x0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_fused_kernels_refuse_second_derivatives_and_bad_arguments():
    gx, wh = fx.zeros(2, 3, 16), fx.zeros(16, 4)
    with pytest.raises(ValueError, match="second derivatives through the fused lstm_sequence.*LSTM step by step"):
        fx.gradient(lambda g: fx.gradient(lambda z: _core.lstm_sequence(z, wh).sum(), g)[0].sum(), gx)
    with pytest.raises(ValueError, match="both initial states h0 and c0, or neither"):
        _core.lstm_sequence(gx, wh, fx.zeros(2, 4))
    with pytest.raises(ValueError, match=r"lstm_sequence: the recurrent weight must be \(4H, H\)"):
        _core.lstm_sequence(gx, fx.zeros(12, 4))
    with pytest.raises(ValueError, match='rnn_sequence: unsupported fused activation "gelu"'):
        _core.rnn_sequence(fx.zeros(2, 3, 4), fx.zeros(4, 4), None, "gelu")
    with pytest.raises(ValueError, match=r"rnn_sequence: the initial state must be \(2, 4\)"):
        _core.rnn_sequence(fx.zeros(2, 3, 4), fx.zeros(4, 4), fx.zeros(3, 4))


@pytest.mark.parametrize("act", [fx.leakyrelu, fx.elu, lambda z: z * 0.5], ids=["leakyrelu", "elu", "lambda"])
def test_rnn_with_an_activation_the_kernel_lacks_runs_step_by_step(act):
    rng = np.random.default_rng(14)
    layer = randomise(fx.f64(fx.RNN(3, 4, act)), rng)
    assert not layer.cell._fuses()
    x = rng.normal(size=(2, 5, 3))
    np_act = {fx.leakyrelu: lambda z: np.where(z > 0, z, 0.01 * z),
              fx.elu: lambda z: np.where(z > 0, z, np.expm1(z))}.get(act, lambda z: z * 0.5)
    want, _ = np_sequence(lambda p, x, h: np_rnn_cell(p, x, h, np_act), params_of(layer.cell), x, np.zeros((2, 4)))
    np.testing.assert_allclose(layer(f64(x)).numpy(), want, rtol=1e-12, atol=1e-12)
    check_gradients(lambda: layer(f64(x)), layer)


# ---------------------------------------------------------------- learning

def test_gru_learns_to_recall_the_first_element():
    """Output, after the last of 10 random ±1 inputs, the first one: needs memory."""
    fx.seed_(0)
    rng = np.random.default_rng(0)
    m = fx.Chain(fx.GRU(1, 8), lambda y: y[:, -1], fx.Dense(8, 1))
    opt = fx.setup(fx.Adam(0.02), m)
    losses = []
    for _ in range(200):
        x = rng.choice([-1.0, 1.0], size=(32, 10, 1)).astype(np.float32)
        y = x[:, 0, :]
        l, g = fx.withgradient(lambda m: ((m(x) - y) ** 2).mean(), m)
        fx.update_(opt, m, g[0])
        losses.append(l)
    assert losses[0] > 0.5
    assert np.mean(losses[-10:]) < 0.05, losses[-10:]
    x = rng.choice([-1.0, 1.0], size=(256, 10, 1)).astype(np.float32)
    assert np.mean(np.sign(m(x).numpy()) == x[:, 0, :]) == 1.0
