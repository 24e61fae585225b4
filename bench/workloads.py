"""Workload definitions shared by the driver (run.py) and the workers (worker.py).

Every library gets the same data and the same initial weights: both are generated here with
numpy from fixed seeds, in float32, with Flux's layout (a Dense weight is ``(out, in)``).
Each library adapter copies them into its own tensors.
"""

from __future__ import annotations

import numpy as np

DATA_SEED = 1234
INIT_SEED = 42


# name -> spec. kind: "train" (a model trained step by step), "sgemm", "threads".
# layers: (in, out, act) per Dense; head: what follows the last Dense ("softmax" or None).
FULL = {
    "seed_descent": dict(kind="train", label="(a)/(h) seed", rows="seed",
                         layers=[(784, 32, "sigmoid"), (32, 10, None)], head="softmax", loss="mse",
                         opt=("descent", 0.1), batch=32, nbatches=64, update_tol=1e-3),
    "seed_adam": dict(kind="train", label="(a)/(h) seed", rows="seed",
                      layers=[(784, 32, "sigmoid"), (32, 10, None)], head="softmax", loss="mse",
                      opt=("adam", 1e-3), batch=32, nbatches=64, update_tol=1e-3),
    "mlp": dict(kind="train", label="(b) MLP",
                layers=[(784, 1024, "relu"), (1024, 1024, "relu"), (1024, 10, None)], head=None,
                loss="logitcrossentropy", opt=("adam", 1e-3), batch=256, nbatches=16,
                # Adam turns tiny gradients into ±η steps, so float32 summation order shows up more here
                update_tol=5e-2),
    # the Flux model zoo's LeNet-5: convs are (in, out, k), each followed by relu and a 2x2 max pool;
    # then flatten (16*4*4 = 256) into the Dense layers
    "lenet5": dict(kind="train", arch="lenet5", label="(c) LeNet-5", image=28, convs=[(1, 6, 5), (6, 16, 5)],
                   layers=[(256, 120, "relu"), (120, 84, "relu"), (84, 10, None)], head=None,
                   loss="logitcrossentropy", opt=("adam", 1e-3), batch=128, nbatches=16,
                   # unlike (b), no loose tolerance is needed: updates agree to ~1e-5 here, ~1.5e-4 at smoke size
                   update_tol=1e-3),
    # MNIST-1D shaped: sequences of 40 one-feature steps, 10 classes; the class comes from the last output
    "gru": dict(kind="train", arch="gru", label="(d) GRU, MNIST-1D shaped", seq_len=40, n_in=1, hidden=64, n_out=10,
                loss="logitcrossentropy", opt=("adam", 1e-3), batch=128, nbatches=16, update_tol=1e-3),
    # MNIST-1D's CNN: 1-D convolutions (in, out, k, stride, pad), each with relu, on sequences of 40
    # one-channel points; flatten (25 channels x 5 = 125) into a Dense
    "cnn1d": dict(kind="train", arch="cnn1d", label="(g) MNIST-1D CNN", length=40,
                  convs1d=[(1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1)], layers=[(125, 10, None)],
                  head=None, loss="logitcrossentropy", opt=("adam", 1e-2), batch=100, nbatches=16, update_tol=1e-3),
    "sgemm": dict(kind="sgemm", label="(e)", n=1024),
    "threads": dict(kind="threads", label="(f) 2 threads vs 1, each training its own",
                    layers=[(784, 32, "sigmoid"), (32, 10, None)], head="softmax", loss="mse",
                    opt=("adam", 1e-3), batch=32, nbatches=64),
}

# --smoke: tiny sizes so the whole harness runs in seconds with fluxrs and numpy only.
SMOKE = {
    "seed_descent": dict(FULL["seed_descent"], layers=[(64, 16, "sigmoid"), (16, 10, None)], batch=8, nbatches=4),
    "seed_adam": dict(FULL["seed_adam"], layers=[(64, 16, "sigmoid"), (16, 10, None)], batch=8, nbatches=4),
    "mlp": dict(FULL["mlp"], layers=[(64, 48, "relu"), (48, 48, "relu"), (48, 10, None)], batch=16, nbatches=4),
    "lenet5": dict(FULL["lenet5"], batch=4, nbatches=4),  # the image stays 28x28: the Dense sizes follow from it
    "gru": dict(FULL["gru"], seq_len=5, hidden=8, batch=4, nbatches=4),
    "cnn1d": dict(FULL["cnn1d"], batch=4, nbatches=4),
    "sgemm": dict(FULL["sgemm"], n=64),
    "threads": dict(FULL["threads"], layers=[(64, 16, "sigmoid"), (16, 10, None)], batch=8, nbatches=4),
}

