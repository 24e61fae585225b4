"""Plugins: the pluggy manager, hooks in train_ and fx.epochs, their order, stop/skip
from hooks, errors naming the plugin, components by name, the built-in callbacks, and the
separately installable packages under plugins/ installed with pip and found through their
entry points."""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fluxrs as fx
from fluxrs.plugins import PluginError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the fluxrs under test is installed: a wheel in site-packages in CI, the source tree when
# built with `maturin develop`. Subprocesses must see the same one, not the bare source tree.
FLUXRS_HOME = os.path.dirname(os.path.dirname(os.path.abspath(fx.__file__)))
PLUGIN_PKGS = ["fluxrs-example", "fluxrs-tensorboard"]
PLUGIN_MODULES = ["fluxrs_example", "fluxrs_tensorboard"]


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch):
    """Every test starts and ends with a fresh plugin manager (no leftovers registered)."""
    monkeypatch.delenv("FLUXRS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("FLUXRS_TENSORBOARD_LOGDIR", raising=False)
    fx.plugins.reset()
    yield
    fx.plugins.reset()


# ---------------------------------------------------------------- helpers

def regression(n=8, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n * batch, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32) + 0.3).astype(np.float32)
    return [(fx.tensor(x[i:i + batch]), fx.tensor(y[i:i + batch])) for i in range(0, n * batch, batch)]


def mse_loss(m, x, y):
    return fx.mse(m(x), y)


def weights(model):
    return [np.array(p.numpy(), copy=True) for p in fx.params(model)]


def reference_after(k, data, seed=0, eta=0.1):
    """The parameters after exactly k plain Descent steps on the first k batches."""
    fx.seed_(seed)
    m = fx.Dense(3, 1)
    opt = fx.setup(fx.Descent(eta), m)
    for x, y in data[:k]:
        g = fx.gradient(lambda m: mse_loss(m, x, y), m)[0]
        fx.update_(opt, m, g)
    return weights(m)


def model_and_opt(seed=0, eta=0.1):
    fx.seed_(seed)
    m = fx.Dense(3, 1)
    return m, fx.setup(fx.Descent(eta), m)


class Recorder:
    """Records every training event."""

    def __init__(self, tag="rec"):
        self.tag = tag
        self.events = []

    @fx.hookimpl
    def on_train_begin(self, run):
        self.events.append(("train_begin",))

    @fx.hookimpl
    def on_epoch_begin(self, epoch):
        self.events.append(("epoch_begin", epoch))

    @fx.hookimpl
    def on_batch_begin(self, step, epoch, index):
        self.events.append(("batch_begin", step, epoch, index))

    @fx.hookimpl
    def on_batch_end(self, step, epoch, loss, index):
        self.events.append(("batch_end", step, epoch, index))

    @fx.hookimpl
    def on_nonfinite_loss(self, step, loss):
        self.events.append(("nonfinite", step))

    @fx.hookimpl
    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch_end", epoch, dict(logs)))

    @fx.hookimpl
    def on_train_end(self, error):
        self.events.append(("train_end", type(error).__name__ if error is not None else None))

    def kinds(self):
        return [e[0] for e in self.events]


# ---------------------------------------------------------------- laziness, autoload switches

def test_import_fluxrs_loads_no_plugin_machinery():
    code = ("import sys, fluxrs as fx\n"
            "assert 'pluggy' not in sys.modules and 'fluxrs.plugins' not in sys.modules, 'eager'\n"
            "assert 'fluxrs.callbacks' not in sys.modules\n"
            "assert fx.hookimpl is fx.plugins.hookimpl and fx.callbacks.EarlyStopping\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_no_plugins_means_no_session_and_the_plain_loop():
    from fluxrs.plugins._run import session
    m, opt = model_and_opt()
    assert session(None, None, m, None, opt, []) is None
    assert session(None, 3, m, None, opt, []) is None  # epoch= alone adds no hooks
    assert session([Recorder()], None, m, None, opt, []) is not None


# ---------------------------------------------------------------- hooks in train_ and fx.epochs

@pytest.mark.parametrize("style", ["explicit", "implicit", "oldest"])
def test_hooks_see_every_event_in_every_style(style):
    data = regression(3)
    fx.seed_(0)
    m = fx.Dense(3, 1)
    rec = Recorder()
    if style == "explicit":
        fx.train_(mse_loss, m, data, fx.setup(fx.Descent(0.1), m), callbacks=[rec], epoch=2)
    elif style == "implicit":
        fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), data, fx.Descent(0.1), callbacks=[rec], epoch=2)
    else:
        fx.train_(lambda x, y: fx.mse(m(x), y), data, fx.Descent(0.1, fx.params(m)), callbacks=[rec], epoch=2)
    assert rec.kinds() == ["train_begin", "epoch_begin"] + ["batch_begin", "batch_end"] * 3 + ["epoch_end",
                                                                                                 "train_end"]
    assert [e for e in rec.events if e[0] == "batch_end"] == [("batch_end", s, 2, s - 1) for s in (1, 2, 3)]
    logs = rec.events[-2][2]
    assert logs["batches"] == 3 and logs["time"] >= 0 and math.isfinite(logs["loss"])


def test_batch_loss_is_the_loss_before_the_update_and_epoch_loss_their_mean():
    data = regression(4)
    m, opt = model_and_opt()
    losses = []

    class L:
        @fx.hookimpl
        def on_batch_end(self, loss, batch):
            losses.append(loss)

        @fx.hookimpl
        def on_epoch_end(self, logs):
            losses.append(("epoch", logs["loss"]))

    m2, opt2 = model_and_opt()
    expected = []
    for x, y in data:
        val, g = fx.withgradient(lambda mm: mse_loss(mm, x, y), m2)
        expected.append(float(val))
        fx.update_(opt2, m2, g[0])
    fx.train_(mse_loss, m, data, opt, callbacks=[L()], epoch=1)
    assert losses[:4] == pytest.approx(expected, rel=1e-6)
    assert losses[4] == ("epoch", pytest.approx(sum(expected) / 4, rel=1e-6))


