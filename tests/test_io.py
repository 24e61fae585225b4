"""Model state and checkpoints: fx.state / fx.loadmodel_ round trips and errors, fx.save /
fx.load in the safetensors format (exact round trip of parameters, non-trainable state and
optimiser state), atomic writes (an interrupted or killed save leaves the previous file
intact), and clear errors on truncated, damaged or foreign files."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import fluxrs as fx
from fluxrs.io import CheckpointError


def make_model(seed=0):
    fx.seed_(seed)
    return fx.Chain(fx.Dense(3, 4), fx.BatchNorm(4, fx.relu), fx.Dropout(0.2), fx.Dense(4, 2))


def train(model, opt, steps, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.normal(size=(8, 3)).astype(np.float32)
        y = rng.normal(size=(8, 2)).astype(np.float32)
        g = fx.gradient(lambda m: ((m(x) - y) ** 2).mean(), model)[0]
        fx.update_(opt, model, g)


def all_tensors(model):
    return {k: v for k, v in fx.io._model_entries(model).items()}


def assert_same_model(a, b):
    ta, tb = all_tensors(a), all_tensors(b)
    assert list(ta) == list(tb)
    for k in ta:
        np.testing.assert_array_equal(ta[k].numpy(), tb[k].numpy(), err_msg=k)


def opt_arrays(opt):
    out = {}
    for path, leaf in fx.io._opt_leaves(opt):
        out[path] = ([[a.numpy().copy() for a in per] for per in leaf.state.arrays],
                     [list(per) for per in leaf.state.scalars], repr(leaf.rule), leaf.frozen)
    return out


# ---------------------------------------------------------------- state / loadmodel_

def test_state_mirrors_the_model_and_copies():
    m = make_model()
    s = fx.state(m)
    assert list(s) == ["layers"] and isinstance(s["layers"], list) and len(s["layers"]) == 4
    assert sorted(s["layers"][1]) == ["bias", "running_mean", "running_var", "scale"]  # non-trainable too
    assert s["layers"][2] is None  # Dropout holds no tensor
    assert isinstance(s["layers"][0]["weight"], np.ndarray) and s["layers"][0]["weight"].shape == (4, 3)
    before = m[0].weight.numpy().copy()
    s["layers"][0]["weight"][:] = 99  # a copy: the model is untouched
    np.testing.assert_array_equal(m[0].weight.numpy(), before)
    m[0].weight.assign_(np.zeros((4, 3), dtype=np.float32))
    assert s["layers"][0]["weight"][0, 0] == 99  # and the other way round


def test_loadmodel_from_state_round_trips():
    a, b = make_model(0), make_model(1)
    train(a, fx.setup(fx.Adam(0.01), a), 3)  # running statistics move too
    assert fx.loadmodel_(b, fx.state(a)) is b
    assert_same_model(a, b)
    # a flat dict with dotted names works as well; float64 values are converted to the model's dtype
    c = make_model(2)
    flat = {k: v.numpy().astype(np.float64) for k, v in all_tensors(a).items()}
    fx.loadmodel_(c, flat)
    assert_same_model(a, c)
    assert c[0].weight.dtype == np.float32


def test_loadmodel_errors_name_key_and_shapes_and_change_nothing():
    m = make_model(0)
    before = {k: v.numpy().copy() for k, v in all_tensors(m).items()}
    s = fx.state(make_model(1))
    s["layers"][3]["weight"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(CheckpointError, match=r"shape mismatch at 'layers\.3\.weight': the model has \(2, 4\), "
                                              r"the state has \(3, 4\)"):
        fx.loadmodel_(m, s)
    for k, v in all_tensors(m).items():  # nothing was written, not even the entries before the bad one
        np.testing.assert_array_equal(v.numpy(), before[k])
    s = fx.state(make_model(1))
    del s["layers"][1]["running_var"]
    with pytest.raises(CheckpointError, match=r"no entry 'layers\.1\.running_var'.*shape \(4,\)"):
        fx.loadmodel_(m, s)
    s = fx.state(make_model(1))
    s["layers"][3]["extra"] = np.zeros(2)
    with pytest.raises(CheckpointError, match=r"entries the model lacks: 'layers\.3\.extra'"):
        fx.loadmodel_(m, s)
    fx.loadmodel_(m, s, strict=False)  # ignores it
    with pytest.raises(ValueError):  # CheckpointError is a ValueError
        fx.loadmodel_(fx.Dense(2, 2), {"weight": np.zeros((2, 2))})


def test_loadmodel_from_a_model_copies_tensors_only_and_zeroes_an_absent_bias():
    src = fx.Chain(fx.Dense(3, 4, bias=False), fx.BatchNorm(4), fx.Dense(4, 2, fx.relu))
    src[1].running_mean.assign_(np.arange(4, dtype=np.float32))
    dst = fx.Chain(fx.Dense(3, 4, bias=fx.ones(4)), fx.BatchNorm(4), fx.Dense(4, 2))
    assert fx.loadmodel_(dst, src) is dst
    np.testing.assert_array_equal(dst[0].bias.numpy(), np.zeros(4))  # Flux zeroes it too
    np.testing.assert_array_equal(dst[1].running_mean.numpy(), np.arange(4))
    np.testing.assert_array_equal(dst[2].weight.numpy(), src[2].weight.numpy())
    assert dst[2].act is fx.identity  # functions are not copied
    assert src[0].bias is None
    with pytest.raises(CheckpointError, match=r"loadmodel_: shape mismatch at 'layers\.2\.weight': the model has "
                                              r"\(2, 4\), the source model has \(3, 4\)"):
        fx.loadmodel_(dst, fx.Chain(fx.Dense(3, 4), fx.BatchNorm(4), fx.Dense(4, 3)))
    with pytest.raises(TypeError, match="filter must be a function"):
        fx.loadmodel_(dst, src, filter="Dropout")


def test_loadmodel_into_tied_weights_checks_the_values_agree():
    d = fx.Dense(3, 3)
    m = fx.Chain(d, fx.Dense(d.weight))
    s = fx.state(m)
    fx.loadmodel_(m, s)  # equal values at both places: fine
    before = d.weight.numpy().copy()
    s["layers"][1]["weight"] = s["layers"][1]["weight"] + 1
    with pytest.raises(CheckpointError, match=r"'layers\.0\.weight' and 'layers\.1\.weight' are the same \(tied\) "
                                              r"tensor in the model, but the state has different values"):
        fx.loadmodel_(m, s)
    np.testing.assert_array_equal(d.weight.numpy(), before)


# ---------------------------------------------------------------- save / load

def test_save_load_round_trip_is_exact_including_optimiser_state(tmp_path):
    a = make_model(0)
    opt_a = fx.setup(fx.Adam(0.01), a)
    train(a, opt_a, 5)
    path = tmp_path / "ckpt.safetensors"
    fx.save(path, a, opt_a, step=5, note="hello", lr=[0.01, 0.001])

    ck = fx.load(path)
    assert ck.meta == {"step": 5, "note": "hello", "lr": [0.01, 0.001]}
    assert ck.format_version == fx.io.FORMAT_VERSION
    np.testing.assert_array_equal(ck.model["layers"][1]["running_mean"], a[1].running_mean.numpy())
    assert "layers.0.weight.arrays.0.0" in ck.opt and ck["meta"]["step"] == 5

    b = make_model(7)
    opt_b = fx.setup(fx.Adam(0.01), b)
    assert fx.loadmodel_(b, path, opt_state=opt_b) is b
    assert_same_model(a, b)
    oa, ob = opt_arrays(opt_a), opt_arrays(opt_b)
    assert list(oa) == list(ob)
    for k in oa:
        for pa, pb in zip(oa[k][0], ob[k][0]):
            for x, y in zip(pa, pb):
                np.testing.assert_array_equal(x, y)
        assert oa[k][1:] == ob[k][1:]
    # resuming follows the same trajectory bit for bit
    fx.seed_(11)
    train(a, opt_a, 3, seed=5)
    fx.seed_(11)
    train(b, opt_b, 3, seed=5)
    assert_same_model(a, b)


def test_file_layout_dotted_names_and_metadata(tmp_path):
    m = make_model()
    opt = fx.setup(fx.Momentum(), m)
    path = str(tmp_path / "m.safetensors")
    fx.save(path, m, opt, epoch=3)
    with safe_open(path, framework="numpy") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert {"layers.0.weight", "layers.0.bias", "layers.1.running_mean", "layers.3.bias"} <= keys
    assert "opt.layers.0.weight.arrays.0.0" in keys  # Momentum's velocity
    assert "opt.layers.1.running_mean.arrays.0.0" not in keys  # non-trainable: no optimiser state
    assert meta["format"] == "fluxrs" and meta["format_version"] == "1" and json.loads(meta["meta"]) == {"epoch": 3}
    assert "sha256" in meta and "fluxrs_version" in meta
    assert all(isinstance(v, str) for v in meta.values())
    # a model-only checkpoint
    fx.save(path, m)
    ck = fx.load(path)
    assert ck.opt is None and ck.meta == {}
    with pytest.raises(CheckpointError, match="holds no optimiser state"):
        fx.loadmodel_(make_model(), path, opt_state=fx.setup(fx.Momentum(), m))


def test_optimiser_chain_adjusted_hyperparameters_and_frozen_flags_round_trip(tmp_path):
    a = make_model(0)
    opt_a = fx.setup(fx.OptimiserChain(fx.WeightDecay(1e-3), fx.ClipGrad(1.0), fx.Adam(0.01)), a)
    fx.testmode_(a[2])  # no dropout here: the two runs below must draw nothing from the generator
    train(a, opt_a, 2)
    fx.adjust_(opt_a, 0.005)
    fx.freeze_(opt_a.layers[3])
    train(a, opt_a, 2)
    path = tmp_path / "c.safetensors"
    fx.save(path, a, opt_a)
    b = make_model(1)
    fx.testmode_(b[2])
    opt_b = fx.setup(fx.OptimiserChain(fx.WeightDecay(1e-3), fx.ClipGrad(1.0), fx.Adam(0.01)), b)
    fx.loadmodel_(b, path, opt_state=opt_b)
    assert opt_b.layers[0].weight.rule.rules[2].eta == 0.005  # the adjusted learning rate comes back
    assert opt_b.layers[3].weight.frozen and not opt_b.layers[0].weight.frozen
    assert opt_b.layers[0].weight.rule is opt_b.layers[0].bias.rule  # still one rule object: one fused call
    fx.seed_(5)
    train(a, opt_a, 2, seed=9)
    fx.seed_(5)
    train(b, opt_b, 2, seed=9)
    assert_same_model(a, b)
    # a different rule is refused, naming the place
    opt_c = fx.setup(fx.Descent(0.1), make_model(2))
    with pytest.raises(CheckpointError, match=r"optimiser at 'layers\.0\.weight' is OptimiserChain"):
        fx.loadmodel_(make_model(2), path, opt_state=opt_c)


class CountingSign(fx.optimise.Rule):
    """A Python-only rule whose state is a tuple (step count, running tensor)."""
    fields, defaults = ("eta",), (0.01,)

    def init(self, x):
        return (0, fx.zeros_like(x))

    def apply(self, state, x, dx):
        n, acc = state
        acc = acc + dx
        return (n + 1, acc.detach()), acc.sign() * self.eta


def test_custom_rule_state_round_trips(tmp_path):
    a = fx.Dense(3, 2)
    opt_a = fx.setup(CountingSign(0.1), a)
    train_dense = lambda m, o: fx.update_(o, m, fx.gradient(lambda m: m(fx.ones(4, 3)).sum(), m)[0])  # noqa: E731
    train_dense(a, opt_a)
    train_dense(a, opt_a)
    path = tmp_path / "custom.safetensors"
    fx.save(path, a, opt_a)
    b = fx.Dense(3, 2)
    opt_b = fx.setup(CountingSign(0.1), b)
    fx.loadmodel_(b, path, opt_state=opt_b)
    n, acc = opt_b.weight.state
    assert n == 2 and isinstance(n, int)
    np.testing.assert_array_equal(acc.numpy(), opt_a.weight.state[1].numpy())
    train_dense(a, opt_a)
    train_dense(b, opt_b)
    assert_same_model(a, b)


def test_shared_parameters_round_trip(tmp_path):
    d = fx.Dense(3, 3)
    m = fx.Chain(d, fx.relu, d)
    opt = fx.setup(fx.Adam(), m)
    assert opt.layers[0].weight is opt.layers[2].weight
    train_step = lambda m, o: fx.update_(o, m, fx.gradient(lambda m: m(fx.ones(2, 3)).sum(), m)[0])  # noqa: E731
    train_step(m, opt)
    path = tmp_path / "tied.safetensors"
    fx.save(path, m, opt)
    d2 = fx.Dense(3, 3)
    m2 = fx.Chain(d2, fx.relu, d2)
    opt2 = fx.setup(fx.Adam(), m2)
    fx.loadmodel_(m2, path, opt_state=opt2)
    assert m2[0] is m2[2]
    np.testing.assert_array_equal(m2[0].weight.numpy(), d.weight.numpy())
    train_step(m, opt)
    train_step(m2, opt2)
    np.testing.assert_array_equal(m2[0].weight.numpy(), d.weight.numpy())


def test_recurrent_and_embedding_models_round_trip(tmp_path):
    fx.seed_(3)
    a = fx.Chain(fx.Embedding(10, 4), fx.Bidirectional(fx.LSTM(4, 3)), fx.LayerNorm(6),
                 fx.MultiHeadAttention(6, nheads=2))
    fx.seed_(4)
    b = fx.Chain(fx.Embedding(10, 4), fx.Bidirectional(fx.LSTM(4, 3)), fx.LayerNorm(6),
                 fx.MultiHeadAttention(6, nheads=2))
    path = tmp_path / "seq.safetensors"
    fx.save(path, a)
    fx.loadmodel_(b, path)
    assert_same_model(a, b)
    assert "layers.1.backward.cell.Wh" in fx.load(path)._model_flat
    x = np.array([[1, 2, 3], [4, 5, 9]])
    np.testing.assert_array_equal(a(x)[0].numpy(), b(x)[0].numpy())


def test_load_into_wrong_architecture_names_the_key(tmp_path):
    path = tmp_path / "m.safetensors"
    fx.save(path, fx.Chain(fx.Dense(3, 4), fx.Dense(4, 2)))
    with pytest.raises(CheckpointError, match=r"shape mismatch at 'layers\.1\.weight': the model has \(5, 4\), "
                                              r"the state has \(2, 4\)"):
        fx.loadmodel_(fx.Chain(fx.Dense(3, 4), fx.Dense(4, 5)), path)


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        fx.save(tmp_path / "x.safetensors", fx.Dense(2, 2), when=object())
    assert not os.listdir(tmp_path)
    fx.save(tmp_path / "x.safetensors", fx.Dense(2, 2), n=np.int64(3), rng=fx.random.get_state())
    meta = fx.load(tmp_path / "x.safetensors").meta
    assert meta["n"] == 3 and meta["rng"] == fx.random.get_state()


# ---------------------------------------------------------------- atomicity

def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    m = make_model(0)
    fx.save(path, m, step=1)
    original = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    m[0].weight.assign_(np.zeros((4, 3), dtype=np.float32))
    monkeypatch.setattr(os, "replace", boom)  # the temporary file is written and synced, the rename fails
    with pytest.raises(OSError, match="simulated"):
        fx.save(path, m, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the temporary file was removed
    assert fx.load(path).meta["step"] == 1

    monkeypatch.setattr(os, "fsync", boom)  # failing while flushing the temporary file
    with pytest.raises(OSError):
        fx.save(path, m, step=3)
    monkeypatch.undo()
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["m.safetensors"]


_KILLED_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import fluxrs as fx
    path = sys.argv[1]
    m = fx.Dense(np.full((300, 300), 1.0, dtype=np.float32))
    fx.save(path, m, version=1)
    m.weight.assign_(np.full((300, 300), 2.0, dtype=np.float32))
    real_fsync = os.fsync
    def slow_fsync(fd):
        print("WRITTEN", flush=True)   # the new data sits in the temporary file
        time.sleep(60)
        real_fsync(fd)
    os.fsync = slow_fsync
    fx.save(path, m, version=2)
    print("DONE", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_save_killed_mid_write_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "m.safetensors"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITTEN", line
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    ck = fx.load(path)  # the previous checkpoint, complete
    assert ck.meta == {"version": 1}
    assert np.all(ck.model["weight"] == 1.0)
    leftovers = [f for f in os.listdir(tmp_path) if f != "m.safetensors"]
    assert leftovers and all(f.startswith(".m.safetensors.") for f in leftovers)  # ignored by load


# ---------------------------------------------------------------- damaged and foreign files

def test_truncated_files_raise_clear_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    fx.save(path, make_model(), fx.setup(fx.Adam(), make_model()), step=1)
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    for cut in (0, 5, 8, 8 + header_len // 2, 8 + header_len, len(data) // 2 + header_len // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"is not a fluxrs checkpoint"):
            fx.load(bad)
        with pytest.raises(ValueError, match=r"cut\d+\.safetensors is not a fluxrs checkpoint"):
            fx.loadmodel_(make_model(), bad)


def test_damaged_and_foreign_files(tmp_path):
    path = tmp_path / "m.safetensors"
    fx.save(path, make_model())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the tensor data
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        fx.load(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(foreign))
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors is not a fluxrs checkpoint: .*without fluxrs"):
        fx.load(foreign)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="is not a fluxrs checkpoint"):
        fx.load(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a fluxrs checkpoint"):
        fx.load(text)
    with pytest.raises(FileNotFoundError):
        fx.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------- resume in a new process

_RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    import fluxrs as fx

    def model():
        fx.seed_(0)
        return fx.Chain(fx.Dense(3, 8, fx.relu), fx.Dropout(0.3), fx.BatchNorm(8), fx.Dense(8, 1))

    def steps(m, opt, start, stop):
        for i in range(start, stop):
            rng = np.random.default_rng(i)
            x = rng.normal(size=(16, 3)).astype(np.float32)
            y = x.sum(1, keepdims=True)
            g = fx.gradient(lambda m: ((m(x) - y) ** 2).mean(), m)[0]
            fx.update_(opt, m, g)

    mode, path, out = sys.argv[1:4]
    m = model()
    opt = fx.setup(fx.Adam(0.01), m)
    fx.seed_(123)
    if mode == "straight":
        steps(m, opt, 0, 40)
    elif mode == "first":
        steps(m, opt, 0, 20)
        fx.save(path, m, opt, step=20, rng=fx.random.get_state())
    else:
        ck = fx.load(path)
        fx.loadmodel_(m, ck, opt_state=opt)
        fx.random.set_state(ck.meta["rng"])
        steps(m, opt, ck.meta["step"], 40)
    if mode != "first":
        fx.save(out, m)
""")


