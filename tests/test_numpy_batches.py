"""numpy batches fed to layers and losses: read in place where that is safe (the kernel only
reads them and returns a new tensor), copied where it is not; the results are the same."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import _core


def _like(dtype=np.float32):
    return fx.tensor(np.zeros((1,), dtype))


def test_a_contiguous_writeable_batch_is_read_in_place():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = _core.host_like(x, _like(), True)
    x[1, 2] = 42.0
    assert np.asarray(t)[1, 2] == 42.0  # the same memory: no copy was made


@pytest.mark.parametrize("make", [
    lambda a: a[:, ::2],                                     # strided
    lambda a: np.asfortranarray(a),                          # column-major
    lambda a: a.astype(np.float64),                          # another dtype than the layer's
    lambda a: np.frombuffer(b"\0" + a.tobytes(), np.float32, a.size, 1).reshape(a.shape),  # misaligned, read-only
], ids=["strided", "fortran", "float64", "misaligned"])
def test_batches_that_cannot_be_read_in_place_are_copied(make):
    x = make(np.arange(24, dtype=np.float32).reshape(4, 6))
    want = np.array(x, dtype=np.float32)
    t = _core.host_like(x, _like(), True)
    if x.flags.writeable:
        x[...] = -1.0
    np.testing.assert_array_equal(np.asarray(t), want)


def test_a_read_only_batch_is_copied():
    x = np.ones((2, 3), np.float32)
    x.flags.writeable = False
    t = _core.host_like(x, _like(), True)
    x.flags.writeable = True  # the tensor must not have kept a view of memory it may not write
    x[0, 0] = 5.0
    assert np.asarray(t)[0, 0] == 1.0


def test_without_lend_a_batch_is_always_copied():
    x = np.ones((2, 3), np.float32)
    t = _core.host_like(x, _like())
    x[0, 0] = 5.0
    assert np.asarray(t)[0, 0] == 1.0


def test_the_tensor_keeps_the_array_alive():
    t = _core.host_like(np.full((64, 64), 3.0, np.float32), _like(), True)
    gc.collect()
    _ = [np.full((64, 64), 7.0, np.float32) for _ in range(50)]  # reuse of freed memory would show
    assert float(t.sum()) == 3.0 * 64 * 64


def test_layers_return_new_tensors_not_the_batch():
    fx.seed_(0)
    for layer, x in [(fx.Dense(4, 4), np.ones((2, 4), np.float32)),
                     (fx.Dense(4, 4, fx.relu), np.ones((2, 4), np.float32)),
                     (fx.Conv((3,), (1, 2)), np.ones((2, 1, 5), np.float32))]:
        y = layer(x)
        before = np.array(y)
        x[...] = 100.0
        np.testing.assert_array_equal(np.asarray(y), before)


@pytest.mark.parametrize("style", ["custom", "train"])
def test_training_on_numpy_batches_equals_training_on_tensors(style):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32))
               for _ in range(6)]

    def run(feed):
        fx.seed_(1)
        model = fx.Chain(fx.Dense(5, 7, fx.σ), fx.Dense(7, 3))
        opt = fx.setup(fx.Adam(0.01), model)
        data = [(feed(x), feed(y)) for x, y in batches]
        if style == "train":
            fx.train_(lambda m, x, y: fx.mse(m(x), y), model, data, opt)
        else:
            for x, y in data:
                g = fx.gradient(lambda m: fx.mse(m(x), y), model)[0]
                fx.update_(opt, model, g)
        return [np.array(p) for p in fx.params(model)]

    for a, b in zip(run(lambda a: a), run(fx.tensor)):
        np.testing.assert_array_equal(a, b)  # the same numbers in the same order: bitwise


def test_batches_lent_on_threads_are_released_there():
    # each thread makes, lends and drops its own batches; the tape that holds them is freed
    # inside the backward pass, without the GIL
    errors = []

    def body(seed):
        try:
            rng = np.random.default_rng(seed)
            model = fx.Dense(16, 4)
            opt = fx.setup(fx.Descent(0.01), model)
            for _ in range(200):
                x = rng.standard_normal((8, 16)).astype(np.float32)
                y = rng.standard_normal((8, 4)).astype(np.float32)
                g = fx.gradient(lambda m: fx.mse(m(x), y), model)[0]
                fx.update_(opt, model, g)
            assert np.isfinite(np.asarray(model.weight)).all()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
