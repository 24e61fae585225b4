"""The GPU backend through the Python API, against the CPU backend.

In the default (CPU-only) build only the first tests run: `fx.gpu` must fall back to the
CPU with one warning (or, strict, fail with a true hint) and nothing else may notice. In the
`gpu` build (`MATURIN_PEP517_ARGS="--features gpu" pip install .`, or `maturin develop
--release --features gpu`) the rest run on whatever adapter is found; CI uses Debian's CPU
Vulkan driver (lavapipe) and sets FLUXRS_REQUIRE_GPU=1, so a missing adapter fails there
instead of skipping.

Tolerance: 2e-5 absolute + 2e-5 relative (the GPU's exp/log/tanh are the driver's, and
its sums run in another order).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import _core

TOL = dict(rtol=2e-5, atol=2e-5)


def test_default_build_never_loads_a_gpu_driver():
    """Importing fluxrs and training on the CPU opens no GPU device (no wgpu/Vulkan load)."""
    code = ("import fluxrs as fx, numpy as np\n"
            "m = fx.Dense(3, 2)\n"
            "g = fx.gradient(lambda m: fx.mse(m(np.ones((4, 3), np.float32)), np.zeros((4, 2), np.float32)), m)\n"
            "maps = open('/proc/self/maps').read()\n"
            "print('vulkan' in maps or 'lvp' in maps)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", "a GPU driver was loaded by CPU-only work"


#: The build command the errors must name (the `gpu` extra does not exist).
_HINT = 'MATURIN_PEP517_ARGS="--features gpu" pip install .'


@pytest.fixture
def without_gpu(monkeypatch):
    """A process with no usable GPU, not required to have one, that has not warned yet."""
    if fx.gpu_available():
        pytest.skip("a GPU is available")
    monkeypatch.delenv("FLUXRS_REQUIRE_GPU", raising=False)
    monkeypatch.setattr(fx.device, "_fallback_warned", False)


def test_gpu_without_a_gpu_returns_its_argument_on_the_cpu_with_one_warning(without_gpu):
    m, x = fx.Dense(2, 2), fx.tensor([1.0, 2.0])
    with pytest.warns(RuntimeWarning, match="fx.gpu: no GPU") as record:
        assert fx.gpu(m) is m
        assert fx.gpu(x) is x
        a = fx.gpu(np.ones((2, 2), np.float32))
    ours = [str(w.message) for w in record if "fx.gpu" in str(w.message)]
    assert len(ours) == 1, ours
    assert m.weight.device == "cpu" and x.device == "cpu"
    # an array becomes a tensor, as on the GPU, so the type does not depend on the machine
    assert isinstance(a, fx.Tensor) and a.device == "cpu"
    reason = ours[0]
    if not _core.GPU_COMPILED:
        assert "built without the GPU backend" in reason and _HINT in reason
    assert "fluxrs[gpu]" not in reason


def test_gpu_fallback_warns_once_per_process():
    """Three calls from three lines, with every warning shown: the message appears once."""
    code = ("import warnings, fluxrs as fx\n"
            "warnings.simplefilter('always')\n"
            "m = fx.gpu(fx.Dense(2, 2))\n"
            "x = fx.gpu(fx.tensor([1.0]))\n"
            "y = fx.gpu(fx.tensor([2.0]))\n"
            "print(fx.gpu_available(), x.device, y.device, m.weight.device)\n")
    env = {k: v for k, v in os.environ.items() if k != "FLUXRS_REQUIRE_GPU"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    if r.stdout.split()[0] == "True":
        pytest.skip("a GPU is available")
    assert r.stdout.split()[1:] == ["cpu"] * 3
    assert r.stderr.count("fx.gpu: no GPU") == 1, r.stderr


def test_a_model_moved_by_gpu_without_a_gpu_trains(without_gpu):
    """The README's device-agnostic loop runs on a machine without a GPU."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(32, 3)).astype(np.float32)
    ys = xs @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    with pytest.warns(RuntimeWarning, match="fx.gpu: no GPU"):
        model = fx.gpu(fx.Dense(3, 1))
    loss = lambda m, x, y: fx.mse(m(fx.gpu(x)), fx.gpu(y))  # noqa: E731
    opt = fx.setup(fx.Adam(0.05), model)
    before = float(loss(model, xs, ys))
    for _ in range(20):
        fx.train_(loss, model, [(xs, ys)], opt)
    assert float(loss(model, xs, ys)) < 0.5 * before
    assert fx.cpu(model).weight.device == "cpu"