def test_resume_in_a_new_process_follows_the_same_trajectory(tmp_path):
    ck, straight, resumed = (str(tmp_path / n) for n in ("ck.safetensors", "a.safetensors", "b.safetensors"))
    for mode, out in (("straight", straight), ("first", ""), ("second", resumed)):
        subprocess.run([sys.executable, "-c", _RESUME, mode, ck, out], check=True, timeout=120)
    a, b = fx.load(straight)._model_flat, fx.load(resumed)._model_flat
    assert list(a) == list(b)
    for k in a:  # Dropout masks, BatchNorm statistics, Adam moments: all identical
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------- 200 steps, or 100 + save + new process + 100

_RESUME_TRAIN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fluxrs as fx

    mode, ck, out = sys.argv[1:4]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 5)).astype(np.float32)
    Y = np.tanh(X @ rng.normal(size=(5, 2))).astype(np.float32)

    fx.seed_(1)  # initialisation, Dropout masks, shuffling: all from this thread's generator
    model = fx.Chain(fx.Dense(5, 16, fx.relu), fx.Dropout(0.25), fx.BatchNorm(16), fx.Dense(16, 2))
    opt = fx.setup(fx.OptimiserChain(fx.ClipNorm(2.0), fx.AdamW(0.01, (0.9, 0.999), 1e-3)), model)
    loader = fx.DataLoader((X, Y), batchsize=16, shuffle=True)  # 10 steps per epoch
    losses = []

    def run(epochs):
        for _ in range(epochs):
            fx.train_(lambda m, x, y: fx.mse(m(x), y), model, loader, opt,
                      cb=lambda: losses.append(float(fx.mse(model(X[:16]), Y[:16]))))

    if mode == "straight":
        run(20)                                            # 200 steps
    elif mode == "first":
        run(10)                                            # 100 steps, then a checkpoint
        fx.save(ck, model, opt, step=100, rng=fx.random.get_state())
    else:                                                  # a new process: load, then 100 more
        c = fx.load(ck)
        fx.loadmodel_(model, c, opt_state=opt)
        fx.random.set_state(c.meta["rng"])
        assert c.meta["step"] == 100
        run(10)
    if out:
        fx.save(out, model, opt)
        with open(out + ".losses.json", "w") as f:
            json.dump(losses, f)
