"""`stop()` and `skip()`: how a loss, a callback or a plugin hook steers training.

They raise the exceptions below, which the training loop (`fluxrs.train`) and the plugin
hooks (`fluxrs.plugins`) both catch; they live here, below both, so that neither has to
import the other for them.
"""

from __future__ import annotations

__all__ = ["StopTraining", "SkipStep", "stop", "skip"]


class StopTraining(Exception):
    """Raised by `stop()`; `train_` catches it and returns (Flux's StopException)."""


class SkipStep(Exception):
    """Raised by `skip()`; `train_` catches it and moves on to the next datapoint."""


def stop() -> None:
    """End `train_` early and cleanly, from a callback or the loss (Flux's `stop()`)."""
    raise StopTraining()


def skip() -> None:
    """Skip the current datapoint's update, from inside the loss (Flux's `skip()`)."""
    raise SkipStep()
