"""Hook overhead per training step: `fx.train_` with no plugins against a hand-written
loop, and what an active plugin costs.

    python bench/hook_overhead.py            # ~1 minute; table to stdout
    python bench/hook_overhead.py --smoke    # a few seconds (tests run this)
    python bench/hook_overhead.py --json out.json

Variants, each one epoch over the same list of batches, same model, same rule:

* ``hand``: the loop `train_` runs inside, written out: ``_core.push_watch`` / loss /
  ``pop_watch`` / ``_core.grad`` / ``update_leaves`` / ``float(loss)`` per batch;
* ``public``: the loop users write with the public API: ``fx.withgradient`` + ``fx.update_``;
* ``train_``: ``fx.train_(loss, model, data, opt)`` with no plugin implementing a training
  hook (the case that must not be measurably slower than ``hand``);
* ``train_ (pre-plugin loop)``: the same `train_` with its loop replaced by the loop it had
  before plugins (a verbatim copy below): the difference to ``train_`` is what the hook code
  costs when no plugin is active;
* ``train_+hook``: ``callbacks=[p]`` with a plugin whose ``on_batch_end`` does nothing (the
  same list every call, as in ``for epoch ...: train_(..., callbacks=cbs)``);
* ``train_+4hooks``: ``on_batch_begin`` and ``on_batch_end`` in two plugins each.

Per-step differences are also given paired by round (variant minus ``hand`` in the same
round; median and interquartile range), which cancels most of the machine's drift.

Rounds are interleaved (every variant once per round, in a rotating order) after a warm-up;
reported: the median over rounds of microseconds per step, its spread (min-max over rounds),
and the ratio to ``hand``; then the fixed cost per call (on empty data), which the per-step
numbers include spread over the batches of a call. Workloads: ``tiny`` (Dense 8→8→1, batch 16: Python per-step cost
dominates, so overhead shows most) and ``seed`` (the spec's Chain(Dense(784,32,σ), Dense(32,10),
softmax) with mse, batch 32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # an installed fluxrs (wheel or `maturin develop`) wins; fall back to a built source tree
    import fluxrs  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "python"))

import fluxrs as fx  # noqa: E402
from fluxrs import _core  # noqa: E402
from fluxrs.optimise.interface import update_leaves  # noqa: E402


class NoOp:
    @fx.hookimpl
    def on_batch_end(self, step, loss):
        pass


class NoOp2:
    @fx.hookimpl
    def on_batch_begin(self, step):
        pass

    @fx.hookimpl
    def on_batch_end(self, step, loss):
        pass


def workload(name: str, n_batches: int):
    rng = np.random.default_rng(0)
    fx.seed_(0)
    if name == "tiny":
        model = fx.Chain(fx.Dense(8, 8, fx.relu), fx.Dense(8, 1))
        xs = [rng.normal(size=(16, 8)).astype(np.float32) for _ in range(n_batches)]
        ys = [rng.normal(size=(16, 1)).astype(np.float32) for _ in range(n_batches)]
    elif name == "seed":
        model = fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)
        xs = [rng.random(size=(32, 784), dtype=np.float32) for _ in range(n_batches)]
        ys = [np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)] for _ in range(n_batches)]
    else:
        raise ValueError(name)
    data = [(fx.tensor(x), fx.tensor(y)) for x, y in zip(xs, ys)]
    return model, data


def loss(m, x, y):
    return fx.mse(m(x), y)


def _pre_plugin_loop(data, step, cb, progress, desc):
    """fluxrs.train._loop as it was before plugins (commit 73887b9), verbatim but for names."""
    from fluxrs.train import SkipStep, StopTraining, _callbacks, _progress
    cbs = _callbacks(cb)
    bar = _progress(data, progress, desc)
    running = None
    try:
        for i, d in enumerate(data):
            try:
                val = step(i, d)
            except SkipStep:
                if bar is not None:
                    bar.update(1)
                continue
            try:
                for c in cbs:
                    c()
            except SkipStep:
                pass
            if bar is not None:
                if val is not None:
                    running = val if running is None else 0.9 * running + 0.1 * val
                    bar.set_postfix(loss=f"{running:.4g}", refresh=False)
                bar.update(1)
    except StopTraining:
        pass
    finally:
        if bar is not None and bar is not progress:
            bar.close()


def make_variants(model, data):
    opt = fx.setup(fx.Descent(0.01), model)  # tiny steps: the model stays put across rounds
    xs = fx.params(model)
    xs = list(xs)
    # match parameters to their Leafs as train_ does once per call
    from fluxrs.optimise.interface import _gather
    plan = _gather(opt, model, None, everything=True)
    pxs = [x for x, _, _ in plan]
    leaves = [leaf for _, _, leaf in plan]
    assert len(pxs) == len(xs)

    def hand():
        for x, y in data:
            _core.push_watch(pxs)
            try:
                val = loss(model, x, y)
            finally:
                _core.pop_watch()
            float(val)
            update_leaves(pxs, _core.grad(val, pxs), leaves)

    def public():
        for x, y in data:
            val, grads = fx.withgradient(lambda m: loss(m, x, y), model)
            float(val)
            fx.update_(opt, model, grads[0])

    def train():
        fx.train_(loss, model, data, opt)

    import fluxrs.train as T

    def train_pre():
        loop, hooks = T._loop, T._hooks
        T._loop = lambda data, step, cb, progress, desc, s=None, steps=None: _pre_plugin_loop(data, step, cb, progress, desc)
        T._hooks = lambda *args: None
        try:
            fx.train_(loss, model, data, opt)
        finally:
            T._loop, T._hooks = loop, hooks

    def with_callbacks(*plugins):
        cbs = list(plugins)

        def run():
            fx.train_(loss, model, data, opt, callbacks=cbs)
        return run

    return {"hand": hand, "public": public, "train_": train, "train_ (pre-plugin loop)": train_pre,
            "train_+hook": with_callbacks(NoOp()), "train_+4hooks": with_callbacks(NoOp2(), NoOp2())}


def measure(name: str, n_batches: int, rounds: int, warmup_s: float) -> dict:
    model, data = workload(name, n_batches)
    variants = make_variants(model, data)
    names = list(variants)
    t_end = time.perf_counter() + warmup_s
    while True:  # warm-up: allocator, caches, the plugin manager (created by the first train_)
        for f in variants.values():
            f()
        if time.perf_counter() >= t_end:
            break
    per_step: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            variants[k]()
            per_step[k].append((time.perf_counter() - t0) / n_batches * 1e6)
    hand = statistics.median(per_step["hand"])
    out = {}
    for k in names:
        med = statistics.median(per_step[k])
        diffs = sorted(a - b for a, b in zip(per_step[k], per_step["hand"]))
        q = statistics.quantiles(diffs, n=4) if len(diffs) >= 2 else [diffs[0]] * 3
        out[k] = {"us_per_step": med, "min": min(per_step[k]), "max": max(per_step[k]), "ratio_to_hand": med / hand,
                  "paired_minus_hand": statistics.median(diffs), "paired_iqr": [q[0], q[2]], "rounds": per_step[k]}
    return out


def fixed_costs(rounds: int) -> dict:
    """Per-call costs, on empty data: `train_` with no plugin (the check that finds no hook),
    with ``callbacks=[one plugin]`` (the run's own plugin manager: reused for the same list,
    made anew for new plugins), and an empty ``fx.epochs(1)`` loop."""
    m = fx.Dense(2, 1)
    opt = fx.setup(fx.Descent(0.1), m)
    cb = [NoOp()]
    calls = {"train_ (no plugins)": lambda: fx.train_(loss, m, [], opt),
             "train_ callbacks=[plugin] (same list)": lambda: fx.train_(loss, m, [], opt, callbacks=cb),
             "train_ callbacks=[new plugin]": lambda: fx.train_(loss, m, [], opt, callbacks=[NoOp()]),
             "epochs(1) loop": lambda: [None for _ in fx.epochs(1)]}
    n = 50
    out = {}
    for k, f in calls.items():
        for _ in range(5):
            f()
        ts = []
        for _ in range(max(rounds, 3)):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            ts.append((time.perf_counter() - t0) / n * 1e6)
        out[k] = statistics.median(ts)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few rounds (seconds)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--batches", type=int, default=None, help="batches per epoch (per timed call)")
    ap.add_argument("--workloads", default="tiny,seed")
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.smoke else 31)
    n = args.batches or (20 if args.smoke else 200)
    warm = 0.05 if args.smoke else 1.0

    plugins = fx.plugins.registered()
    report = {"meta": {"python": sys.version.split()[0], "machine": platform.machine(), "smoke": args.smoke,
                       "rounds": rounds, "batches_per_call": n, "fluxrs": fx.__version__,
                       "plugins_registered": sorted(plugins), "installed_plugins": sorted(fx.plugins.installed()),
                       "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
              "workloads": {}}
    print(f"hook overhead: median us/step over {rounds} interleaved rounds of {n} batches "
          f"(registered plugins: {', '.join(sorted(plugins))})")
    for w in args.workloads.split(","):
        res = measure(w, n, rounds, warm)
        report["workloads"][w] = res
        print(f"\n{w}")
        print(f"  {'variant':<27}{'us/step':>9}{'min':>9}{'max':>9}{'vs hand':>9}   {'paired - hand [IQR]':>24}")
        for k, r in res.items():
            iqr = f"{r['paired_minus_hand']:+.2f} [{r['paired_iqr'][0]:+.2f}, {r['paired_iqr'][1]:+.2f}]"
            print(f"  {k:<27}{r['us_per_step']:>9.2f}{r['min']:>9.2f}{r['max']:>9.2f}{r['ratio_to_hand']:>9.3f}   "
                  f"{iqr:>24}")
        pre = res["train_"]["paired_minus_hand"] - res["train_ (pre-plugin loop)"]["paired_minus_hand"]
        hook = res["train_+hook"]["paired_minus_hand"] - res["train_"]["paired_minus_hand"]
        print(f"  hook code with no plugin (train_ minus pre-plugin loop): {pre:+.2f} us/step; "
              f"one active on_batch_end hook: {hook:+.2f} us/step")
    fixed = fixed_costs(rounds)
    report["per_call_us"] = fixed
    print("\nfixed cost per call (empty data), median us: " + "; ".join(f"{k}: {v:.1f}" for k, v in fixed.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