""")


def test_200_steps_equal_100_then_save_load_in_a_new_process_then_100(tmp_path):
    ck, straight, resumed = (str(tmp_path / n) for n in ("ck.safetensors", "a.safetensors", "b.safetensors"))
    for mode, out in (("straight", straight), ("first", ""), ("resumed", resumed)):
        subprocess.run([sys.executable, "-c", _RESUME_TRAIN, mode, ck, out], check=True, timeout=300)
    a, b = fx.load(straight), fx.load(resumed)
    assert sorted(a._tensors) == sorted(b._tensors)
    for k in a._tensors:  # parameters, BatchNorm statistics, AdamW moments and step powers
        assert np.array_equal(a._tensors[k], b._tensors[k]), k
    with open(straight + ".losses.json") as f:
        la = json.load(f)
    with open(resumed + ".losses.json") as f:
        lb = json.load(f)
    assert len(la) == 200 and len(lb) == 100
    assert la[100:] == lb  # the same loss trajectory, bit for bit


# ---------------------------------------------------------------- resuming: load_checkpoint and epochs(start)

class EpochLosses:
    """Each epoch's mean training loss, by epoch."""

    def __init__(self):
        self.losses = {}

    @fx.hookimpl
    def on_epoch_end(self, epoch, logs):
        self.losses[epoch] = logs["loss"]


