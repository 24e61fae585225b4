"""Training-time faults: a KeyboardInterrupt leaves the model and the optimiser
state as they were after a whole number of steps (a step is applied whole or not at all),
and exploding gradients are caught before they reach the parameters.

Interrupts are raised deterministically (from the loss, before the update; from a callback,
after it) and asynchronously (a real SIGINT at random moments of a training run), and the
state is compared bit for bit with a reference run stopped at the same step.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import _core
from fluxrs.io import _opt_leaves
from fluxrs.optimise.rules import Rule


class SignStep(Rule):
    """A rule implemented in Python only (per-parameter apply, a Python int as state), slow
    enough that an interrupt at a random moment often lands inside the update."""

    fields, defaults = ("eta",), (0.01,)

    def init(self, x):
        return 0

    def apply(self, state, x, dx):
        time.sleep(0.0005)
        return state + 1, dx.sign() * self.eta


RULES = {
    "Adam": lambda: fx.Adam(0.01),
    "Momentum": lambda: fx.Momentum(0.01, 0.9),
    "chain": lambda: fx.OptimiserChain(fx.ClipNorm(1.0), fx.WeightDecay(1e-3), fx.Adam(0.01)),
    "python-rule": lambda: SignStep(0.01),
}


def make(rule: str, norm: bool = False):
    fx.seed_(0)
    layers = [fx.Dense(3, 16, fx.tanh)] + ([fx.BatchNorm(16)] if norm else []) + [fx.Dense(16, 1)]
    model = fx.Chain(*layers)
    return model, fx.setup(RULES[rule](), model)


def data(n: int = 12):
    rng = np.random.default_rng(42)
    out = []
    for _ in range(n):
        x = rng.normal(size=(8, 3)).astype(np.float32)
        out.append((x, np.sin(x.sum(1, keepdims=True)).astype(np.float32)))
    return out


def loss(m, x, y):
    return fx.mse(m(x), y)


def snapshot(model, opt) -> dict:
    """Every tensor of the model and every piece of optimiser state, copied, by name."""
    out = {}

    def walk(node, name):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{name}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{name}.{i}")
        elif node is not None:
            out[name] = np.array(node, copy=True)

    walk(fx.state(model), "model")
    for path, leaf in _opt_leaves(opt):
        s = leaf.state
        if isinstance(s, _core.OptState):
            for i, per in enumerate(s.arrays):
                for j, a in enumerate(per):
                    out[f"opt.{path}.arrays.{i}.{j}"] = a.numpy().copy()
            for i, per in enumerate(s.scalars):
                out[f"opt.{path}.scalars.{i}"] = np.array(per, dtype=np.float64)
        else:
            out[f"opt.{path}.state"] = np.array(s, dtype=object)
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def reference(rule: str, steps: int, norm: bool = False) -> dict:
    model, opt = make(rule, norm)
    fx.train_(loss, model, data()[:steps], opt)
    return snapshot(model, opt)


# ---------------------------------------------------------------- deterministic interrupts

@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("norm", [False, True], ids=["mlp", "batchnorm"])
def test_interrupt_in_the_loss_applies_nothing_of_that_step(rule, norm):
    k = 5
    model, opt = make(rule, norm)
    calls = [0]

    def interrupted(m, x, y):
        if calls[0] == k:
            raise KeyboardInterrupt  # as Ctrl-C arriving before this step's forward pass
        calls[0] += 1
        return loss(m, x, y)

    with pytest.raises(KeyboardInterrupt):
        fx.train_(interrupted, model, data(), opt)
    assert_same(snapshot(model, opt), reference(rule, k, norm))
    # and the run goes on from there as if nothing had happened
    fx.train_(loss, model, data()[k:], opt)
    assert_same(snapshot(model, opt), reference(rule, len(data()), norm))


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("norm", [False, True], ids=["mlp", "batchnorm"])
def test_interrupt_in_a_callback_keeps_the_whole_step(rule, norm):
    k = 5
    model, opt = make(rule, norm)
    steps = [0]

    def cb():
        steps[0] += 1
        if steps[0] == k:
            raise KeyboardInterrupt  # after the k-th update

    with pytest.raises(KeyboardInterrupt):
        fx.train_(loss, model, data(), opt, cb=cb)
    assert_same(snapshot(model, opt), reference(rule, k, norm))


@pytest.mark.parametrize("rule", ["Adam", "python-rule"])
def test_interrupt_after_the_forward_pass_leaves_the_running_statistics(rule):
    """Ctrl-C during the backward pass of a model with BatchNorm: the forward pass has already
    updated the running statistics, the optimiser has not run. A whole step or nothing of it
    means the statistics must be as before that step."""
    k = 5
    model, opt = make(rule, norm=True)
    calls = [0]

    def interrupted(m, x, y):
        out = loss(m, x, y)  # the forward pass (running statistics updated)
        if calls[0] == k:
            raise KeyboardInterrupt  # ... and Ctrl-C before the update
        calls[0] += 1
        return out

    with pytest.raises(KeyboardInterrupt):
        fx.train_(interrupted, model, data(), opt)
    got, want = snapshot(model, opt), reference(rule, k, norm=True)
    if not same(got, want):
        stats = [n for n in got if not np.array_equal(got[n], want[n])]
        assert all("running_" in n for n in stats), stats
        pytest.xfail(f"train_ leaves the interrupted step's BatchNorm statistics in place ({', '.join(stats)}): "
                     "train_ should restore the non-trainable state of a step that does not complete")


# ---------------------------------------------------------------- a real SIGINT at a random moment

@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize("rule", sorted(RULES))
def test_sigint_at_random_moments_leaves_a_whole_number_of_steps(rule):
    """SIGINT from another thread at random times during training: afterwards the model and
    optimiser state must equal the reference after some whole number of steps."""
    items = data(40)
    model, opt = make(rule)
    refs = [snapshot(model, opt)]
    fx.train_(loss, model, items, opt, cb=lambda: refs.append(snapshot(model, opt)))
    t0 = time.perf_counter()
    model, opt = make(rule)
    fx.train_(loss, model, items, opt)
    duration = time.perf_counter() - t0

    armed = [False]

    def handler(signum, frame):
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    rng = np.random.default_rng(0)
    hits = []
    try:
        for trial in range(25):
            model, opt = make(rule)
            armed[0] = True
            timer = threading.Timer(rng.uniform(0, duration), os.kill, (os.getpid(), signal.SIGINT))
            try:
                try:
                    timer.start()
                    fx.train_(loss, model, items, opt)
                finally:
                    armed[0] = False  # (the handler disarms too: a late signal cannot raise twice)
            except KeyboardInterrupt:
                pass
            timer.cancel()
            timer.join()
            got = snapshot(model, opt)
            matches = [j for j, r in enumerate(refs) if same(got, r)]
            assert matches, f"trial {trial}: the state matches no whole number of steps"
            hits.append(matches[0])
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(set(hits)) > 1, f"the interrupts all landed at step {hits[0]}"


# ---------------------------------------------------------------- exploding gradients

def _infinite_gradient_model():
    """A model whose output is positive (a finite gradient of sqrt) until `_explode` zeroes
    its last layer (an infinite one)."""
    fx.seed_(0)
    m = fx.Chain(fx.Dense(2, 3, fx.relu), fx.Dense(3, 1, fx.relu))
    m[1].bias.assign_(1.0)
    return m


def _explode(m):
    m[1].bias.assign_(0.0)
    m[1].weight.assign_(0.0)


def _sqrt_loss(m, x):
    return (m(x) ** 0.5).sum()  # finite (0) where the output is 0, but its gradient is infinite there


def test_clipnorm_stops_an_infinite_gradient_before_any_update():
    model = _infinite_gradient_model()
    opt = fx.setup(fx.OptimiserChain(fx.ClipNorm(1.0), fx.Adam(0.1)), model)
    x = np.ones((4, 2), np.float32)
    ok = [(np.full((4, 2), 0.1, np.float32),)] * 3
    fx.train_(_sqrt_loss, model, ok, opt)  # three ordinary steps (the output is positive there)
    _explode(model)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"(?i)ClipNorm: gradient has 2-norm (inf|nan)"):
        fx.train_(_sqrt_loss, model, [(x,)], opt)
    assert_same(snapshot(model, opt), before)  # nothing of the step was applied


def test_exploding_gradient_norm_is_visible_in_a_custom_loop():
    """Without ClipNorm: the explicit style hands the gradient to the training loop, so a loop
    that computes its norm sees the explosion before applying it. (train_ itself has no hook
    that receives the gradient; ClipNorm(throw=True) is its guard.)"""
    model = _infinite_gradient_model()
    opt = fx.setup(fx.Adam(0.1), model)
    x = np.ones((4, 2), np.float32)
    norms = []
    for step, d in enumerate([(np.full((4, 2), 0.1, np.float32),), (x,)]):
        if step == 1:
            _explode(model)
        val, (g, _) = fx.withgradient(_sqrt_loss, model, *d)
        sq = [float((t.astype("float64") ** 2).sum()) for t in fx.params(g)]
        norms.append(math.sqrt(sum(sq)))
        if not math.isfinite(norms[-1]):
            break
        fx.update_(opt, model, g)
    assert math.isfinite(norms[0]) and not math.isfinite(norms[1])


def test_non_finite_loss_raises_before_its_update_by_default():
    model, opt = make("Adam")
    items = data()
    items[3] = (items[3][0], np.full_like(items[3][1], np.nan))
    with pytest.raises(fx.NonFiniteLossError) as e:
        fx.train_(loss, model, items, opt)
    assert e.value.index == 3
    assert_same(snapshot(model, opt), reference("Adam", 3))