def test_gpu_strict_without_a_gpu_raises_saying_why(without_gpu, monkeypatch):
    match = "built without the GPU backend" if not _core.GPU_COMPILED else "no GPU adapter"
    with pytest.raises(RuntimeError, match=match) as e:
        fx.gpu(fx.Dense(2, 2), strict=True)
    if not _core.GPU_COMPILED:
        assert _HINT in str(e.value) and "fluxrs[gpu]" not in str(e.value)
    # FLUXRS_REQUIRE_GPU (what CI sets for the GPU tests) makes every call strict
    monkeypatch.setenv("FLUXRS_REQUIRE_GPU", "1")
    with pytest.raises(RuntimeError, match=match):
        fx.gpu(fx.Dense(2, 2))
    # an explicit move to the GPU never falls back
    monkeypatch.delenv("FLUXRS_REQUIRE_GPU")
    with pytest.raises(RuntimeError, match=match):
        fx.tensor([1.0, 2.0]).to_device("gpu")
    with pytest.raises(RuntimeError, match=match):
        fx.to_device(fx.Dense(2, 2), "gpu")
    # and the CPU keeps working
    assert fx.cpu(fx.tensor([1.0])).device == "cpu"


def _need_gpu():
    if fx.gpu_available():
        return
    if os.environ.get("FLUXRS_REQUIRE_GPU"):
        raise AssertionError(f"FLUXRS_REQUIRE_GPU is set but there is no GPU: {_why_no_gpu()}")
    pytest.skip(f"no GPU backend or adapter: {_why_no_gpu()}")


def _why_no_gpu() -> str:
    return fx.device._why_no_gpu()


gpu_only = pytest.mark.usefixtures("gpu_required")


@pytest.fixture
def gpu_required():
    _need_gpu()


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, size=shape).astype(np.float32)


@gpu_only
def test_tensors_move_and_report_their_device():
    x = fx.tensor(rnd(3, 4))
    g = fx.gpu(x)
    assert g.device == "gpu" and x.device == "cpu"
    np.testing.assert_array_equal(np.asarray(g), np.asarray(x))   # numpy() reads back
    np.testing.assert_array_equal(fx.cpu(g).numpy(), x.numpy())
    assert fx.gpu(g) is g or fx.gpu(g).device == "gpu"
    with pytest.raises(TypeError, match="float32"):
        fx.gpu(fx.tensor(rnd(2), dtype="float64"))
    with pytest.raises(ValueError, match="unknown device"):
        x.to_device("tpu")


@gpu_only
def test_gpu_tensors_refuse_dlpack_export_and_import_to_the_host():
    g = fx.gpu(fx.tensor(rnd(2, 3)))
    assert g.__dlpack_device__() == (7, 0)  # kDLVulkan
    with pytest.raises(BufferError, match="fx.cpu"):
        np.from_dlpack(g)
    assert fx.from_dlpack(fx.cpu(g)).tolist() == fx.cpu(g).tolist()


@gpu_only
def test_mixing_devices_names_the_op_and_both_devices():
    x = fx.tensor(rnd(2, 3))
    with pytest.raises(RuntimeError, match=r"add: operands are on different devices \(gpu and cpu\)"):
        fx.gpu(x) + x
    with pytest.raises(RuntimeError, match="different devices"):
        fx.gpu(fx.Dense(3, 2))(x)