# Which libraries each kind of workload is run with (the first is fluxrs; ratios are fluxrs / each other).
# fluxrs rows are named "fluxrs[-compiled][-FEED][-LOOP]" (adapters.fluxrs_options): fed numpy
# batches ("-numpy"), a DataLoader ("-loader") or fx tensors (neither); trained with train_ or
# the explicit Training page's custom loop ("-custom": gradient + update_, "-jit": the same, its loss in fx.jit).
_THREADS = ["fluxrs-1thread", "fluxrs-2threads", "fluxrs-compiled-1thread", "fluxrs-compiled-2threads",
            "fluxrs-numpy-1thread", "fluxrs-numpy-2threads", "fluxrs-loader-1thread", "fluxrs-loader-2threads",
            "fluxrs-numpy-custom-1thread", "fluxrs-numpy-custom-2threads"]
PEERS = {"train": ["fluxrs", "fluxrs-compiled", "torch", "jax"], "sgemm": ["fluxrs", "numpy", "torch"],
         "threads": _THREADS}
SMOKE_PEERS = {"train": ["fluxrs", "fluxrs-compiled", "numpy"], "sgemm": ["fluxrs", "numpy"], "threads": _THREADS}
# (a) and (h): the seed model fed and looped every way users write it, against the same peers
SEED_ROWS = ["fluxrs", "fluxrs-compiled", "fluxrs-numpy", "fluxrs-loader", "fluxrs-numpy-custom",
             "fluxrs-numpy-jit"]


def specs(smoke: bool) -> dict:
    return SMOKE if smoke else FULL


def libs(spec: dict, smoke: bool) -> list[str]:
    """The libraries (rows) a workload runs with."""
    peers = (SMOKE_PEERS if smoke else PEERS)[spec["kind"]]
    if spec.get("rows") == "seed":
        return SEED_ROWS + [p for p in peers if not p.startswith("fluxrs")]
    return list(peers)


def title(spec: dict) -> str:
    """The title with the sizes actually used (smoke mode shrinks them)."""
    if spec.get("arch") == "gru":
        kind, lr = spec["opt"]
        return (f"{spec['label']}: Chain(GRU({spec['n_in']},{spec['hidden']}), last step, "
                f"Dense({spec['hidden']},{spec['n_out']})), seq {spec['seq_len']}, {spec['loss']}, "
                f"{'Descent' if kind == 'descent' else 'Adam'}({lr:g}), batch {spec['batch']}")
    if spec.get("arch") == "cnn1d":
        kind, lr = spec["opt"]
        convs = ",".join(f"Conv(({k},),{i}=>{o},relu,stride={st},pad={pd})" for i, o, k, st, pd in spec["convs1d"])
        dense = ",".join(f"Dense({i},{o})" for i, o, _ in spec["layers"])
        return (f"{spec['label']} Chain({convs},flatten,{dense}) on {spec['length']} points, {spec['loss']}, "
                f"Adam({lr:g}), batch {spec['batch']}")
    if spec.get("arch") == "lenet5":
        kind, lr = spec["opt"]
        convs = ",".join(f"Conv(({k},{k}),{i}=>{o},relu),MaxPool((2,2))" for i, o, k in spec["convs"])
        dense = ",".join(f"Dense({i},{o}{',relu' if a else ''})" for i, o, a in spec["layers"])
        return (f"{spec['label']} Chain({convs},flatten,{dense}) on {spec['image']}x{spec['image']}, "
                f"{spec['loss']}, Adam({lr:g}), batch {spec['batch']}")
    if spec["kind"] in ("train", "threads"):
        acts = {"sigmoid": "σ", "relu": "relu", None: None}
        dense = ",".join(f"Dense({i},{o}{',' + acts[a] if a else ''})" for i, o, a in spec["layers"])
        head = ",softmax" if spec["head"] == "softmax" else ""
        kind, lr = spec["opt"]
        opt = f"{'Descent' if kind == 'descent' else 'Adam'}({lr:g})"
        return f"{spec['label']} Chain({dense}{head}), {spec['loss']}, {opt}, batch {spec['batch']}"
    if spec["kind"] == "sgemm":
        n = spec["n"]
        return f"{spec['label']} sgemm {n}x{n} @ {n}x{n} float32"
    return spec["title"]


