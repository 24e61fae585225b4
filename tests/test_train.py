"""train_ in all three styles, its callbacks and misuse errors, and the helpers
throttle / epochs / ncycle."""

import importlib
import itertools
import logging
import math
import threading
import time
import warnings

import numpy as np
import pytest

import fluxrs as fx
from fluxrs.optimise import StateMismatchError

_train_module = importlib.import_module("fluxrs.train")


def signal_data(n=512, seed=0):
    """Inputs with a learnable class: the label is the argmax of a fixed linear map."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 784)).astype(np.float32)
    T = rng.normal(size=(784, 10)).astype(np.float32)
    labels = (X @ T).argmax(axis=1)
    return X, fx.onehotbatch(labels, range(10)).numpy(), labels


def seed_model():
    return fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)


def test_seed_model_with_mse_really_learns_explicit_style():
    fx.seed_(0)
    X, Y, labels = signal_data()
    m = seed_model()
    loss = lambda m, x, y: fx.mse(m(x), y)
    before = float(loss(m, X, Y))
    opt = fx.setup(fx.Adam(0.01), m)
    data = fx.DataLoader((X, Y), batchsize=32, shuffle=True)
    for _ in range(10):
        fx.train_(loss, m, data, opt)
    after = float(loss(m, X, Y))
    assert after < 0.5 * before, (before, after)
    assert (fx.onecold(m(X)) == labels).mean() > 0.6  # chance is 0.1


def test_seed_model_with_mse_really_learns_implicit_style():
    fx.seed_(1)
    X, Y, _ = signal_data()
    m = seed_model()
    loss = lambda x, y: fx.mse(m(x), y)
    before = float(loss(X, Y))
    opt = fx.Momentum(0.5, 0.9)  # state kept inside the rule across epochs
    data = fx.DataLoader((X, Y), batchsize=16)
    for _ in fx.epochs(8):
        fx.train_(loss, fx.params(m), data, opt)
    assert float(loss(X, Y)) < 0.6 * before


def test_oldest_style_bound_rule():
    fx.seed_(2)
    X, Y, _ = signal_data(64)
    m = seed_model()
    loss = lambda x, y: fx.mse(m(x), y)
    before = float(loss(X, Y))
    opt = fx.Descent(0.5, fx.params(m))
    fx.train_(loss, itertools.repeat((X, Y), 30), opt)
    assert float(loss(X, Y)) < before
    with pytest.raises(TypeError, match="not bound to any parameters"):
        fx.train_(loss, [(X, Y)], fx.Descent(0.1))
    with pytest.raises(TypeError, match="bound to parameters"):
        fx.train_(loss, [(X, Y)], fx.setup(fx.Descent(), m))


# ---------------------------------------------------------------- non-finite loss

def test_nan_loss_raises_before_its_update():
    fx.seed_(3)
    m = fx.Dense(3, 1)
    good = (np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32))
    bad = (np.full((4, 3), np.nan, np.float32), np.zeros((4, 1), np.float32))
    snapshots = []
    cb = lambda: snapshots.append(m.weight.numpy().copy())
    opt = fx.setup(fx.Descent(0.1), m)
    with pytest.raises(fx.NonFiniteLossError, match=r"loss is nan on data item 2") as e:
        fx.train_(lambda m, x, y: fx.mse(m(x), y), m, [good, good, bad, good], opt, cb=cb)
    assert e.value.index == 2 and math.isnan(e.value.value)
    assert len(snapshots) == 2
    np.testing.assert_array_equal(m.weight.numpy(), snapshots[-1])  # unchanged by the bad item
    assert np.all(np.isfinite(m.weight.numpy()))


def test_inf_loss_raises_in_implicit_style_too():
    x = fx.tensor([1.0])
    ps = fx.params(x)
    with pytest.raises(fx.NonFiniteLossError, match="loss is inf on data item 0"):
        fx.train_(lambda d: (x * d).sum(), ps, [np.float32(np.inf)], fx.Descent())
    assert x.tolist() == [1.0]


# ---------------------------------------------------------------- misuse

def test_non_scalar_loss_is_a_clear_error():
    m = fx.Dense(3, 2)
    opt = fx.setup(fx.Descent(), m)
    with pytest.raises(ValueError, match=r"loss must return a scalar.*data item 0.*shape \(4, 2\).*\.mean\(\)"):
        fx.train_(lambda m, x: m(x), m, [(np.ones((4, 3), np.float32),)], opt)
    with pytest.raises(TypeError, match="loss must return a scalar.*str"):
        fx.train_(lambda m, x: "small", m, [(np.ones(3, np.float32),)], opt)


def test_wrong_datapoint_arity_is_a_clear_error():
    m = fx.Dense(3, 1)
    opt = fx.setup(fx.Descent(), m)
    x, y = np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)

    def loss(m, x, y):
        return fx.mse(m(x), y)

    with pytest.raises(TypeError, match=r"data item 0 is a tuple of 3 values.*4 positional.*loss\(m, x, y\)"):
        fx.train_(loss, m, [(x, y, y)], opt)
    with pytest.raises(TypeError, match=r"data item 0 is a single ndarray \(not a tuple.*2 positional"):
        fx.train_(loss, m, [x], opt)
    with pytest.raises(TypeError, match=r"data item 1 is a tuple of 1 values"):
        fx.train_(loss, m, [(x, y), (x,)], opt)
    ps = fx.params(m)
    with pytest.raises(TypeError, match=r"loss\(\*item\).*3 positional.*<lambda>\(x, y\)"):
        fx.train_(lambda x, y: fx.mse(m(x), y), ps, [(x, y, y)], fx.Descent())


def test_list_datapoints_are_splatted_like_tuples():
    # A PyTorch DataLoader yields [x, y] lists; Flux splats only tuples
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32)

    def loss(m, x, y):
        return fx.mse(m(x), y)

    fx.seed_(0)
    by_tuple = fx.Dense(3, 1)
    by_list = fx.fmap(lambda p: p * 1, by_tuple)
    fx.train_(loss, by_tuple, [(x, y)] * 3, fx.setup(fx.Descent(0.1), by_tuple))
    fx.train_(loss, by_list, [[x, y]] * 3, fx.setup(fx.Descent(0.1), by_list))
    assert by_list.weight.tolist() == by_tuple.weight.tolist() != fx.Dense(3, 1).weight.tolist()
    # the implicit style too
    ps = fx.params(by_list)
    before = float(loss(by_list, x, y))
    fx.train_(lambda x, y: loss(by_list, x, y), ps, [[x, y]] * 3, fx.Descent(0.1))
    assert float(loss(by_list, x, y)) < before
    # a loss taking the whole list still gets it whole
    seen = []
    fx.train_(lambda m, batch: seen.append(type(batch)) or loss(m, *batch), by_list, [[x, y]],
              fx.setup(fx.Descent(0.1), by_list))
    assert seen == [list]
    with pytest.raises(TypeError, match=r"data item 0 is a list of 3 values, passed as one argument"):
        fx.train_(loss, by_list, [[x, y, y]], fx.setup(fx.Descent(0.1), by_list))


def test_type_errors_inside_the_loss_are_left_alone():
    m = fx.Dense(3, 1)
    with pytest.raises(TypeError, match="unsupported operand"):
        fx.train_(lambda m, x: None + 1, m, [(np.ones(3),)], fx.setup(fx.Descent(), m))


def test_state_from_another_model_fails_before_training():
    m = fx.Chain(fx.Dense(3, 4), fx.Dense(4, 1))
    other = fx.Chain(fx.Dense(3, 5), fx.Dense(5, 1))
    calls = []

    def loss(m, x):
        calls.append(1)
        return m(x).sum()

    with pytest.raises(StateMismatchError, match=r"\.layers\[0\]\.weight"):
        fx.train_(loss, m, [(np.ones(3, np.float32),)], fx.setup(fx.Adam(), other))
    assert calls == []


def test_implicit_style_with_a_setup_state_is_a_clear_error():
    m = fx.Dense(3, 1)
    with pytest.raises(TypeError, match="explicit style"):
        fx.train_(lambda x: m(x).sum(), fx.params(m), [np.ones(3)], fx.setup(fx.Adam(), m))


def test_explicit_style_with_a_bare_rule_warns_and_trains():
    m = fx.Dense(3, 1)
    b = m.bias.tolist()
    with pytest.warns(UserWarning, match="fx.setup"):
        fx.train_(lambda m, x: m(x).sum(), m, [(np.ones(3, np.float32),)], fx.Descent(1.0))
    assert m.bias.tolist() == [b[0] - 1.0]


def test_train_with_wrong_number_of_arguments():
    with pytest.raises(TypeError, match="train_ takes"):
        fx.train_(lambda: 0.0, [1])


# ---------------------------------------------------------------- callbacks, stop, skip

def test_cb_callable_or_list_called_after_each_batch():
    x = fx.tensor([1.0])
    ps = fx.params(x)
    seen, seen2 = [], []
    data = [np.float32(v) for v in (1.0, 2.0, 3.0)]
    fx.train_(lambda d: (x * d).sum(), ps, data, fx.Descent(0.1), cb=lambda: seen.append(x.tolist()[0]))
    assert seen == pytest.approx([0.9, 0.7, 0.4])  # after each update
    fx.train_(lambda d: (x * d).sum(), ps, data, fx.Descent(0.1),
              cb=[lambda: seen.append("a"), lambda: seen2.append("b")])
    assert seen[3:] == ["a"] * 3 and seen2 == ["b"] * 3
    with pytest.raises(TypeError, match="callable"):
        fx.train_(lambda d: (x * d).sum(), ps, data, fx.Descent(0.1), cb=[1])


def test_stop_in_a_callback_ends_training_cleanly():
    x = fx.tensor([0.0])
    n = []

    def cb():
        n.append(1)
        if len(n) == 3:
            fx.stop()

    fx.train_(lambda m, d: (m * d).sum(), x, [np.float32(1.0)] * 10, fx.setup(fx.Descent(1.0), x), cb=cb)
    assert len(n) == 3 and x.tolist() == [-3.0]


def test_stop_and_skip_inside_the_loss():
    x = fx.tensor([0.0])
    ps = fx.params(x)

    def loss(d):
        if d == 2:
            fx.skip()
        if d == 4:
            fx.stop()
        return (x * float(d)).sum()

    fx.train_(loss, ps, [1, 2, 3, 4, 5], fx.Descent(1.0))
    assert x.tolist() == [-4.0]  # items 1 and 3 only


def test_progress_bar(capsys):
    m = fx.Dense(2, 1)
    data = fx.DataLoader((np.ones((8, 2), np.float32), np.ones((8, 1), np.float32)), batchsize=2)
    fx.train_(lambda m, x, y: fx.mse(m(x), y), m, data, fx.setup(fx.Descent(0.01), m), progress=True)
    err = capsys.readouterr().err
    assert "4/4" in err and "loss=" in err


def test_data_forms_repeat_zip_ncycle():
    x = fx.tensor([0.0])
    opt = fx.setup(fx.Descent(1.0), x)
    loss = lambda m, a, b: (m * (a + b)).sum()
    fx.train_(loss, x, itertools.repeat((np.float32(1), np.float32(0)), 3), opt)
    assert x.tolist() == [-3.0]
    fx.train_(loss, x, zip([1.0, 1.0], [0.0, 1.0]), opt)
    assert x.tolist() == [-6.0]
    fx.train_(loss, x, fx.ncycle([(1.0, 0.0)], 3), opt)
    assert x.tolist() == [-9.0]


# ---------------------------------------------------------------- helpers

def test_throttle_with_a_fake_clock():
    now = [0.0]
    calls = []
    f = fx.throttle(lambda i: calls.append(i) or i, 5, clock=lambda: now[0])
    results = []
    for i, t in enumerate([0.0, 1.0, 4.9, 5.0, 9.0, 10.1, 20.0]):
        now[0] = t
        results.append(f(i))
    assert calls == [0, 3, 5, 6]
    assert results == [0, 0, 0, 3, 3, 5, 6]  # the last result while throttled


def test_throttle_rate_over_many_calls():
    now = [0.0]
    calls = []
    f = fx.throttle(lambda: calls.append(now[0]), 1.0, clock=lambda: now[0])
    for k in range(1000):  # 10 "seconds" of calls every 10 ms
        now[0] = k * 0.01
        f()
    assert len(calls) == 10
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(calls, calls[1:]))


def test_throttle_trailing_and_not_leading():
    calls = []
    lock = threading.Lock()

    def f(i):
        with lock:
            calls.append(i)

    g = fx.throttle(f, 0.05, trailing=True)
    g(1)
    g(2)
    g(3)
    assert calls == [1]
    time.sleep(0.5)
    assert calls == [1, 3]  # the latest throttled call runs when the period ends
    h = fx.throttle(f, 0.05, leading=False)
    h(10)
    assert calls == [1, 3]
    time.sleep(0.5)
    assert calls == [1, 3, 10]


def test_epochs_logs(caplog):
    with caplog.at_level(logging.INFO, logger="fluxrs"):
        seen = [e for e in fx.epochs(2)]
    assert seen == [1, 2]
    assert [r.getMessage() for r in caplog.records if r.name == "fluxrs"] == ["Epoch 1", "Epoch 2"]


def test_epochs_start_counts_on_from_the_epochs_done(caplog):
    seen_by_hooks = []

    class Epochs:
        @fx.hookimpl
        def on_epoch_begin(self, run, epoch):
            seen_by_hooks.append((epoch, run.epochs))

    with caplog.at_level(logging.INFO, logger="fluxrs"):
        seen = list(fx.epochs(5, callbacks=[Epochs()], start=3))
    assert seen == [4, 5] and seen_by_hooks == [(4, 5), (5, 5)]
    assert [r.getMessage() for r in caplog.records if r.name == "fluxrs"] == ["Epoch 4", "Epoch 5"]
    assert list(fx.epochs(3, start=3)) == []  # a run resumed after its last epoch: nothing left
    assert list(fx.epochs(2, start=0)) == [1, 2]
    with pytest.raises(ValueError, match=r"start is past n; n is the last epoch, not the number of epochs left"):
        fx.epochs(2, start=3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start \\(the epochs already done\\) must be a whole number >= 0"):
            fx.epochs(5, start=bad)


def test_ncycle():
    assert list(fx.ncycle([1, 2], 2)) == [1, 2, 1, 2]
    assert list(fx.ncycle(iter([1, 2]), 2)) == [1, 2, 1, 2]
    assert list(fx.ncycle([1], 0)) == []


# ---------------------------------------------------------------- the fused step (grad + update in one call)

@pytest.mark.parametrize("rule", [fx.Descent(0.1), fx.Adam(1e-2), fx.OptimiserChain(fx.ClipGrad(0.01), fx.Momentum(0.05))],
                         ids=["descent", "adam", "chain"])
def test_train_step_matches_withgradient_and_update(rule):
    """train_'s one-call step (the gradients never reach Python) leaves the model and the
    optimiser state exactly where the public two-step API does."""
    X, Y, _ = signal_data(96)
    data = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 96, 32)]
    loss = lambda m, x, y: fx.mse(m(x), y)  # noqa: E731
    a = seed_model()
    b = fx.functor.fmap(lambda p: fx.Tensor(p.numpy().copy()), a)
    sa, sb = fx.setup(rule, a), fx.setup(rule, b)
    fx.train_(loss, a, data, sa)
    for x, y in data:
        _, g = fx.withgradient(lambda m: loss(m, x, y), b)
        fx.update_(sb, b, g[0])
    for p, q in zip(fx.params(a), fx.params(b)):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    fx.train_(loss, a, data, sa)
    for x, y in data:
        _, g = fx.withgradient(lambda m: loss(m, x, y), b)
        fx.update_(sb, b, g[0])
    for p, q in zip(fx.params(a), fx.params(b)):
        np.testing.assert_array_equal(p.numpy(), q.numpy())  # the state advanced alike too


def test_grad_update_hands_back_gradients_when_a_parameter_gets_none():
    from fluxrs import _core
    x, unused = fx.tensor([1.0, 2.0]), fx.tensor([5.0])
    chain = fx.Descent(0.5).chain()
    states = [_core.OptState(chain, t) for t in (x, unused)]
    _core.push_watch([x, unused])
    try:
        loss = (x * x).sum()
    finally:
        _core.pop_watch()
    gs = _core.grad_update(loss, chain, [x, unused], states)
    assert gs is not None and gs[1] is None
    np.testing.assert_allclose(gs[0].numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])  # nothing updated
    _core.push_watch([x])
    try:
        loss = (x * x).sum()
    finally:
        _core.pop_watch()
    assert _core.grad_update(loss, chain, [x], states[:1]) is None
    np.testing.assert_allclose(x.numpy(), [0.0, 0.0])  # 1 - 0.5*2, 2 - 0.5*4


def test_train_skips_a_parameter_without_gradient_as_optimisers_jl():
    """A layer the loss never uses gets no gradient: train_ falls back to the general path,
    updates the rest and leaves that one (and its state) alone."""
    used, unused = fx.Dense(3, 1), fx.Dense(3, 1)
    model = fx.Chain(used, unused)
    before = unused.weight.numpy().copy()
    opt = fx.setup(fx.Adam(0.1), model)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32)
    w0 = used.weight.numpy().copy()
    fx.train_(lambda m, x, y: fx.mse(m.layers[0](x), y), model, [(x, y)], opt)
    assert not np.array_equal(used.weight.numpy(), w0)
    np.testing.assert_array_equal(unused.weight.numpy(), before)


# ---------------------------------------------------------------- train_(compile=True)

def _twins(make):
    """Two copies of one model (same weights)."""
    a, b = make(), make()
    for p, q in zip(fx.params(a), fx.params(b)):
        q.assign_(np.array(p))
    return a, b


def _same(a, b):
    return all(np.array_equal(np.array(p), np.array(q)) for p, q in zip(fx.params(a), fx.params(b)))


@pytest.mark.parametrize("rule", [fx.Descent(0.1), fx.Adam(0.01), fx.OptimiserChain(fx.ClipGrad(0.01), fx.Momentum(0.1))],
                         ids=["Descent", "Adam", "ClipGrad+Momentum"])
def test_compiled_train_equals_eager_train_bit_for_bit(rule, monkeypatch):
    X, Y, _ = signal_data(200)
    # 200 = 6 batches of 32 and one of 8: the last one's new shape records again
    data = fx.DataLoader((fx.tensor(X), fx.tensor(Y)), batchsize=32)
    for make, loss in [(seed_model, lambda m, x, y: fx.mse(m(x), y)),
                       (lambda: fx.Chain(fx.Dense(784, 24, fx.relu), fx.Dense(24, 10)),
                        lambda m, x, y: fx.logitcrossentropy(m(x), y, label_smoothing=0.1))]:
        eager, comp = _twins(make)
        grouped = make()
        for p, q in zip(fx.params(eager), fx.params(grouped)):
            q.assign_(np.array(p))
        oe, oc, og = fx.setup(rule, eager), fx.setup(rule, comp), fx.setup(rule, grouped)
        seen = {False: [], True: []}

        class Losses:
            def __init__(self, compiled):
                self.compiled = compiled

            @fx.hookimpl
            def on_batch_end(self, step, loss):
                seen[self.compiled].append(loss)

        for group in (32, 3):  # the second epoch's groups end in the middle of the data
            monkeypatch.setattr(_train_module, "_GROUP_STEPS", group)
            fx.train_(loss, eager, data, oe, callbacks=[Losses(False)])
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # nothing falls back to eager here
                # a hook sees every batch: one step per call
                fx.train_(loss, comp, data, oc, compile=True, callbacks=[Losses(True)])
                # nothing does: the steps run in groups
                fx.train_(loss, grouped, data, og, compile=True)
        assert _same(eager, comp) and _same(eager, grouped)
        assert len(seen[True]) == 14 and seen[True] == seen[False]


def test_compiled_groups_are_bounded_and_every_batch_shows_on_the_bar(monkeypatch):
    rng = np.random.default_rng(5)
    batches = [(fx.tensor(rng.normal(size=(8, 6)).astype(np.float32)), fx.tensor(rng.normal(size=(8, 2)).astype(np.float32)))
               for _ in range(9)]
    sizes = []
    group = _train_module._group
    monkeypatch.setattr(_train_module, "_group", lambda it, most: sizes.append(len(g := group(it, most))) or g)

    class Bar:
        def __init__(self):
            self.n, self.losses = 0, []

        def update(self, k):
            self.n += k

        def set_postfix(self, loss, refresh):
            self.losses.append(float(loss))

    loss = lambda m, x, y: fx.mse(m(x), y)
    eager, comp = _twins(lambda: fx.Dense(6, 2))
    slow = fx.Dense(6, 2)
    for p, q in zip(fx.params(eager), fx.params(slow)):
        q.assign_(np.array(p))
    fx.train_(loss, eager, batches, fx.setup(fx.Adam(0.1), eager))

    # by bytes: three batches (x and y: 256 bytes each) a group
    monkeypatch.setattr(_train_module, "_GROUP_BYTES", 3 * 256)
    bar = Bar()
    fx.train_(loss, comp, batches, fx.setup(fx.Adam(0.1), comp), compile=True, progress=bar)
    assert sizes == [3, 3, 3, 0] and bar.n == 9 and len(bar.losses) == 9
    assert _same(eager, comp)

    # by time: after a first group of 4, steps slower than _GROUP_SECONDS go one per call
    sizes.clear()
    monkeypatch.setattr(_train_module, "_GROUP_BYTES", 1 << 30)
    monkeypatch.setattr(_train_module, "_GROUP_STEPS", 4)
    monkeypatch.setattr(_train_module, "_GROUP_SECONDS", 1e-12)
    fx.train_(loss, slow, batches, fx.setup(fx.Adam(0.1), slow), compile=True)
    assert sizes == [4, 1, 1, 1, 1, 1, 0]
    assert _same(eager, slow)


def test_compiled_steps_take_batches_ahead_only_from_data_already_made():
    # a generator may refill one tensor in place for each batch: taken ahead, every step of a
    # group would see the last batch's values; it is stepped one by one
    rng = np.random.default_rng(6)
    values = [(rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)) for _ in range(6)]
    x, y = fx.tensor(np.zeros((8, 6), np.float32)), fx.tensor(np.zeros((8, 2), np.float32))

    def refilled():
        for a, b in values:
            x.assign_(a)
            y.assign_(b)
            yield x, y

    loss = lambda m, x, y: fx.mse(m(x), y)
    eager, comp = _twins(lambda: fx.Dense(6, 2))
    fx.train_(loss, eager, [(fx.tensor(a), fx.tensor(b)) for a, b in values], fx.setup(fx.Adam(0.1), eager))
    fx.train_(loss, comp, refilled(), fx.setup(fx.Adam(0.1), comp), compile=True)
    assert _same(eager, comp)


def test_compiled_conv_and_pooling_equal_eager():
    # max pooling replays by pooling again: where the maxima are changes with the data
    rng = np.random.default_rng(3)
    make = lambda: fx.Chain(fx.Conv((3, 3), (1, 3), fx.relu), fx.MaxPool((2, 2)), fx.Conv((3, 3), (3, 4)),
                            fx.MeanPool((2, 2)), fx.flatten, fx.Dense(4, 3))
    data = [(fx.tensor(rng.normal(size=(5, 1, 10, 10)).astype(np.float32)),
             fx.tensor(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)])) for _ in range(4)]
    loss = lambda m, x, y: fx.logitcrossentropy(m(x), y)
    eager, comp = _twins(make)
    fx.train_(loss, eager, data, fx.setup(fx.Adam(0.05), eager))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx.train_(loss, comp, data, fx.setup(fx.Adam(0.05), comp), compile=True)
    assert _same(eager, comp)


def test_compiled_step_with_nan_loss_raises_before_its_update():
    x, y = fx.tensor(np.ones((4, 3), np.float32)), fx.tensor(np.ones((4, 1), np.float32))
    bad = fx.tensor(np.full((4, 1), np.nan, np.float32))
    loss = lambda m, x, y: fx.mse(m(x), y)
    eager, comp = _twins(lambda: fx.Dense(3, 1))
    fx.train_(loss, eager, [(x, y), (x, y)], fx.setup(fx.Descent(0.1), eager))
    with pytest.raises(fx.NonFiniteLossError) as e:
        # one step recorded, one replayed, then the NaN one: it raises before its update
        fx.train_(loss, comp, [(x, y), (x, y), (x, bad), (x, y)], fx.setup(fx.Descent(0.1), comp), compile=True)
    assert e.value.index == 2
    assert _same(eager, comp)


def test_compiled_step_skips_a_parameter_without_gradient():
    # the second layer takes no part in the loss: it gets no gradient and stays as it was
    make = lambda: fx.Chain(fx.Dense(4, 3), fx.Dense(3, 2))
    eager, comp = _twins(make)
    loss = lambda m, x, y: fx.mse(m[0](x), y)
    data = [(fx.tensor(np.full((5, 4), k, np.float32)), fx.tensor(np.ones((5, 3), np.float32))) for k in range(4)]
    fx.train_(loss, eager, data, fx.setup(fx.Adam(0.1), eager))
    fx.train_(loss, comp, data, fx.setup(fx.Adam(0.1), comp), compile=True)
    assert _same(eager, comp)


@pytest.mark.parametrize("case", ["dropout", "integer labels", "batchnorm", "frozen"])
def test_what_cannot_be_compiled_warns_and_trains_as_usual(case):
    x, y = np.ones((8, 4), np.float32), np.ones((8, 2), np.float32)
    m = {"dropout": lambda: fx.Chain(fx.Dense(4, 6), fx.Dropout(0.5), fx.Dense(6, 2)),
         "integer labels": lambda: fx.Dense(4, 2),
         "batchnorm": lambda: fx.Chain(fx.Dense(4, 6), fx.BatchNorm(6), fx.Dense(6, 2)),
         "frozen": lambda: fx.Chain(fx.Dense(4, 6), fx.Dense(6, 2))}[case]()
    data = [(x, np.arange(8) % 2)] * 3 if case == "integer labels" else [(fx.tensor(x), fx.tensor(y))] * 3
    loss = (lambda m, x, y: fx.logitcrossentropy(m(x), fx.onehotbatch(y, [0, 1]))) if case == "integer labels" \
        else (lambda m, x, y: fx.mse(m(x), y))
    fx.trainmode_(m)
    before = [np.array(p) for p in fx.params(m)]
    opt = fx.setup(fx.Descent(0.1), m)
    if case == "frozen":
        fx.freeze_(opt.layers[0])
    match = {"dropout": r"shape \[8, 6\].*freeze", "integer labels": "not all float arrays or fx tensors.*int64",
             "batchnorm": "running statistics", "frozen": "frozen parameter"}[case]
    with pytest.warns(UserWarning, match=match) as seen:
        fx.train_(loss, m, data, opt, compile=True)
    assert [w.filename for w in seen if "compile" in str(w.message)] == [__file__], "the warning points at the call"
    assert not all(np.array_equal(a, np.array(p)) for a, p in zip(before, fx.params(m)))


@pytest.mark.parametrize("feed", ["list", "loader"])
def test_numpy_batches_compile_and_train_as_eager(feed):
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((40, 4)).astype(np.float32), rng.standard_normal((40, 2)).astype(np.float32)
    data = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, 40, 8)] if feed == "list" else \
        fx.DataLoader((xs, ys), batchsize=8)
    eager, comp = _twins(lambda: fx.Chain(fx.Dense(4, 6, fx.tanh), fx.Dense(6, 2)))
    fx.train_(lambda m, x, y: fx.mse(m(x), y), eager, data, fx.setup(fx.Adam(0.1), eager))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "training without compiling"
        fx.train_(lambda m, x, y: fx.mse(m(x), y), comp, data, fx.setup(fx.Adam(0.1), comp), compile=True)
    assert _same(eager, comp)


def test_a_loss_that_needs_numpy_data_trains_eagerly_with_a_warning():
    x, y = np.ones((8, 4), np.float32), np.ones((8, 2), np.float32)
    loss = lambda m, x, y: fx.mse(m(x), y) * float(np.mean(x.view(np.int32) != 0))  # numpy-only API
    eager, comp = _twins(lambda: fx.Dense(4, 2))
    fx.train_(loss, eager, [(x, y)] * 3, fx.setup(fx.Descent(0.1), eager))
    with pytest.warns(UserWarning, match="fails when its numpy data are given as tensors"):
        fx.train_(loss, comp, [(x, y)] * 3, fx.setup(fx.Descent(0.1), comp), compile=True)
    assert _same(eager, comp)


def test_compile_is_for_the_explicit_style():
    m = fx.Dense(2, 1)
    with pytest.raises(TypeError, match="explicit style"):
        fx.train_(lambda x: m(x).sum(), fx.params(m), [fx.ones(1, 2)], fx.Descent(0.1), compile=True)


def test_a_loss_that_reads_values_while_recording_is_not_compiled():
    # the scale below is a Python float read from the graph: a replay would freeze it
    x, y = fx.tensor(np.ones((8, 4), np.float32)), fx.tensor(np.ones((8, 2), np.float32))
    loss = lambda m, x, y: fx.mse(m(x), y) / float(m(x).abs().sum())
    eager, comp = _twins(lambda: fx.Dense(4, 2))
    fx.train_(loss, eager, [(x, y)] * 3, fx.setup(fx.Descent(0.1), eager))
    with pytest.warns(UserWarning, match="reads tensor values"):
        fx.train_(loss, comp, [(x, y)] * 3, fx.setup(fx.Descent(0.1), comp), compile=True)
    assert _same(eager, comp)


# ---------------------------------------------------------------- memory

def test_a_steps_buffers_are_reused_without_page_faults():
    # A step frees its buffers (1-2 MB each here) and the next allocates them again. The
    # extension's allocator (mimalloc 3) keeps freed pages for 1 s before returning them to the
    # OS; with mimalloc 2's 10 ms, or glibc's malloc, a step longer than that (or one after a
    # pause) page-faults every one of them back in: ~2,000 faults for these five steps.
    resource = pytest.importorskip("resource")
    fx.seed_(0)
    m = fx.Chain(fx.Dense(512, 1024, fx.relu), fx.Dense(1024, 512))
    x = fx.tensor(np.ones((512, 512), np.float32))
    opt = fx.setup(fx.Adam(1e-3), m)
    loss = lambda m, x: fx.mse(m(x), x)
    fx.train_(loss, m, [x] * 3, opt)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fx.train_(loss, m, [x] * 5, opt, cb=lambda: time.sleep(0.02))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 1000, f"{faults} page faults in 5 steps"