def test_epochs_loop_is_one_run_and_train_calls_join_it():
    data = regression(2)
    m, opt = model_and_opt()
    rec = Recorder()
    for epoch in fx.epochs(2, callbacks=[rec]):
        fx.train_(mse_loss, m, data, opt)
        fx.train_(mse_loss, m, data[:1], opt)  # a second call in the same epoch: same run, steps go on
    assert rec.kinds().count("train_begin") == 1 and rec.kinds().count("train_end") == 1
    assert [e[1] for e in rec.events if e[0] == "batch_end"] == [1, 2, 3, 4, 5, 6]
    assert [e[2] for e in rec.events if e[0] == "batch_end"] == [1, 1, 1, 2, 2, 2]
    ends = [e for e in rec.events if e[0] == "epoch_end"]
    assert [e[1] for e in ends] == [1, 2] and all(e[2]["batches"] == 3 for e in ends)


def test_callbacks_passed_to_train_inside_epochs_join_for_the_rest_of_the_loop():
    data = regression(2)
    m, opt = model_and_opt()
    rec = Recorder()
    for epoch in fx.epochs(2):
        fx.train_(mse_loss, m, data, opt, callbacks=[rec])  # the same object each epoch: attached once
    assert rec.kinds() == (["train_begin", "epoch_begin"] + ["batch_begin", "batch_end"] * 2 + ["epoch_end"]
                           + ["epoch_begin"] + ["batch_begin", "batch_end"] * 2 + ["epoch_end", "train_end"])
    assert rec not in fx.plugins.registered().values()


def test_epoch_argument_inside_epochs_must_agree():
    m, opt = model_and_opt()
    with pytest.raises(ValueError, match="inside fx.epochs"):
        for epoch in fx.epochs(1, callbacks=[Recorder()]):
            fx.train_(mse_loss, m, regression(1), opt, epoch=epoch + 1)


def test_globally_registered_plugins_see_every_run():
    data = regression(2)
    m, opt = model_and_opt()
    rec = Recorder()
    name = fx.plugins.register(rec)
    assert name == "Recorder" and fx.plugins.registered()["Recorder"] is rec
    fx.train_(mse_loss, m, data, opt)
    fx.train_(mse_loss, m, data, opt)
    assert rec.kinds().count("train_begin") == 2
    fx.plugins.unregister(rec)
    fx.train_(mse_loss, m, data, opt)
    assert rec.kinds().count("train_begin") == 2
    with fx.plugins.using(Recorder(), Recorder()) as (a, b):
        assert set(fx.plugins.registered()) >= {"Recorder", "Recorder-2"}
        fx.train_(mse_loss, m, data, opt)
    assert a.kinds() == b.kinds() and a.kinds()[0] == "train_begin"
    assert "Recorder" not in fx.plugins.registered()


def test_callbacks_are_registered_for_the_call_only_even_on_error():
    m, opt = model_and_opt()
    rec = Recorder()
    seen = []

    class Peek:
        @fx.hookimpl
        def on_batch_end(self, run):
            seen.append((run.pm.get_name(rec) is not None, fx.plugins.manager().get_name(rec)))

    fx.train_(mse_loss, m, regression(1), opt, callbacks=[rec, Peek()])
    assert seen == [(True, None)]  # in the run's own manager, never in the global one
    assert fx.plugins.manager().get_name(rec) is None

    def bad_loss(m, x, y):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        fx.train_(bad_loss, m, regression(1), opt, callbacks=[rec])
    assert rec.events[-1] == ("train_end", "KeyError")
    assert fx.plugins.manager().get_name(rec) is None and fx.plugins.current_run() is None


def test_a_run_reusing_the_managers_of_the_last_sees_global_changes():
    m, opt = model_and_opt()
    rec, g = Recorder(), Recorder()
    cbs = [rec]
    fx.train_(mse_loss, m, regression(1), opt, callbacks=cbs)
    fx.plugins.register(g)
    fx.train_(mse_loss, m, regression(1), opt, callbacks=cbs)
    fx.plugins.unregister(g)
    fx.train_(mse_loss, m, regression(1), opt, callbacks=cbs)
    fx.train_(mse_loss, m, regression(1), opt, callbacks=[rec, Recorder()])
    assert rec.kinds().count("train_begin") == 4 and g.kinds().count("train_begin") == 1


def test_callbacks_of_one_thread_are_invisible_to_another():
    data = regression(50)
    barrier = threading.Barrier(2)
    counts = {}

    class Count:
        def __init__(self):
            self.n = 0

        @fx.hookimpl
        def on_batch_end(self):
            self.n += 1

    def job(name, with_cb):
        m, opt = model_and_opt(seed=1)
        c = Count()
        barrier.wait()
        fx.train_(mse_loss, m, data, opt, callbacks=[c] if with_cb else None)
        counts[name] = c.n

    ts = [threading.Thread(target=job, args=("a", True)), threading.Thread(target=job, args=("b", True)),
          threading.Thread(target=job, args=("c", False))]
    barrier = threading.Barrier(3)
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert counts == {"a": 50, "b": 50, "c": 0}