def samples_per_step(spec: dict) -> int:
    if spec["kind"] == "sgemm":
        return spec["n"]  # rows of the product, so "samples/s" reads as rows/s; GFLOP/s is reported too
    return spec["batch"]


def make_data(spec: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`nbatches` batches of (x, y_onehot, labels), float32, batch-first: x uniform in [0, 1) for the
    MLPs and LeNet-5 (images (N, C, H, W), fluxrs' channels-first layout), standard normal
    (N, T, in) for the GRU (MNIST-1D signals are roughly centred)."""
    rng = np.random.default_rng(DATA_SEED)
    if spec.get("arch") == "gru":
        n_out, shape = spec["n_out"], (spec["batch"], spec["seq_len"], spec["n_in"])
    elif spec.get("arch") == "lenet5":
        n_out, shape = spec["layers"][-1][1], (spec["batch"], spec["convs"][0][0], spec["image"], spec["image"])
    elif spec.get("arch") == "cnn1d":
        n_out, shape = spec["layers"][-1][1], (spec["batch"], spec["convs1d"][0][0], spec["length"])
    else:
        n_out, shape = spec["layers"][-1][1], (spec["batch"], spec["layers"][0][0])
    out = []
    for _ in range(spec["nbatches"]):
        x = rng.standard_normal(shape, dtype=np.float32) if spec.get("arch") in ("gru", "cnn1d") else \
            rng.random(shape, dtype=np.float32)
        labels = rng.integers(0, n_out, size=spec["batch"])
        y = np.zeros((spec["batch"], n_out), dtype=np.float32)
        y[np.arange(spec["batch"]), labels] = 1.0
        out.append((x, y, labels.astype(np.int64)))
    return out


def make_init(spec: dict, seed: int = INIT_SEED) -> list[np.ndarray]:
    """[W1, b1, W2, b2, ...]: Glorot-uniform weights (out, in) as Flux's default, zero biases.
    LeNet-5's conv weights come first, in fluxrs' layout (out, in, kh, kw) for its `Conv`, which
    flips the kernel as Flux's does (torch and JAX get them flipped); their fans count the
    receptive field, as Flux's `nfan`."""
    rng = np.random.default_rng(seed)
    params = []
    if spec.get("arch") == "lenet5":
        for n_in, n_out, k in spec["convs"]:
            lim = np.sqrt(6.0 / ((n_in + n_out) * k * k))
            params.append(rng.uniform(-lim, lim, size=(n_out, n_in, k, k)).astype(np.float32))
            params.append(np.zeros(n_out, dtype=np.float32))
    if spec.get("arch") == "cnn1d":
        for n_in, n_out, k, _, _ in spec["convs1d"]:
            lim = np.sqrt(6.0 / ((n_in + n_out) * k))
            params.append(rng.uniform(-lim, lim, size=(n_out, n_in, k)).astype(np.float32))
            params.append(np.zeros(n_out, dtype=np.float32))
    if spec.get("arch") == "gru":
        # [Wi (3h, in), Wh (3h, h), bias (3h,), W (out, h), b (out,)]: Flux's GRU fields, gates (r, z, h̃)
        n_in, h, n_out = spec["n_in"], spec["hidden"], spec["n_out"]

        def glorot(rows, cols):
            lim = np.sqrt(6.0 / (rows + cols))
            return rng.uniform(-lim, lim, size=(rows, cols)).astype(np.float32)
        return [glorot(3 * h, n_in), glorot(3 * h, h), np.zeros(3 * h, np.float32), glorot(n_out, h),
                np.zeros(n_out, np.float32)]
    for n_in, n_out, _ in spec["layers"]:
        lim = np.sqrt(6.0 / (n_in + n_out))
        params.append(rng.uniform(-lim, lim, size=(n_out, n_in)).astype(np.float32))
        params.append(np.zeros(n_out, dtype=np.float32))
    return params


def make_matrices(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(DATA_SEED)
    n = spec["n"]
    return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
