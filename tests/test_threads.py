"""Threads: autodiff state and random numbers are per thread, so `train_` on separate
models in 4 threads gives bit-identical results to the same runs one after another; a model
shared for inference while another thread trains it neither crashes nor returns garbage;
each thread's generator is its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fluxrs as fx

N_THREADS = 4


def _data(seed: int):
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = np.stack([np.sin(x[:, :3].sum(1)), np.cos(x[:, 3:].sum(1))], axis=1).astype(np.float32)
    return x, y


def train_one(seed: int, barrier: threading.Barrier | None = None) -> dict:
    """A whole training run that uses this thread's generator everywhere: initialisation,
    Dropout masks, BatchNorm statistics, DataLoader shuffling."""
    fx.seed_(seed)  # inside the thread: only this thread's generator
    model = fx.Chain(fx.Dense(6, 32, fx.relu), fx.Dropout(0.2), fx.BatchNorm(32), fx.Dense(32, 16, fx.tanh),
                     fx.Dense(16, 2))
    opt = fx.setup(fx.OptimiserChain(fx.ClipNorm(5.0), fx.Adam(0.01)), model)
    x, y = _data(seed)
    loader = fx.DataLoader((x, y), batchsize=16, shuffle=True)
    losses = []
    if barrier is not None:
        barrier.wait()  # start together, so the runs really overlap
    for _ in range(4):
        fx.train_(lambda m, xb, yb: fx.mse(m(xb), yb), model, loader, opt,
                  cb=lambda: losses.append(float(fx.mse(model(x[:8]), y[:8]))))
    out = {f"param {i}": p.numpy().copy() for i, p in enumerate(fx.params(model))}
    st = fx.state(model)
    out["running_mean"] = st["layers"][2]["running_mean"]
    out["running_var"] = st["layers"][2]["running_var"]
    out["losses"] = np.array(losses)
    out["next draw"] = fx.randn(3).numpy().copy()  # the generator advanced exactly as in sequence
    return out


def test_four_threads_training_separate_models_match_sequential_runs_bit_for_bit():
    sequential = [train_one(s) for s in range(N_THREADS)]
    barrier = threading.Barrier(N_THREADS)
    with ThreadPoolExecutor(N_THREADS) as pool:
        threaded = list(pool.map(lambda s: train_one(s, barrier), range(N_THREADS)))
    for s, (a, b) in enumerate(zip(sequential, threaded)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"thread {s}: {k}")
    # and the runs are really different from each other (each thread used its own seed)
    assert not np.array_equal(sequential[0]["param 0"], sequential[1]["param 0"])


def test_model_shared_for_inference_while_another_thread_trains_it():
    fx.seed_(7)
    model = fx.Chain(fx.Dense(6, 32, fx.relu), fx.Dropout(0.3), fx.BatchNorm(32), fx.Dense(32, 2))
    opt = fx.setup(fx.Adam(0.01), model)
    x, y = _data(7)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = [0] * 3

    def trainer():
        try:
            for _ in range(30):
                fx.train_(lambda m, xb, yb: fx.mse(m(xb), yb), model, fx.DataLoader((x, y), batchsize=8), opt)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    def reader(i):
        try:
            xb = x[i * 8:(i + 1) * 8]
            while not stop.is_set():
                out = model(xb)  # no gradient on this thread: test mode, nothing recorded
                a = out.numpy()
                assert a.shape == (8, 2)
                assert np.all(np.isfinite(a)), a
                assert not out.is_tracked
                seen[i] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=trainer)] + [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert all(n > 0 for n in seen), seen
    # the reads did not disturb the training: its gradient recording is per thread
    assert np.all(np.isfinite(model(x).numpy()))


def test_each_thread_has_its_own_generator():
    n = 8
    expected = {s: (np.random.default_rng(s).standard_normal(5).astype(np.float32)) for s in range(n)}
    fx.seed_(123)
    main_before = fx.random.get_state()
    barrier = threading.Barrier(n)

    def draw(s):
        fx.seed_(s)
        barrier.wait()  # every thread has seeded before any draws
        return [fx.randn(5).numpy().copy() for _ in range(50)][0]

    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(draw, range(n)))
    for s in range(n):
        np.testing.assert_array_equal(got[s], expected[s], err_msg=f"thread seeded with {s}")
    # seeding in other threads left this thread's generator alone
    assert fx.random.get_state() == main_before


def test_unseeded_threads_get_independent_streams():
    def first_draw(_):
        return fx.randn(8).numpy().copy()

    with ThreadPoolExecutor(4) as pool:
        draws = list(pool.map(first_draw, range(4)))
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(draws[i], draws[j])


def test_gradient_recording_is_per_thread():
    """A thread inside fx.gradient does not make another thread's ops record."""
    inside = threading.Event()
    release = threading.Event()
    result = {}

    def differentiating():
        def f(x):
            inside.set()
            release.wait(timeout=30)
            return (x * x).sum()
        result["g"] = fx.gradient(f, fx.ones(3))[0]

    t = threading.Thread(target=differentiating)
    t.start()
    assert inside.wait(timeout=30)
    try:
        assert not fx.in_gradient()
        w = fx.ones(3)
        assert not (w * w).is_tracked
    finally:
        release.set()
        t.join(timeout=30)
    np.testing.assert_array_equal(result["g"].numpy(), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("n", [N_THREADS])
def test_concurrent_gradients_match_sequential(n):
    fx.seed_(0)
    ws = [fx.randn(64, 64) for _ in range(n)]
    xs = [fx.randn(32, 64) for _ in range(n)]

    def g(i):
        return fx.gradient(lambda w: fx.tanh(xs[i] @ w).sum(), ws[i])[0].numpy().copy()

    seq = [g(i) for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        for _ in range(5):
            par = list(pool.map(g, range(n)))
            for a, b in zip(seq, par):
                np.testing.assert_array_equal(a, b)