_OPS = {
    "affine": lambda x: x * 2 - 1, "div": lambda x: x / (abs(x) + 1), "rdiv": lambda x: 1 / (x * x + 1),
    "square": lambda x: x ** 2, "rpow": lambda x: 2 ** x, "neg": lambda x: -x,
    "exp": lambda x: x.exp(), "log": lambda x: (abs(x) + 0.5).log(), "sqrt": lambda x: (abs(x) + 0.5).sqrt(),
    "abs": abs, "sin": lambda x: x.sin(), "cos": lambda x: x.cos(), "sign": lambda x: x.sign() * x,
    "clamp": lambda x: x.clamp(-1.0, 0.5), "maximum": lambda x: x.maximum(x.T.reshape(5, 7) * 0.5),
    "minimum": lambda x: x.minimum(0.25),
    "relu": fx.relu, "sigmoid": fx.sigmoid, "tanh": fx.tanh, "softplus": fx.softplus, "elu": fx.elu,
    "leakyrelu": lambda x: fx.leakyrelu(x, 0.1), "gelu": fx.gelu, "swish": fx.swish,
    "softmax": lambda x: fx.softmax(x, dims=1), "logsoftmax": lambda x: fx.logsoftmax(x, dims=0),
    "sum": lambda x: x.sum(axis=1), "sum-keep": lambda x: x.sum(axis=0, keepdims=True) * x, "mean": lambda x: x.mean(),
    "max": lambda x: x.max(axis=0), "min": lambda x: x.min(axis=1), "logsumexp": lambda x: x.logsumexp(axis=1),
    "gt-where": lambda x: fx.where(x > 0.3, x * 3, -x), "le-mask": lambda x: (x <= 0.0) * x,
    "x@xT": lambda x: x @ x.T, "xT@x": lambda x: x.T @ x,
    "batched-matmul": lambda x: x.reshape(5, 7, 1) @ x.reshape(5, 1, 7), "broadcast-matmul": lambda x: x.reshape(1, 5, 7) @ x.T,
    "permute": lambda x: x.reshape(5, 7, 1).permute(2, 0, 1) * 2, "swapaxes-reshape": lambda x: x.swapaxes(0, 1).reshape(35),
    "broadcast_to": lambda x: x.reshape(5, 1, 7).broadcast_to((5, 3, 7)) * x.reshape(5, 1, 7),
    "slice-step": lambda x: x[1:5:2, ::3], "select": lambda x: x[:, 2].reshape(5, 1) * x[3], "fancy-index": lambda x: x[[4, 0, 4]],
    "concat": lambda x: fx.concat([x, x[:2] * 2], axis=0), "stack": lambda x: fx.stack([x, x.T.T], axis=1),
}


@gpu_only
@pytest.mark.parametrize("name", list(_OPS))
def test_ops_and_their_gradients_match_cpu(name):
    """Each op's value and its gradient (of a random weighting of the output) on both devices."""
    f = _OPS[name]
    x = rnd(5, 7, seed=1)

    def run(x):
        y = f(x)
        w = fx.to_device(fx.tensor(rnd(*y.shape, seed=2)), y.device)
        return y, fx.gradient(lambda x: (f(x) * w).sum(), x)[0]

    (yg, gg), (yc, gc) = run(fx.gpu(x)), run(fx.tensor(x))
    assert yg.device == "gpu" and gg.device == "gpu"
    np.testing.assert_allclose(np.asarray(yg), np.asarray(yc), **TOL)
    np.testing.assert_allclose(np.asarray(gg), np.asarray(gc), **TOL)


@gpu_only
@pytest.mark.parametrize("loss", ["mse", "mae", "logitcrossentropy", "crossentropy", "binarycrossentropy", "huber_loss",
                                  "focal_loss", "kldivergence", "dice_coeff_loss"])
def test_losses_and_their_gradients_match_cpu(loss):
    fn = getattr(fx.losses, loss)
    yhat = rnd(6, 4, seed=2)
    if loss in ("crossentropy", "binarycrossentropy", "focal_loss", "kldivergence"):
        yhat = 1 / (1 + np.exp(-yhat))
    y = np.eye(4, dtype=np.float32)[np.arange(6) % 4]

    def value_and_grad(dev):
        p = fx.to_device(fx.tensor(yhat), dev)
        l, g = fx.withgradient(lambda p: fn(p, fx.to_device(fx.tensor(y), dev)), p)
        return float(l), np.asarray(g[0])

    (lg, gg), (lc, gc) = value_and_grad("gpu"), value_and_grad("cpu")
    assert lg == pytest.approx(lc, rel=2e-5, abs=2e-6)
    np.testing.assert_allclose(gg, gc, **TOL)


