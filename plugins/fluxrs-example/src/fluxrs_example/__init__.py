"""An example fluxrs plugin: a layer and a loss registered by name, and training hooks.

fluxrs imports this module through the entry point ``example`` (see pyproject.toml) and
registers the module itself as a plugin: the functions below marked ``@hookimpl`` are its
hooks.
"""

from __future__ import annotations

import math
from typing import Any

import fluxrs as fx
from fluxrs.plugins import hookimpl

__version__ = "0.1.0"

#: What the training hooks saw, across every run since this plugin was loaded.
stats: dict[str, Any] = {"runs": 0, "batches": 0, "last_loss": None, "last_step": 0, "errors": 0}


class Snake(fx.Layer):
    """Snake activation with a learnable frequency per feature (Ziyin et al., 2020):
    ``x + sin(α x)² / α``. `n` features on the last axis; `alpha` the initial frequency."""

    def __init__(self, n: int, alpha: float = 1.0):
        self.alpha = fx.full((n,), alpha)

    def __call__(self, x):
        a = self.alpha
        s = (x * a).sin()
        return x + s * s / a

    def __repr__(self) -> str:
        return f"Snake({self.alpha.shape[0]})"


def log_cosh(y_hat, y, agg=None):
    """``mean(log(cosh(ŷ - y)))``: like mse near 0, like mae far away. Stable form:
    ``d + softplus(-2d) - log 2``. `agg` (default: the mean) reduces the elementwise losses."""
    d = (y_hat if isinstance(y_hat, fx.Tensor) else fx.tensor(y_hat)) - y
    out = d + fx.softplus(-2 * d) - math.log(2.0)
    return out.mean() if agg is None else agg(out)


# ---------------------------------------------------------------- registration hooks

@hookimpl
def register_layers():
    return {"Snake": Snake}


@hookimpl
def register_losses():
    return {"log_cosh": log_cosh}


# ---------------------------------------------------------------- training hooks

@hookimpl
def on_train_begin(run):
    stats["runs"] += 1


@hookimpl
def on_batch_end(step, loss):
    stats["batches"] += 1
    stats["last_loss"] = loss
    stats["last_step"] = step


@hookimpl
def on_train_end(error):
    if error is not None:
        stats["errors"] += 1


@hookimpl(wrapper=True)
def on_epoch_end(run, logs):
    # before every other plugin's on_epoch_end: add a metric they all see
    alphas = [float(layer.alpha.mean()) for layer in _snakes(run.model)]
    if alphas:
        logs["snake_alpha"] = sum(alphas) / len(alphas)
    result = yield  # the other plugins run here
    stats["epochs_logged"] = stats.get("epochs_logged", 0) + 1
    return result


def _snakes(model: Any) -> list[Snake]:
    out: list[Snake] = []
    seen: set[int] = set()

    def walk(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, Snake):
            out.append(node)
        for child in fx.functor.children(node).values():
            walk(child)

    if model is not None:
        walk(model)
    return out
