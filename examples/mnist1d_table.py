"""Reproduce the MNIST-1D paper's model table with fluxrs.

Greydanus (2020), "Scaling down deep learning" (https://github.com/greydanus/mnist1d),
trains four small models on MNIST-1D with Adam (lr 1e-2), batches of 100, for 8000 steps,
and reports test accuracy: logistic regression 32%, MLP 68%, CNN 94%, GRU 91%. The
architectures here are the paper's (its `models.py`), written as Flux models:

- logistic: Dense(40 => 10)
- MLP: Dense(40 => 100, relu), a residual Dense(100 => 100, relu), Dense(100 => 10)
- CNN: three 1-D convolutions with 25 channels (k5 s2 p1, k3 s2 p1, k3 s2 p1), relu, Dense(125 => 10)
- GRU: a bidirectional GRU with 6 hidden units over the 40 steps, Dense(480 => 10) on all outputs

    python examples/mnist1d_table.py                 # the paper's 8000 steps for each model
    python examples/mnist1d_table.py --steps 2000 --models cnn gru
"""

from __future__ import annotations

import argparse
import operator
import time

import numpy as np

import fluxrs as fx

PAPER = {"logistic": 32.0, "mlp": 68.0, "cnn": 94.0, "gru": 91.0}


def load_mnist1d(seed: int = 42) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.seed = seed
    return make_dataset(args)


def build(name: str):
    if name == "logistic":
        return fx.Dense(40, 10)
    if name == "mlp":
        return fx.Chain(fx.Dense(40, 100, fx.relu),
                        fx.SkipConnection(fx.Dense(100, 100, fx.relu), operator.add),
                        fx.Dense(100, 10))
    if name == "cnn":
        return fx.Chain(lambda x: x.reshape(-1, 1, 40),                  # (N, 1, 40): one input channel
                        fx.Conv((5,), (1, 25), fx.relu, stride=2, pad=1),  # -> (N, 25, 19)
                        fx.Conv((3,), (25, 25), fx.relu, stride=2, pad=1),  # -> (N, 25, 10)
                        fx.Conv((3,), (25, 25), fx.relu, stride=2, pad=1),  # -> (N, 25, 5)
                        fx.Flatten(),
                        fx.Dense(125, 10))
    if name == "gru":
        return fx.Chain(lambda x: x.reshape(-1, 40, 1),                  # (N, T=40, 1 feature)
                        fx.Bidirectional(fx.GRU(1, 6)),                   # -> (N, 40, 12)
                        fx.Flatten(),
                        fx.Dense(480, 10))
    raise ValueError(f"unknown model {name!r}; choose from {list(PAPER)}")


def accuracy(model, x, labels, device: str = "cpu") -> float:
    with fx.no_grad():
        return 100.0 * float((fx.onecold(fx.cpu(model(fx.to_device(x, device)))) == labels).mean())


def train(name: str, data: dict, steps: int = 8000, seed: int = 0, progress: bool = True, device: str = "cpu") -> dict:
    """Train one model of the table on `device` ("cpu", or "gpu" in the gpu build); returns its row."""
    fx.seed_(seed)
    x, x_test = data["x"].astype(np.float32), data["x_test"].astype(np.float32)
    y, y_test = np.asarray(data["y"]), np.asarray(data["y_test"])
    Y = fx.onehotbatch(y, range(10)).numpy()
    model = fx.to_device(build(name), device)
    opt = fx.setup(fx.Adam(1e-2), model)
    loader = fx.DataLoader((x, Y), batchsize=100, shuffle=True, rng=np.random.default_rng(seed))
    loss = lambda m, xb, yb: fx.logitcrossentropy(m(fx.to_device(xb, device)), fx.to_device(yb, device))
    epochs = max(1, round(steps / len(loader)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * len(loader), desc=f"{name:>8}", unit="step", leave=False)
    t0 = time.perf_counter()
    try:
        for _ in range(epochs):
            fx.train_(loss, model, loader, opt, progress=bar or False)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    nparams = sum(p.size for p in fx.params(model))
    return {"model": name, "params": nparams, "steps": epochs * len(loader), "seconds": seconds,
            "train": accuracy(model, x, y, device), "test": accuracy(model, x_test, y_test, device), "paper": PAPER[name]}


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<9} {'params':>7} {'steps':>6} {'time':>7} {'train':>7} {'test':>7} {'paper':>6}"]
    for r in rows:
        lines.append(f"{r['model']:<9} {r['params']:>7} {r['steps']:>6} {r['seconds']:>6.1f}s "
                     f"{r['train']:>6.1f}% {r['test']:>6.1f}% {r['paper']:>5.0f}%")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8000, help="training steps per model (the paper: 8000)")
    p.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu needs the gpu build (README: GPU)")
    a = p.parse_args()
    data = load_mnist1d()
    rows = [train(m, data, a.steps, a.seed, not a.no_progress, a.device) for m in a.models]
    print(table(rows))


if __name__ == "__main__":
    main()
