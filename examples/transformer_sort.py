"""A small transformer that learns to sort digits.

Input: 8 random digits; target: the same digits sorted. An encoder of two pre-norm blocks
(`MultiHeadAttention` + `LayerNorm` + a `Dense` MLP, with learned position embeddings)
reads the whole sequence and predicts the sorted digit at each position. The data are made
on the fly (nothing to download); the default run reaches 99% sequence accuracy (all 8
positions right) on fresh sequences or more.

    python examples/transformer_sort.py [--steps 1500] [--smoke]
"""

from __future__ import annotations

import argparse

import numpy as np

import fluxrs as fx

LENGTH, DIGITS = 8, 10


class Block(fx.Layer):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int):
        self.norm1 = fx.LayerNorm(dim)
        self.attn = fx.MultiHeadAttention(dim, heads)
        self.norm2 = fx.LayerNorm(dim)
        self.mlp = fx.Chain(fx.Dense(dim, 4 * dim, fx.gelu), fx.Dense(4 * dim, dim))

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class Sorter(fx.Layer):
    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2):
        self.embed = fx.Embedding(DIGITS, dim)
        self.position = fx.randn(LENGTH, dim) * 0.1
        self.blocks = fx.Chain(*[Block(dim, heads) for _ in range(depth)])
        self.norm = fx.LayerNorm(dim)
        self.head = fx.Dense(dim, DIGITS)

    def __call__(self, digits):
        """`digits` (batch, LENGTH) integers → (batch, LENGTH, DIGITS) logits."""
        return self.head(self.norm(self.blocks(self.embed(digits) + self.position)))


def make_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, DIGITS, (n, LENGTH))
    return x, np.sort(x, axis=1)


def loss_fn(model, x, y):
    logits = model(x).reshape(-1, DIGITS)
    return fx.logitcrossentropy(logits, fx.onehotbatch(y.reshape(-1), range(DIGITS)))


def sequence_accuracy(model, rng: np.random.Generator, n: int = 2000) -> float:
    x, y = make_batch(rng, n)
    pred = np.argmax(model(x).numpy(), axis=-1)
    return float((pred == y).all(axis=1).mean())


def train(steps: int = 1500, batch: int = 128, seed: int = 0, progress: bool = True):
    """Train; return (model, sequence accuracy on fresh sequences)."""
    fx.seed_(seed)
    rng = np.random.default_rng(seed)
    model = Sorter()
    opt = fx.setup(fx.AdamW(2e-3, (0.9, 0.98), 1e-4), model)
    data = [make_batch(rng, batch) for _ in range(steps)]
    fx.train_(loss_fn, model, data, opt, progress=progress, desc="sorting")
    return model, sequence_accuracy(model, np.random.default_rng(seed + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a few steps: checks that it runs")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    model, acc = train(5 if a.smoke else a.steps, seed=a.seed, progress=not a.no_progress)
    x, _ = make_batch(np.random.default_rng(a.seed + 2), 3)
    for row, pred in zip(x, np.argmax(model(x).numpy(), axis=-1)):
        print(f"{row.tolist()} -> {pred.tolist()}")
    print(f"sequence accuracy (all {LENGTH} digits right): {100 * acc:.1f}%")


if __name__ == "__main__":
    main()