@gpu_only
def test_model_gradients_mirror_the_model_and_match_cpu():
    fx.seed_(3)
    m = fx.Chain(fx.Dense(6, 16, fx.relu), fx.Dense(16, 16, fx.tanh), fx.Dense(16, 3))
    mg = fx.gpu(m)
    assert all(p.device == "gpu" for p in fx.params(mg)) and all(p.device == "cpu" for p in fx.params(m))
    x, y = rnd(10, 6, seed=4), np.eye(3, dtype=np.float32)[np.arange(10) % 3]
    loss = lambda m, x, y: fx.logitcrossentropy(m(x), y)
    gc = fx.gradient(loss, m, fx.tensor(x), fx.tensor(y))[0]
    gg = fx.gradient(loss, mg, fx.gpu(x), fx.gpu(y))[0]
    for a, b in zip(fx.functor.leaves(gg), fx.functor.leaves(gc)):
        assert a.device == "gpu"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


@gpu_only
@pytest.mark.parametrize("rule", [fx.Descent(0.1), fx.Momentum(0.01), fx.Adam(1e-2), fx.OptimiserChain(fx.ClipNorm(1.0), fx.AdamW(1e-2))],
                         ids=["Descent", "Momentum", "Adam", "ClipNorm+AdamW"])
def test_update_moves_gpu_parameters_as_on_the_cpu(rule):
    fx.seed_(5)
    m = fx.Dense(4, 3)
    mg = fx.gpu(m)
    sc, sg = fx.setup(rule, m), fx.setup(rule, mg)
    x, y = rnd(8, 4, seed=6), rnd(8, 3, seed=7)
    for _ in range(3):
        fx.update_(sc, m, fx.gradient(lambda m: fx.mse(m(x), y), m)[0])
        fx.update_(sg, mg, fx.gradient(lambda m: fx.mse(m(fx.gpu(x)), fx.gpu(y)), mg)[0])
    assert mg.weight.device == "gpu"
    np.testing.assert_allclose(np.asarray(mg.weight), m.weight.numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(mg.bias), m.bias.numpy(), **TOL)


@gpu_only
@pytest.mark.parametrize("layer", [
    lambda: fx.Conv((5,), (2, 4), fx.relu, stride=2, pad=1),
    lambda: fx.Conv((3, 3), (2, 6), fx.tanh, pad=1, dilation=2, groups=2),
    lambda: fx.CrossCor((2, 3), (2, 3), stride=(1, 2)),
    lambda: fx.ConvTranspose((3,), (2, 3), fx.sigmoid, stride=2),
    lambda: fx.Chain(fx.Conv((3, 3), (2, 3), pad=1), fx.MeanPool((2, 2)), fx.GlobalMeanPool()),
    lambda: fx.Chain(fx.Conv((3,), (2, 3), fx.relu), fx.MaxPool((2,)), fx.MaxPool((2,), stride=1, pad=1)),
], ids=["conv1d", "conv2d-groups-dilation", "crosscor", "convtranspose", "conv-meanpool", "conv-maxpool"])
def test_conv_layers_and_gradients_match_cpu(layer):
    fx.seed_(8)
    m = layer()
    nd = len(fx.params(m)[0].shape) - 2
    x = rnd(*([3, 2] + [9] * nd), seed=9)
    loss = lambda m, x: (m(x) ** 2).sum()
    lc, gc = fx.withgradient(loss, m, fx.tensor(x))
    lg, gg = fx.withgradient(loss, fx.gpu(m), fx.gpu(x))
    assert float(lg) == pytest.approx(float(lc), rel=1e-4)
    for a, b in zip(fx.functor.leaves(gg), fx.functor.leaves(gc)):
        assert a.device == "gpu"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def _seeded_dropout(cls, p):
    # the same mask stream on both devices: a fresh generator per model copy
    return lambda: cls(p, rng=np.random.default_rng(11), active=True)