def _resumable_run(seed):
    """Model, optimiser state, loss and a shuffling loader: Dropout masks and the order of the
    batches come from this thread's generator, so resuming is exact only if it is restored."""
    fx.seed_(seed)
    model = fx.Chain(fx.Dense(3, 8, fx.relu), fx.Dropout(0.3), fx.Dense(8, 2))
    opt = fx.setup(fx.Adam(0.01), model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3)).astype(np.float32)
    y = rng.normal(size=(24, 2)).astype(np.float32)
    loader = fx.DataLoader((x, y), batchsize=6, shuffle=True)
    return model, opt, loader, lambda m, x, y: fx.mse(m(x), y)


def _run_epochs(model, opt, loader, loss, n, dirpath, start=0):
    losses = EpochLosses()
    ckpt = fx.callbacks.ModelCheckpoint(dirpath)
    seen = []
    for epoch in fx.epochs(n, start=start, callbacks=[ckpt, losses]):
        seen.append(epoch)
        fx.train_(loss, model, loader, opt)
    return seen, losses.losses, ckpt


def test_load_checkpoint_and_epochs_start_resume_a_model_checkpoint_run_exactly(tmp_path):
    N, k = 4, 2
    model, opt, loader, loss = _resumable_run(0)
    seen, straight, _ = _run_epochs(model, opt, loader, loss, N, tmp_path / "straight")
    assert seen == [1, 2, 3, 4]

    first, opt1, loader1, _ = _resumable_run(0)
    _run_epochs(first, opt1, loader1, loss, k, tmp_path / "first")
    stopped = tmp_path / "first" / "last.safetensors"
    meta = fx.load(stopped).meta
    assert meta["epoch"] == k and meta["rng"]["bit_generator"] == "PCG64"

    # as in a new process: another initialisation, another generator state, a new loader
    resumed, opt2, loader2, _ = _resumable_run(99)
    start = fx.load_checkpoint(stopped, resumed, opt2)
    assert start == k
    seen, after, ckpt = _run_epochs(resumed, opt2, loader2, loss, N, tmp_path / "resumed", start=start)
    assert seen == [3, 4]
    assert fx.load(ckpt.last_path).meta["epoch"] == N  # new checkpoints carry the true epoch
    # the same arithmetic in the same order: bit for bit
    assert after == {e: straight[e] for e in (3, 4)}
    assert_same_model(model, resumed)
    oa, ob = opt_arrays(opt), opt_arrays(opt2)
    assert list(oa) == list(ob)
    for key in oa:
        assert oa[key][1:] == ob[key][1:]
        for pa, pb in zip(oa[key][0], ob[key][0]):
            for a, b in zip(pa, pb):
                np.testing.assert_array_equal(a, b)

    # the same resume with weights and optimiser state but not the generator's state goes
    # elsewhere: in this run the RNG state is what makes resuming exact
    control, opt3, loader3, _ = _resumable_run(99)
    fx.loadmodel_(control, stopped, opt_state=opt3)
    _, unrestored, _ = _run_epochs(control, opt3, loader3, loss, N, tmp_path / "control", start=k)
    assert unrestored[N] != straight[N]
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(all_tensors(model).values(), all_tensors(control).values()))