def test_cb_keeps_working_beside_callbacks_and_keeps_flux_stop_rules():
    data = regression(4)
    m, opt = model_and_opt()
    rec = Recorder()
    calls = []

    def cb():
        calls.append(1)
        if len(calls) == 2:
            fx.stop()

    epochs_run = 0
    for epoch in fx.epochs(3, callbacks=[rec]):
        epochs_run += 1
        fx.train_(mse_loss, m, data, opt, cb=cb)
    # Flux: stop() in cb ends that train_ call only; the epochs go on
    assert epochs_run == 3 and len(calls) == 2 + 4 + 4
    assert [e[1] for e in rec.events if e[0] == "epoch_end"] == [1, 2, 3]


# ---------------------------------------------------------------- call order

def test_call_order_tryfirst_plain_trylast_wrappers_and_registration_order():
    order = []

    def plugin(tag, **opts):
        class P:
            @fx.hookimpl(**opts)
            def on_epoch_end(self, logs):
                order.append(tag)
        P.__name__ = tag
        return P()

    class Wrap:
        @fx.hookimpl(wrapper=True)
        def on_epoch_end(self, logs):
            order.append("wrap:before")
            res = yield
            order.append("wrap:after")
            return res

    g1, g2 = plugin("global1"), plugin("global2")
    first, last = plugin("first", tryfirst=True), plugin("last", trylast=True)
    for p in (g1, first, last, Wrap(), g2):
        fx.plugins.register(p)
    a, b = plugin("cb_a"), plugin("cb_b")
    for epoch in fx.epochs(1, callbacks=[a, b]):
        pass
    assert order == ["wrap:before", "first", "cb_a", "cb_b", "global2", "global1", "last", "wrap:after"]


def test_builtin_timer_runs_first_and_loggers_last(tmp_path):
    seen = {}

    class Metric:
        @fx.hookimpl(tryfirst=True)
        def on_epoch_end(self, logs):
            logs["val_loss"] = 0.25

    class Monitor:
        @fx.hookimpl
        def on_epoch_end(self, logs):
            seen.update(logs)

    path = tmp_path / "log.csv"
    # registered in the "wrong" order on purpose: priorities, not registration, decide
    cbs = [fx.callbacks.CSVLogger(path), Monitor(), Metric(), fx.callbacks.Timer()]
    for epoch in fx.epochs(1, callbacks=cbs):
        pass
    assert "elapsed" in seen and seen["val_loss"] == 0.25
    rows = list(csv.DictReader(open(path)))
    assert rows[0]["val_loss"] == "0.25" and "elapsed" in rows[0]


def test_per_batch_hooks_with_a_wrapper_keep_pluggy_semantics():
    order = []

    class Wrap:
        @fx.hookimpl(wrapper=True)
        def on_batch_end(self, step):
            order.append(("wrap", step))
            res = yield
            order.append(("wrap-after", step))
            return res

    class Plain:
        @fx.hookimpl
        def on_batch_end(self, step):
            order.append(("plain", step))
            if step == 2:
                fx.stop()

    m, opt = model_and_opt()
    fx.train_(mse_loss, m, regression(4), opt, callbacks=[Plain(), Wrap()])
    assert order == [("wrap", 1), ("plain", 1), ("wrap-after", 1), ("wrap", 2), ("plain", 2), ("wrap-after", 2)]


# ---------------------------------------------------------------- stop and skip from hooks

def test_stop_in_on_batch_end_ends_training_after_that_step():
    data = regression(6)
    m, opt = model_and_opt()
    rec = Recorder()

    class StopAt3:
        @fx.hookimpl
        def on_batch_end(self, step):
            if step == 3:
                fx.stop()

    fx.train_(mse_loss, m, data, opt, callbacks=[StopAt3(), rec], epoch=1)
    # rec runs after StopAt3 and still sees step 3: a stop request does not cut the event short
    assert [e[1] for e in rec.events if e[0] == "batch_end"] == [1, 2, 3]
    assert rec.kinds()[-2:] == ["epoch_end", "train_end"]  # the stopped epoch still ends
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in weights(m)]),
                               np.concatenate([w.ravel() for w in reference_after(3, data)]), rtol=1e-6)


def test_stop_from_a_hook_ends_the_epochs_loop_after_the_epoch():
    data = regression(3)
    m, opt = model_and_opt()

    class StopInEpoch2:
        @fx.hookimpl
        def on_batch_end(self, run, index):
            if run.epoch == 2 and index == 0:
                run.stop_training = True

    rec = Recorder()
    ran = []
    for epoch in fx.epochs(5, callbacks=[StopInEpoch2(), rec]):
        fx.train_(mse_loss, m, data, opt)
        ran.append(epoch)
    assert ran == [1, 2]
    assert [e[1] for e in rec.events if e[0] == "epoch_end"] == [1, 2]
    assert rec.events[-1] == ("train_end", None)


def test_stop_in_on_epoch_end_and_on_train_begin():
    class StopAtEpoch(Recorder):
        @fx.hookimpl
        def on_epoch_end(self, epoch):
            if epoch == 2:
                fx.stop()

    assert list(fx.epochs(5, callbacks=[StopAtEpoch()])) == [1, 2]

    class NoTraining:
        @fx.hookimpl
        def on_train_begin(self):
            fx.stop()

    m, opt = model_and_opt()
    before = weights(m)
    rec = Recorder()
    fx.train_(mse_loss, m, regression(2), opt, callbacks=[NoTraining(), rec])
    assert rec.kinds() == ["train_begin", "train_end"]
    assert all((a == b).all() for a, b in zip(before, weights(m)))
    assert list(fx.epochs(3, callbacks=[NoTraining()])) == []