@gpu_only
@pytest.mark.parametrize("layer,shape", [
    (lambda: fx.BatchNorm(3, fx.relu), (4, 3, 5)),
    (lambda: fx.LayerNorm(5), (4, 3, 5)),
    (lambda: fx.GroupNorm(4, 2), (2, 4, 6)),
    (lambda: fx.InstanceNorm(3, affine=True), (2, 3, 6)),
    (lambda: fx.RNN(3, 4), (2, 5, 3)),
    (lambda: fx.LSTM(3, 4), (2, 5, 3)),
    (lambda: fx.GRU(3, 4), (2, 5, 3)),
    (lambda: fx.Bidirectional(fx.GRU(3, 4)), (2, 5, 3)),
    (lambda: fx.MultiHeadAttention(8, nheads=2), (2, 5, 8)),
    (lambda: fx.Chain(fx.Dense(6, 6), _seeded_dropout(fx.Dropout, 0.4)()), (4, 6)),
    (lambda: fx.Chain(fx.Dense(6, 6), _seeded_dropout(fx.AlphaDropout, 0.3)()), (4, 6)),
    (lambda: fx.Upsample(scale=2), (1, 2, 3, 3)),
    (lambda: fx.Upsample("bilinear", scale=2), (1, 2, 3, 3)),
], ids=["batchnorm", "layernorm", "groupnorm", "instancenorm", "rnn", "lstm", "gru", "bidirectional-gru",
        "attention", "dropout", "alphadropout", "upsample", "upsample-bilinear"])
def test_norm_recurrent_and_other_layers_match_cpu(layer, shape):
    """Built twice from the same seed: the CPU copy, and one moved to the GPU; the recurrent
    layers run their fused CPU kernels on one side and the step-by-step cells on the other."""
    fx.seed_(12)
    mc = layer()
    fx.seed_(12)
    mg = fx.gpu(layer())
    x = rnd(*shape, seed=13)

    def loss(m, x):
        y = m(x)
        y = y[0] if isinstance(y, tuple) else y
        return (y * y).sum() + y.sum()

    lc, gc = fx.withgradient(loss, mc, fx.tensor(x))
    lg, gg = fx.withgradient(loss, mg, fx.gpu(x))
    assert float(lg) == pytest.approx(float(lc), rel=1e-4)
    for a, b in zip(fx.functor.leaves(gg), fx.functor.leaves(gc)):
        assert a.device == "gpu"
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    for a, b in zip(fx.functor.leaves(fx.state(mg)), fx.functor.leaves(fx.state(mc))):  # BatchNorm statistics
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


@gpu_only
def test_embedding_gathers_on_the_gpu_with_repeated_indices():
    fx.seed_(14)
    m = fx.Embedding(7, 4)
    mg = fx.gpu(m)
    idx = np.array([[3, 0, 3], [6, 3, 1]])
    loss = lambda m: (m(idx) ** 2).sum()
    lc, gc = fx.withgradient(loss, m)
    lg, gg = fx.withgradient(loss, mg)
    assert mg(idx).device == "gpu" and tuple(mg(idx).shape) == (2, 3, 4)
    assert float(lg) == pytest.approx(float(lc), rel=1e-5)
    np.testing.assert_allclose(np.asarray(gg[0].weight), np.asarray(gc[0].weight), **TOL)
    onehot = np.eye(7, dtype=bool)[[0, 2]]  # one-hot input, from the host
    np.testing.assert_allclose(np.asarray(mg(onehot)), np.asarray(m(onehot)), **TOL)
    # and the gather itself, on a tensor
    x = rnd(4, 5, seed=15)
    np.testing.assert_allclose(np.asarray(fx.gpu(x).index_select(1, [4, 4, 0])), x[:, [4, 4, 0]], **TOL)