def test_load_checkpoint_checks_everything_before_changing_anything(tmp_path):
    a = make_model(0)
    opt_a = fx.setup(fx.Adam(0.01), a)
    train(a, opt_a, 2)
    bad_rng = tmp_path / "bad_rng.safetensors"
    fx.save(bad_rng, a, opt_a, epoch=3, rng={"bit_generator": "PCG64", "state": "garbled"})
    no_opt = tmp_path / "no_opt.safetensors"
    fx.save(no_opt, a, epoch=3, rng=fx.random.get_state())

    b = make_model(5)
    opt_b = fx.setup(fx.Adam(0.01), b)
    before, rng_before = fx.state(b), fx.random.get_state()
    with pytest.raises(CheckpointError, match="its RNG state cannot be restored"):
        fx.load_checkpoint(bad_rng, b, opt_b)
    with pytest.raises(CheckpointError, match=r"holds no optimiser state \(save it with"):
        fx.load_checkpoint(no_opt, b, opt_b)
    after = fx.state(b)
    for layer_before, layer_after in zip(before["layers"], after["layers"]):
        for key in layer_before or {}:
            np.testing.assert_array_equal(layer_before[key], layer_after[key])
    assert fx.random.get_state() == rng_before
    fresh = fx.setup(fx.Adam(0.01), make_model(5))
    assert opt_b.layers[0].weight.state.scalars == fresh.layers[0].weight.state.scalars