def test_skip_in_on_batch_begin_skips_that_batch_only():
    data = regression(4)
    m, opt = model_and_opt()
    rec = Recorder()

    class SkipSecond:
        @fx.hookimpl
        def on_batch_begin(self, index):
            if index == 1:
                fx.skip()

    fx.train_(mse_loss, m, data, opt, callbacks=[SkipSecond(), rec])
    assert [(e[1], e[3]) for e in rec.events if e[0] == "batch_end"] == [(1, 0), (2, 2), (3, 3)]
    m2, opt2 = model_and_opt()
    fx.train_(mse_loss, m2, [data[0], data[2], data[3]], opt2)
    for a, b in zip(weights(m), weights(m2)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_skip_in_on_epoch_begin_skips_the_epoch():
    class SkipOdd(Recorder):
        @fx.hookimpl
        def on_epoch_begin(self, epoch):
            if epoch % 2:
                fx.skip()

    s = SkipOdd()
    assert list(fx.epochs(4, callbacks=[s])) == [2, 4]
    assert [e[1] for e in s.events if e[0] == "epoch_end"] == [2, 4]  # a skipped epoch does not end
    m, opt = model_and_opt()
    before = weights(m)
    fx.train_(mse_loss, m, regression(2), opt, callbacks=[SkipOdd()], epoch=3)
    assert all((a == b).all() for a, b in zip(before, weights(m)))


def test_nonfinite_loss_raises_by_default_and_hooks_can_skip_or_stop():
    data = regression(4)
    bad = list(data)
    x, y = bad[1]
    bad[1] = (x, fx.tensor(np.full(y.shape, np.nan, dtype=np.float32)))

    m, opt = model_and_opt()
    rec = Recorder()
    with pytest.raises(fx.NonFiniteLossError):
        fx.train_(mse_loss, m, bad, opt, callbacks=[rec])
    assert rec.kinds()[-2:] == ["nonfinite", "train_end"] and rec.events[-1] == ("train_end", "NonFiniteLossError")
    np.testing.assert_allclose(weights(m)[0], reference_after(1, data)[0], rtol=1e-6)  # only step 1 applied

    class SkipNaN:
        @fx.hookimpl
        def on_nonfinite_loss(self, loss):
            assert math.isnan(loss)
            fx.skip()

    m, opt = model_and_opt()
    fx.train_(mse_loss, m, bad, opt, callbacks=[SkipNaN()])
    m2, opt2 = model_and_opt()
    fx.train_(mse_loss, m2, [data[0], data[2], data[3]], opt2)
    np.testing.assert_allclose(weights(m)[0], weights(m2)[0], rtol=1e-6)

    m, opt = model_and_opt()
    nan = fx.callbacks.TerminateOnNaN()
    ran = []
    for epoch in fx.epochs(3, callbacks=[nan]):
        fx.train_(mse_loss, m, bad, opt)
        ran.append(epoch)
    assert ran == [1] and nan.terminated[0] == 2 and math.isnan(nan.terminated[1])
    np.testing.assert_allclose(weights(m)[0], reference_after(1, data)[0], rtol=1e-6)


# ---------------------------------------------------------------- errors

class Boom:
    def __init__(self, hook_step=2):
        self.hook_step = hook_step

    @fx.hookimpl
    def on_batch_end(self, step):
        if step == self.hook_step:
            raise ZeroDivisionError("kaboom")


def test_a_raising_plugin_names_itself_and_the_hook_and_leaves_the_step_whole():
    data = regression(4)
    m, opt = model_and_opt()
    rec = Recorder()
    with pytest.raises(PluginError) as ei:
        fx.train_(mse_loss, m, data, opt, callbacks=[Boom(), rec], epoch=1)
    e = ei.value
    msg = str(e)
    assert "'Boom'" in msg and "test_plugins.Boom" in msg and "on_batch_end" in msg and "kaboom" in msg
    assert "step 2" in msg and "applied" in msg
    assert isinstance(e.__cause__, ZeroDivisionError)
    assert e.plugin_name == "Boom" and e.hook == "on_batch_end" and e.step == 2 and e.epoch == 1
    # step 2's update was applied whole, nothing after it
    for a, b in zip(weights(m), reference_after(2, data)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # every plugin got on_train_end with the error; nothing stays registered
    assert rec.events[-1] == ("train_end", "PluginError")
    assert fx.plugins.current_run() is None


def test_a_raising_on_batch_begin_applies_nothing_of_that_step():
    data = regression(4)
    m, opt = model_and_opt()

    class BoomBefore:
        @fx.hookimpl
        def on_batch_begin(self, step):
            if step == 3:
                raise ValueError("no")

    with pytest.raises(PluginError, match=r"BoomBefore.*on_batch_begin.*before step 3.*not applied"):
        fx.train_(mse_loss, m, data, opt, callbacks=[BoomBefore()])
    for a, b in zip(weights(m), reference_after(2, data)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_errors_in_on_train_end_reach_every_plugin_then_raise():
    ended = []

    class BadEnd:
        @fx.hookimpl
        def on_train_end(self):
            raise OSError("disk full")

    class GoodEnd:
        @fx.hookimpl
        def on_train_end(self):
            ended.append(1)

    m, opt = model_and_opt()
    with pytest.raises(PluginError, match="BadEnd.*on_train_end.*disk full"):
        fx.train_(mse_loss, m, regression(1), opt, callbacks=[BadEnd(), GoodEnd()])
    assert ended == [1]
    # after another error, on_train_end's own error is logged, not raised over it
    with pytest.raises(PluginError, match="kaboom"):
        fx.train_(mse_loss, m, regression(3), opt, callbacks=[BadEnd(), Boom(), GoodEnd()])
    assert ended == [1, 1]


def test_epochs_loop_error_ends_the_run_and_the_loop():
    rec = Recorder()
    m, opt = model_and_opt()
    with pytest.raises(PluginError):
        for epoch in fx.epochs(3, callbacks=[rec, Boom(hook_step=3)]):
            fx.train_(mse_loss, m, regression(2), opt)
    assert rec.events[-1] == ("train_end", "PluginError")
    assert fx.plugins.current_run() is None


def test_misuse_errors():
    m, opt = model_and_opt()
    with pytest.raises(TypeError, match=r"pass an instance, e.g. Recorder\(\)"):
        fx.train_(mse_loss, m, regression(1), opt, callbacks=[Recorder])
    with pytest.raises(TypeError, match="implements no fluxrs hook.*cb="):
        fx.train_(mse_loss, m, regression(1), opt, callbacks=[lambda: None])
    rec = Recorder()
    fx.train_(mse_loss, m, regression(1), opt, callbacks=rec)  # one plugin, not in a list
    assert rec.kinds()[0] == "train_begin"

    class Typo:
        @fx.hookimpl
        def on_batch_ends(self, loss):
            pass

    with pytest.raises(PluginError, match="'on_batch_ends'.*did you mean 'on_batch_end'"):
        fx.plugins.register(Typo())
    assert "Typo" not in fx.plugins.registered()

    class Optional:
        @fx.hookimpl(optionalhook=True)
        def on_something_else(self):
            pass

    fx.plugins.register(Optional())
    with pytest.raises(RuntimeError, match="no training run"):
        fx.plugins.log(val_loss=1.0)


# ---------------------------------------------------------------- components by name

def test_builtin_names_resolve():
    P = fx.plugins
    assert P.layer("Dense") is fx.Dense and P.layer("Chain") is fx.Chain and P.layer("BatchNorm") is fx.BatchNorm
    assert P.loss("mse") is fx.mse and P.loss("logitcrossentropy") is fx.logitcrossentropy
    assert P.rule("Adam") is fx.Adam and P.rule("adam") is fx.Adam and P.rule("Descent") is fx.Descent
    assert P.callback("EarlyStopping") is fx.callbacks.EarlyStopping
    assert P.layer("fluxrs:Dense") is fx.Dense
    config = {"layer": "Dense", "args": [3, 2], "loss": "mse", "rule": "Adam", "eta": 0.01}
    model = P.layer(config["layer"])(*config["args"])
    opt = fx.setup(P.rule(config["rule"])(config["eta"]), model)
    fx.train_(lambda m, x, y: P.loss(config["loss"])(m(x), y), model, [(np.ones((2, 3), np.float32),
                                                                         np.zeros((2, 2), np.float32))], opt)
    with pytest.raises(LookupError, match="did you mean 'Dense'"):
        P.layer("Dence")
    reg = P.registry("rules")
    assert reg["Adam"] is fx.Adam and "Rule" not in reg and "xlogy" not in P.registry("losses")


def test_local_names_and_fx_layer_come_first():
    @fx.layer
    class MyConv:
        def __init__(self):
            self.w = fx.ones(2)

    assert fx.plugins.layer("MyConv") is MyConv
    fx.plugins.register_loss("mse", "mine")
    try:
        assert fx.plugins.loss("mse") == "mine" and fx.plugins.loss("fluxrs:mse") is fx.mse
    finally:
        fx.plugins.reset(names=True)
    assert fx.plugins.loss("mse") is fx.mse


def test_a_name_two_plugins_give_to_different_objects_is_ambiguous():
    class A:
        @fx.hookimpl
        def register_layers(self):
            return {"Dense": "a-dense", "OnlyA": 1}

    fx.plugins.register(A(), name="alpha")
    assert fx.plugins.layer("OnlyA") == 1
    with pytest.raises(PluginError, match=r"'Dense' is registered by several plugins.*'alpha:Dense' or 'fluxrs:Dense'"):
        fx.plugins.layer("Dense")
    assert fx.plugins.layer("alpha:Dense") == "a-dense"
    assert fx.plugins.registry("layers")["alpha:Dense"] == "a-dense"

    class Bad:
        @fx.hookimpl
        def register_losses(self):
            return ["not", "a", "dict"]

    fx.plugins.register(Bad())
    with pytest.raises(PluginError, match="register_losses.*must return a dict"):
        fx.plugins.loss("mse")


# ---------------------------------------------------------------- built-in callbacks

def test_early_stopping_patience_min_delta_and_mode():
    es = fx.callbacks.EarlyStopping(patience=2, min_delta=0.1)
    values = [1.0, 0.95, 0.92, 0.5, 0.45, 0.44, 0.1]
    ran = []
    for epoch in fx.epochs(len(values), callbacks=[es]):
        fx.plugins.log(loss=values[epoch - 1])
        ran.append(epoch)
    assert ran == [1, 2, 3] and es.stopped_epoch == 3 and es.best == 1.0  # 0.95, 0.92: within min_delta

    es = fx.callbacks.EarlyStopping(monitor="val_acc", patience=1)  # mode auto: max for accuracies
    assert es.mode == "max"
    acc = [0.5, 0.7, 0.6]
    for epoch in fx.epochs(3, callbacks=[es]):
        fx.plugins.log(val_acc=acc[epoch - 1])
    assert es.stopped_epoch == 3 and es.best == 0.7 and es.best_epoch == 2

    # across plain train_ calls each call is an epoch; after the stop, later calls train nothing
    es = fx.callbacks.EarlyStopping(patience=1, min_delta=1e9)
    m, opt = model_and_opt()
    for _ in range(2):
        fx.train_(mse_loss, m, regression(2), opt, callbacks=[es])
    assert es.stopped
    before = weights(m)
    fx.train_(mse_loss, m, regression(2), opt, callbacks=[es])
    assert all((a == b).all() for a, b in zip(before, weights(m)))
    es.reset()
    fx.train_(mse_loss, m, regression(2), opt, callbacks=[es])
    assert not all((a == b).all() for a, b in zip(before, weights(m)))


def test_early_stopping_really_stops_a_converged_training():
    data = regression(8)
    m, opt = model_and_opt(eta=0.05)
    es = fx.callbacks.EarlyStopping(patience=3, min_delta=1e-4)
    for epoch in fx.epochs(2000, callbacks=[es]):
        fx.train_(mse_loss, m, data, opt)
    assert es.stopped and es.stopped_epoch < 2000 and es.best < 1e-3


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_reduce_lr_on_plateau(style):
    m, opt = model_and_opt(eta=0.1)
    plateau = fx.callbacks.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    rule = fx.Descent(0.1)
    for epoch in fx.epochs(10, callbacks=[plateau]):
        if style == "explicit":
            fx.train_(mse_loss, m, [], opt)
        else:
            fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), [], rule)
        fx.plugins.log(loss=1.0)
    # as Keras: 2 epochs without improvement, reduce (epoch 3); the cooldown epoch (4) resets the
    # count and then counts; reduce (5); ...; never below min_lr
    assert plateau.lrs == [(3, 0.05), (5, 0.025), (7, 0.02)]
    target = opt if style == "explicit" else rule
    assert fx.callbacks.get_lr(target) == pytest.approx(0.02)


@pytest.mark.parametrize("style", ["explicit", "implicit"])
def test_reduce_lr_on_plateau_scales_a_scheduled_rate(style):
    sched = fx.CosAnneal(l0=1e-2, l1=1e-4, period=10)
    m, _ = model_and_opt()
    rule = fx.Scheduler(fx.Adam, sched)
    opt = fx.setup(rule, m) if style == "explicit" else rule
    assert fx.callbacks.get_lr(opt) == sched(1)
    plateau = fx.callbacks.ReduceLROnPlateau(factor=0.5, patience=1)
    data = regression(2)
    for epoch in fx.epochs(3, callbacks=[plateau]):
        if style == "explicit":
            fx.train_(mse_loss, m, data, opt)
        else:
            fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), data, opt)
        fx.plugins.log(loss=1.0)  # never improves: reduce after epochs 2 and 3
    current = opt.weight.rule if style == "explicit" else opt
    assert current.t == 7  # the schedule went on, 2 steps per epoch
    # each reduction halves the rate the schedule gives at that step: the schedule, scaled
    assert plateau.lrs == [(2, pytest.approx(0.5 * sched(5))), (3, pytest.approx(0.25 * sched(7)))]
    assert current.eta_scale == pytest.approx(0.25)
    assert fx.callbacks.get_lr(opt) == pytest.approx(0.25 * sched(7))
    if style == "explicit":
        assert opt.weight.rule is opt.bias.rule  # still one step counter for the model