@gpu_only
def test_host_arrays_follow_a_gpu_model_and_tensors_stay_put():
    """numpy input to a layer on the GPU, and numpy targets to a loss of a GPU ŷ, are uploaded;
    a CPU tensor is not moved behind the user's back."""
    fx.seed_(16)
    m = fx.gpu(fx.Dense(3, 2))
    x, y = rnd(5, 3, seed=17), rnd(5, 2, seed=18)
    out = m(x)
    assert out.device == "gpu"
    assert float(fx.mse(out, y)) == pytest.approx(float(fx.mse(fx.cpu(m)(x), y)), rel=1e-5)
    assert fx.zeros_like(out).device == "gpu" and fx.ones_like(out).device == "gpu"
    with pytest.raises(RuntimeError, match="different devices"):
        m(fx.tensor(x))


@gpu_only
def test_mnist1d_cnn_on_the_gpu_reaches_the_cpu_accuracy():
    """The MNIST-1D CNN of examples/mnist1d_table.py, same seed on both devices."""
    pytest.importorskip("mnist1d")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import mnist1d_table as t

    data = t.load_mnist1d()
    # 80 steps (two epochs): lavapipe runs the CNN at about 0.6 s a step
    gpu = t.train("cnn", data, steps=80, progress=False, device="gpu")
    cpu = t.train("cnn", data, steps=80, progress=False, device="cpu")
    assert cpu["test"] > 40, cpu
    assert abs(gpu["test"] - cpu["test"]) < 4, (gpu, cpu)


@gpu_only
def test_training_mnist1d_on_the_gpu_reaches_the_cpu_accuracy():
    """The explicit-style train_ loop on MNIST-1D, same initial weights and batches on both."""
    pytest.importorskip("mnist1d")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from mnist1d_mlp import build_model, load_mnist1d

    d = load_mnist1d()
    x, xt = d["x"].astype(np.float32), d["x_test"].astype(np.float32)
    mu, sd = x.mean(), x.std()
    x, xt = (x - mu) / sd, (xt - mu) / sd
    Y = fx.onehotbatch(d["y"], range(10)).numpy()

    def run(dev):
        fx.seed_(0)
        model = fx.to_device(build_model(), dev)
        opt = fx.setup(fx.Adam(1e-2), model)
        loader = fx.DataLoader((x, Y), batchsize=250, shuffle=True, rng=np.random.default_rng(1))
        loss = lambda m, x, y: fx.logitcrossentropy(m(fx.to_device(x, dev)), fx.to_device(y, dev))
        for _ in range(4):
            fx.train_(loss, model, loader, opt)
        with fx.no_grad():
            return float((fx.onecold(fx.cpu(model(fx.to_device(xt, dev)))) == d["y_test"]).mean())

    acc_gpu, acc_cpu = run("gpu"), run("cpu")
    assert acc_cpu > 0.35, acc_cpu
    assert abs(acc_gpu - acc_cpu) < 0.03, (acc_gpu, acc_cpu)


@gpu_only
def test_writes_into_gpu_views_land_in_place():
    a = rnd(4, 6, seed=19)
    g = fx.gpu(a)
    g[1:3, ::2] = fx.gpu(np.full((2, 3), 7.0, np.float32))
    g[:, 5] = 0.5                         # a host number, broadcast
    g[3:] = fx.gpu(np.arange(6, dtype=np.float32))  # contiguous rows past the start of the buffer
    a[1:3, ::2] = 7.0
    a[:, 5] = 0.5
    a[3:] = np.arange(6)
    assert g.device == "gpu"
    np.testing.assert_array_equal(np.asarray(g), a)


@gpu_only
def test_ctc_loss_runs_its_recursion_on_the_host_and_its_gradient_lands_on_the_gpu():
    x = np.log(np.random.default_rng(20).uniform(0.1, 1, (6, 4)).astype(np.float32))
    (lg, gg), (lc, gc) = (fx.withgradient(lambda q: fx.losses.ctc_loss(q, [0, 2, 2]), d(fx.tensor(x))) for d in (fx.gpu, fx.cpu))
    assert gg[0].device == "gpu"
    assert float(lg) == pytest.approx(float(lc), rel=1e-6)
    np.testing.assert_allclose(np.asarray(gg[0]), np.asarray(gc[0]), **TOL)