def test_load_checkpoint_warns_at_the_callers_line_about_what_it_cannot_restore(tmp_path):
    a = make_model(0)
    opt_a = fx.setup(fx.Adam(0.01), a)
    plain = tmp_path / "plain.safetensors"
    fx.save(plain, a)  # no epoch, no RNG state, no optimiser state
    with pytest.warns(UserWarning, match=r"holds no RNG state.*rng=fx\.random\.get_state\(\)") as rec:
        assert fx.load_checkpoint(plain, make_model(1)) == 0  # no epoch recorded: start from the beginning
    assert len(rec) == 1 and rec[0].filename == __file__

    full = tmp_path / "full.safetensors"
    fx.save(full, a, opt_a, epoch=2, rng=fx.random.get_state())
    with pytest.warns(UserWarning, match=r"optimiser state, which was not restored") as rec:
        assert fx.load_checkpoint(full, make_model(1)) == 2
    assert len(rec) == 1 and rec[0].filename == __file__


def test_loadmodel_warns_when_it_leaves_a_checkpoints_optimiser_state_out(tmp_path):
    import warnings

    a = make_model(0)
    opt_a = fx.setup(fx.Adam(0.01), a)
    train(a, opt_a, 2)
    path = tmp_path / "ck.safetensors"
    fx.save(path, a, opt_a)
    b = make_model(3)
    with pytest.warns(UserWarning, match=r"fx\.load_checkpoint\(path, model, opt_state\)") as rec:
        fx.loadmodel_(b, path)
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller's line
    assert "fx.load(path).model" in str(rec[0].message)
    assert_same_model(a, b)  # the weights are loaded all the same
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx.loadmodel_(make_model(3), path, opt_state=fx.setup(fx.Adam(0.01), make_model(3)))  # the state restored
        fx.loadmodel_(make_model(3), fx.load(path).model)  # only the weights, explicitly
        weights_only = tmp_path / "weights.safetensors"
        fx.save(weights_only, a)
        fx.loadmodel_(make_model(3), weights_only)  # nothing left out