def test_monitors_given_an_optimiser_say_where_it_comes_from():
    # PyTorch's ReduceLROnPlateau(optimizer) habit
    m, opt = model_and_opt()
    for cls in (fx.callbacks.ReduceLROnPlateau, fx.callbacks.EarlyStopping, fx.callbacks.ModelCheckpoint):
        args = ("ckpt",) if cls is fx.callbacks.ModelCheckpoint else ()
        with pytest.raises(TypeError, match=r"monitor must be the name of a logged metric.*opt_state"):
            cls(*args, monitor=opt) if args else cls(opt)


def test_reduce_lr_really_changes_the_steps():
    data = regression(2)
    m, opt = model_and_opt(eta=0.1)
    fx.callbacks.set_lr(opt, 0.0)
    before = weights(m)
    fx.train_(mse_loss, m, data, opt)
    assert all((a == b).all() for a, b in zip(before, weights(m)))


def test_model_checkpoint_best_and_last_atomic_and_on_checkpoint(tmp_path):
    data = regression(2)
    m, opt = model_and_opt()
    got = []

    class Watch:
        @fx.hookimpl
        def on_checkpoint(self, path, kind, epoch, step, metric):
            got.append((os.path.basename(path), kind, epoch, step))

    ckpt = fx.callbacks.ModelCheckpoint(tmp_path / "ck")
    vals = [3.0, 1.0, 2.0]
    for epoch in fx.epochs(3, callbacks=[ckpt, Watch()]):
        fx.train_(mse_loss, m, data, opt)
        fx.plugins.log(loss=vals[epoch - 1])
    assert sorted(os.listdir(tmp_path / "ck")) == ["best.safetensors", "last.safetensors"]  # no temp files left
    assert ckpt.best_epoch == 2 and ckpt.best == 1.0
    assert got == [("last.safetensors", "last", 1, 2), ("best.safetensors", "best", 1, 2),
                   ("last.safetensors", "last", 2, 4), ("best.safetensors", "best", 2, 4),
                   ("last.safetensors", "last", 3, 6)]
    last = fx.load(ckpt.last_path)
    assert last.meta["epoch"] == 3 and last.meta["kind"] == "last" and last.opt is not None
    m2, opt2 = model_and_opt(seed=9)
    fx.loadmodel_(m2, ckpt.last_path, opt_state=opt2)
    for a, b in zip(weights(m), weights(m2)):
        np.testing.assert_array_equal(a, b)
    assert fx.load(ckpt.best_path).meta["metric"] == 1.0

    # implicit style: the parameters are saved
    ck2 = fx.callbacks.ModelCheckpoint(tmp_path / "ck2", filename="{kind}-{epoch}.safetensors")
    fx.train_(lambda x, y: fx.mse(m(x), y), fx.params(m), data, fx.Descent(0.1), callbacks=[ck2], epoch=7)
    assert sorted(os.listdir(tmp_path / "ck2")) == ["best-7.safetensors", "last-7.safetensors"]


