"""A small CNN on scikit-learn's handwritten digits, with learning curves saved as a PNG.

The digits (8×8 images, 1797 of them, shipped inside scikit-learn: no download) are split
80/20 with a fixed permutation. Conv → BatchNorm → Conv → BatchNorm → MaxPool → Dropout →
Dense, trained with Adam under logitcrossentropy, reaches 97% test accuracy or more.
`fx.callbacks.LearningCurves` draws the train/test loss and accuracy after every epoch.

    pip install scikit-learn 'fluxrs[plot]'
    python examples/digits_cnn.py [--epochs 30] [--curves digits_curves.png] [--smoke]
"""

from __future__ import annotations

import argparse

import numpy as np

import fluxrs as fx


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_test, y_test)``: images (N, 1, 8, 8) scaled to [0, 1], labels 0..9."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def build_model() -> fx.Chain:
    return fx.Chain(
        fx.Conv((3, 3), (1, 16), pad=1), fx.BatchNorm(16, fx.relu),
        fx.Conv((3, 3), (16, 32), pad=1), fx.BatchNorm(32, fx.relu),
        fx.MaxPool((2, 2)),                                   # 32 × 4 × 4
        fx.flatten, fx.Dropout(0.3), fx.Dense(32 * 4 * 4, 10))


def evaluate(model, x, y) -> tuple[float, float]:
    """(loss, accuracy) in test mode (outside `gradient`, BatchNorm and Dropout are inactive)."""
    logits = model(x)
    loss = float(fx.logitcrossentropy(logits, fx.onehotbatch(y, range(10))))
    return loss, float((fx.onecold(logits) == y).mean())


def train(epochs: int = 30, seed: int = 0, curves: str | None = None, progress: bool = True,
          batches: int | None = None, verbose: bool = True):
    """Train; return (model, test accuracy). `batches` caps the batches per epoch (smoke runs)."""
    fx.seed_(seed)
    x, y, x_test, y_test = load_digits(seed)
    model = build_model()
    opt = fx.setup(fx.Adam(3e-3), model)
    loader = fx.DataLoader((x, fx.onehotbatch(y, range(10)).numpy()), batchsize=64, shuffle=True)
    data = loader if batches is None else [b for _, b in zip(range(batches), loader)]
    loss = lambda m, x, y: fx.logitcrossentropy(m(x), y)
    metrics = ("train_loss", "test_loss", "train_acc", "test_acc")
    callbacks = [fx.callbacks.LearningCurves(curves, metrics, title="digits CNN")] if curves else []

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * len(data), desc="digits", unit="batch")
    for epoch in fx.epochs(epochs, callbacks=callbacks):
        fx.train_(loss, model, data, opt, progress=bar or False)
        train_loss, train_acc = evaluate(model, x, y)
        test_loss, test_acc = evaluate(model, x_test, y_test)
        fx.plugins.log(train_loss=train_loss, test_loss=test_loss, train_acc=train_acc, test_acc=test_acc)
        if bar is not None:
            bar.set_description(f"epoch {epoch}/{epochs} test acc {100 * test_acc:.1f}%")
    if bar is not None:
        bar.close()
    acc = evaluate(model, x_test, y_test)[1]
    if verbose and curves:
        print(f"learning curves: {curves}")
    return model, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curves", default="digits_curves.png", help="where to save the learning curves (PNG)")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches: checks that it runs")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    epochs, batches = (2, 3) if a.smoke else (a.epochs, None)
    model, acc = train(epochs, a.seed, a.curves, not a.no_progress, batches)
    print(model)
    print(f"test accuracy: {100 * acc:.1f}%")


if __name__ == "__main__":
    main()
