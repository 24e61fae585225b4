"""A character-level LSTM language model on Python's own documentation.

The text is the reference of statements, operators and types that ships with every CPython
(`pydoc_data.topics`, ~465,000 characters: no download). An Embedding → LSTM → Dense model
reads 64 characters and predicts each next one; it reports the per-character perplexity
on held-out text (the last 10%) and prints samples it generates. The default run (a few
minutes on two cores) brings the validation perplexity below 5.

    python examples/char_lstm.py [--steps 1500] [--hidden 256] [--smoke]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import fluxrs as fx


def load_text() -> str:
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


class CharLM(fx.Layer):
    """Embedding → LSTM → Dense: logits for the next character at every position."""

    def __init__(self, vocab: int, embed: int = 64, hidden: int = 256):
        self.embed = fx.Embedding(vocab, embed)
        self.lstm = fx.LSTM(embed, hidden, return_state=True)
        self.out = fx.Dense(hidden, vocab)

    def __call__(self, ids, state=None):
        """`ids` (batch, time) integers → ((batch, time, vocab) logits, state)."""
        h, state = self.lstm(self.embed(ids), state)
        return self.out(h), state


def batches(ids: np.ndarray, seq: int, batch: int, rng: np.random.Generator):
    """Random windows: inputs (batch, seq) and the next characters as targets."""
    while True:
        start = rng.integers(0, len(ids) - seq - 1, batch)
        idx = start[:, None] + np.arange(seq + 1)
        w = ids[idx]
        yield w[:, :-1], w[:, 1:]


def loss_fn(model, x, y, vocab: int):
    logits, _ = model(x)
    return fx.logitcrossentropy(logits.reshape(-1, vocab), fx.onehotbatch(y.reshape(-1), range(vocab)))


def perplexity(model, ids: np.ndarray, vocab: int, seq: int = 128) -> float:
    """exp(mean negative log-likelihood per character) over `ids`, in windows of `seq`."""
    n = (len(ids) - 1) // seq
    x = ids[: n * seq].reshape(n, seq)
    y = ids[1: n * seq + 1].reshape(n, seq)
    total = 0.0
    for i in range(0, n, 64):
        total += float(loss_fn(model, x[i:i + 64], y[i:i + 64], vocab)) * len(x[i:i + 64])
    return math.exp(total / n)


def sample(model, chars: list[str], prime: str, length: int, rng: np.random.Generator, temperature: float = 0.8) -> str:
    """Continue `prime` by `length` characters, drawing each from the model's softmax."""
    index = {c: i for i, c in enumerate(chars)}
    logits, state = model(np.array([[index[c] for c in prime]]))
    out = list(prime)
    for _ in range(length):
        p = fx.softmax(logits.numpy()[0, -1] / temperature).numpy().astype(np.float64)
        c = int(rng.choice(len(chars), p=p / p.sum()))
        out.append(chars[c])
        logits, state = model(np.array([[c]]), state)
    return "".join(out)


def train(steps: int = 1500, hidden: int = 256, seq: int = 64, batch: int = 32, seed: int = 0,
          progress: bool = True, verbose: bool = True, every: int = 500):
    """Train; return (model, validation perplexity, chars)."""
    fx.seed_(seed)
    rng = np.random.default_rng(seed)
    text = load_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(0.9 * len(ids))
    train_ids, val_ids = ids[:cut], ids[cut:]
    vocab = len(chars)
    model = CharLM(vocab, hidden=hidden)
    opt = fx.setup(fx.OptimiserChain(fx.ClipNorm(1.0), fx.Adam(3e-3)), model)
    loss = lambda m, x, y: loss_fn(m, x, y, vocab)
    data = [b for _, b in zip(range(steps), batches(train_ids, seq, batch, rng))]
    for start in range(0, steps, every):
        chunk = data[start:start + every]
        fx.train_(loss, model, chunk, opt, progress=progress, desc=f"steps {start + len(chunk)}/{steps}")
        if verbose:
            ppl = perplexity(model, val_ids[:20000], vocab)
            print(f"step {start + len(chunk)}: validation perplexity {ppl:.2f}")
            print("   ", sample(model, chars, "The ", 120, rng).replace("\n", "\n    "))
    return model, perplexity(model, val_ids[:20000], vocab), chars


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="a few steps of a small model: checks that it runs")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    steps, hidden, every = (6, 32, 3) if a.smoke else (a.steps, a.hidden, 500)
    model, ppl, _ = train(steps, hidden, seed=a.seed, progress=not a.no_progress, every=every)
    print(f"validation perplexity per character: {ppl:.2f}")


if __name__ == "__main__":
    main()