def test_csv_logger_per_epoch_per_batch_and_append(tmp_path):
    data = regression(3)
    m, opt = model_and_opt()
    path = tmp_path / "e.csv"
    for epoch in fx.epochs(2, callbacks=[fx.callbacks.CSVLogger(path)]):
        fx.train_(mse_loss, m, data, opt)
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["loss"]) > 0 for r in rows)
    logger = fx.callbacks.CSVLogger(path, append=True)
    for epoch in fx.epochs(1, callbacks=[logger]):
        fx.train_(mse_loss, m, data, opt)
    assert len(list(csv.DictReader(open(path)))) == 3

    bpath = tmp_path / "b.csv"
    fx.train_(mse_loss, m, data, opt, callbacks=[fx.callbacks.CSVLogger(bpath, per="batch")], epoch=4)
    rows = list(csv.DictReader(open(bpath)))
    assert [(r["step"], r["epoch"]) for r in rows] == [("1", "4"), ("2", "4"), ("3", "4")]
    # per="epoch" costs no per-batch call
    assert "on_batch_end" in fx.callbacks.CSVLogger(path).fluxrs_disabled_hooks


def test_progress_bar_shows_loss_and_throughput():
    import io
    out = io.StringIO()
    m, opt = model_and_opt()
    for epoch in fx.epochs(2, callbacks=[fx.callbacks.ProgressBar(file=out, mininterval=0)]):
        fx.train_(mse_loss, m, regression(5), opt)
    text = out.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "5/5" in text
    assert "loss=" in text and "samples/s" in text


def test_timer():
    t = fx.callbacks.Timer()
    m, opt = model_and_opt()
    seen = {}

    class After:
        @fx.hookimpl
        def on_epoch_end(self, logs):
            seen.update(logs)

    for epoch in fx.epochs(2, callbacks=[After(), t]):
        fx.train_(mse_loss, m, regression(3), opt)
    assert t.steps == 6 and len(t.epoch_times) == 2 and t.total >= sum(t.epoch_times) > 0
    assert seen["steps_per_s"] > 0 and seen["elapsed"] > 0
    assert t.summary().startswith("trained 6 steps in 2 epochs")


def test_learning_curves_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises, as when not installed
    with pytest.raises(ImportError, match=r"LearningCurves draws with matplotlib, which is not installed: "
                                          r"pip install 'fluxrs\[plot\]'"):
        fx.callbacks.LearningCurves(tmp_path / "c.png")


def test_docstring_examples():
    import doctest
    import fluxrs.callbacks
    import fluxrs.plugins
    import fluxrs.plugins.hookspecs
    import fluxrs.train
    for mod in (fluxrs.plugins, fluxrs.callbacks, fluxrs.plugins.hookspecs, fluxrs.train):
        fx.plugins.reset()
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0, mod.__name__


# ---------------------------------------------------------------- packages under plugins/, installed with pip

def _pip_install(target, workdir) -> str | None:
    """Install the plugin packages into `target` with pip; None if it worked, else why not.
    Offline first (the environment's setuptools, no build isolation), then with isolation
    (pip fetches setuptools). They are built from copies, so no build/ or egg-info lands in
    the source tree."""
    import shutil
    pkgs = []
    for p in PLUGIN_PKGS:
        dst = os.path.join(workdir, p)
        shutil.copytree(os.path.join(ROOT, "plugins", p), dst,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        pkgs.append(dst)
    errors = []
    for extra in (["--no-build-isolation"], []):
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), *extra, *pkgs]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode == 0:
            return None
        errors.append(f"{' '.join(extra) or 'with build isolation'}: {p.stderr.strip().splitlines()[-1:]}")
    return "; ".join(errors)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The plugin packages installed with pip into a directory of their own (so that a test
    run never changes the environment other processes use), with their dist-info and entry
    points, as `pip install` puts them in site-packages."""
    target = tmp_path_factory.mktemp("site")
    why = _pip_install(target, tmp_path_factory.mktemp("src"))
    if why is not None:
        pytest.skip(f"pip could not install the plugin packages: {why}")
    return str(target)


@pytest.fixture
def installed(plugin_site):
    """The installed packages visible to this process (on sys.path) for one test."""
    for m in PLUGIN_MODULES:
        assert m not in sys.modules
    sys.path.insert(0, plugin_site)
    importlib.invalidate_caches()
    fx.plugins.reset()
    yield plugin_site
    sys.path.remove(plugin_site)
    importlib.invalidate_caches()
    for m in PLUGIN_MODULES:
        sys.modules.pop(m, None)
    fx.plugins.reset()


def test_installed_example_plugin_is_found_through_its_entry_point(installed):
    assert "fluxrs_example" not in sys.modules  # nothing imported it: fluxrs will, on first use
    Snake = fx.plugins.layer("Snake")
    log_cosh = fx.plugins.loss("log_cosh")
    assert "fluxrs_example" in sys.modules and Snake.__module__ == "fluxrs_example"
    assert "example" in fx.plugins.installed() and "fluxrs-example 0.1.0" in fx.plugins.installed()["example"]
    plugin = fx.plugins.registered()["example"]  # the module, as the entry point registered it

    fx.seed_(0)
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(64, 1)
    y = np.sin(3 * x).astype(np.float32)
    model = fx.Chain(fx.Dense(1, 16), Snake(16), fx.Dense(16, 1))
    opt = fx.setup(fx.Adam(0.05), model)
    data = fx.DataLoader((x, y), batchsize=16)
    before = float(log_cosh(model(x), y))
    seen = []

    class Watch:
        @fx.hookimpl
        def on_epoch_end(self, logs):
            seen.append(logs.get("snake_alpha"))

    for epoch in fx.epochs(30, callbacks=[Watch()]):
        fx.train_(lambda m, x, y: log_cosh(m(x), y), model, data, opt)
    assert float(log_cosh(model(x), y)) < 0.1 * before  # the Snake model learns sin(3x)
    assert plugin.stats["runs"] == 1 and plugin.stats["batches"] == 30 * 4 and plugin.stats["last_step"] == 120
    assert plugin.stats["epochs_logged"] == 30
    assert len(seen) == 30 and all(isinstance(v, float) for v in seen)  # its wrapper's metric, seen by others
    fx.train_(lambda m, x, y: log_cosh(m(x), y), model, data, opt)  # a plain train_ call: a run of its own
    assert plugin.stats["runs"] == 2


def test_installed_plugins_in_a_fresh_process_load_lazily_and_can_be_disabled(installed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([installed, FLUXRS_HOME]))
    code = ("import sys, fluxrs as fx\n"
            "assert 'fluxrs_example' not in sys.modules and 'pluggy' not in sys.modules\n"
            "m = fx.Dense(1, 1)\n"
            "fx.train_(lambda m, x: m(x).sum(), m, [fx.ones((2, 1))], fx.setup(fx.Descent(0.1), m))\n"
            "print(sorted(fx.plugins.installed()), 'fluxrs_example' in sys.modules)\n"
            "ex = fx.plugins.registered().get('example')\n"
            "print(ex.stats['batches'] if ex else None)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["['example', 'tensorboard'] True", "1"]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(env, FLUXRS_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[] False", "None"]


def test_disable_autoload_by_argument_and_environment(installed, monkeypatch):
    fx.plugins.manager(autoload=False)
    with pytest.raises(LookupError, match="no layer named 'Snake'.*no installed plugin is loaded"):
        fx.plugins.layer("Snake")
    assert "fluxrs_example" not in sys.modules
    fx.plugins.manager(autoload=True)
    assert fx.plugins.layer("Snake").__name__ == "Snake"
    fx.plugins.manager(autoload=False)  # unregisters them again
    assert fx.plugins.installed() == {} and "example" not in fx.plugins.registered()
    fx.plugins.reset()
    monkeypatch.setenv("FLUXRS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "example" not in fx.plugins.registered()
    fx.plugins.reset()
    monkeypatch.setenv("FLUXRS_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "example" in fx.plugins.registered()


def test_an_installed_plugin_that_fails_to_load_is_named(tmp_path, monkeypatch):
    dist = tmp_path / "fluxrs_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fluxrs-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fluxrs]\nbroken = fluxrs_broken_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(PluginError, match=r"installed fluxrs plugin 'broken'.*fluxrs-broken 1\.0.*"
                                          r"FLUXRS_DISABLE_PLUGIN_AUTOLOAD=1") as ei:
        fx.plugins.manager()
    assert isinstance(ei.value.__cause__, ImportError)
    fx.plugins.reset()
    monkeypatch.setenv("FLUXRS_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert fx.plugins.layer("Dense") is fx.Dense  # the way out the message names


def _read_scalars(logdir):
    """{tag: [(step, value)]} from the event files in `logdir`, with tensorboard's reader."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_plugin_writes_event_files_tensorboard_reads_back(installed, tmp_path):
    pytest.importorskip("tensorboardX")
    Logger = fx.plugins.callback("TensorBoardLogger")  # by name, through the entry point
    assert Logger.__module__ == "fluxrs_tensorboard"
    logdir = tmp_path / "tb"
    losses = []

    class Keep:
        @fx.hookimpl
        def on_batch_end(self, loss):
            losses.append(loss)

    m, opt = model_and_opt()
    data = regression(4)
    epoch_losses = []
    for epoch in fx.epochs(3, callbacks=[Logger(logdir=logdir), Keep()]):
        fx.train_(mse_loss, m, data, opt)
        fx.plugins.log(val_loss=0.5 / epoch)
        epoch_losses.append(sum(losses[-4:]) / 4)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(logdir))
    scalars = _read_scalars(logdir)
    batch = scalars["batch/loss"]
    assert [s for s, _ in batch] == list(range(1, 13))
    np.testing.assert_allclose([v for _, v in batch], losses, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["epoch/loss"]], epoch_losses, rtol=1e-5)
    assert scalars["epoch/val_loss"] == [(1, 0.5), (2, 0.25), (3, pytest.approx(0.5 / 3))]
    assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx([0.1] * 3)


def test_tensorboard_plugin_logs_every_run_with_the_environment_variable(installed, tmp_path):
    pytest.importorskip("tensorboardX")
    logdir = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([installed, FLUXRS_HOME]),
               FLUXRS_TENSORBOARD_LOGDIR=str(logdir))
    code = ("import fluxrs as fx\n"
            "m = fx.Dense(1, 1); opt = fx.setup(fx.Descent(0.1), m)\n"
            "for epoch in fx.epochs(2):\n"
            "    fx.train_(lambda m, x: (m(x) ** 2).mean(), m, [fx.ones((2, 1))] * 3, opt)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    scalars = _read_scalars(logdir)
    assert [s for s, _ in scalars["batch/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in scalars["epoch/loss"]] == [1, 2]


# ---------------------------------------------------------------- the overhead benchmark, in smoke mode

def test_hook_overhead_bench_runs(tmp_path):
    out = tmp_path / "hooks.json"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "hook_overhead.py"), "--smoke", "--json",
                        str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    for w in ("tiny", "seed"):
        res = report["workloads"][w]
        assert set(res) == {"hand", "public", "train_", "train_ (pre-plugin loop)", "train_+hook", "train_+4hooks"}
        assert all(r["us_per_step"] > 0 for r in res.values())


def test_dir_lists_the_names_loaded_on_first_use():
    names = dir(fx)
    for name in ("hookimpl", "hookspec", "PluginError", "plugins", "callbacks", "distributed", "Dense", "train_"):
        assert name in names, name
    assert names == sorted(names)
