"""TensorBoard logging for fluxrs training runs, on tensorboardX.

Two ways in, both through the entry point ``tensorboard`` (see pyproject.toml):

* by name, for one run or from a config:
  ``fx.plugins.callback("TensorBoardLogger")(logdir="runs/exp1")`` in ``callbacks=[...]``;
* for every run of a program: set ``FLUXRS_TENSORBOARD_LOGDIR``; this module's own
  ``on_train_begin`` then attaches a logger (one per log directory) to each run.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from fluxrs.plugins import hookimpl

__version__ = "0.1.0"
ENV_LOGDIR = "FLUXRS_TENSORBOARD_LOGDIR"


class TensorBoardLogger:
    """Write a run's losses and metrics as TensorBoard scalars.

    `logdir`: the directory of the event files (default ``runs/<date>_<host>``, tensorboardX's);
    `every`: log the batch loss every this many steps; `prefix`: put before every tag;
    `writer`: an existing ``tensorboardX.SummaryWriter`` to write to instead (then it is
    flushed, not closed, at the end of training).

    Tags: ``batch/loss`` (x axis: the step, counted across runs of this logger),
    ``epoch/<name>`` for every number in the epoch's logs (x axis: the epoch),
    ``train/learning_rate`` per epoch, and ``checkpoint`` texts.
    """

    def __init__(self, logdir: str | os.PathLike | None = None, every: int = 1, prefix: str = "",
                 writer: Any = None, flush_secs: int = 10):
        if every < 1:
            raise ValueError(f"TensorBoardLogger: every must be >= 1, got {every}")
        self.logdir = None if logdir is None else os.fspath(logdir)
        self.every, self.prefix, self.flush_secs = int(every), prefix, flush_secs
        self.writer = writer
        self._own_writer = writer is None
        self.steps = 0  # batch steps logged across runs: the x axis of batch/loss
        self._epoch_base = 0
        self._last_epoch = 0

    def _open(self) -> Any:
        if self.writer is None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(logdir=self.logdir, flush_secs=self.flush_secs)
            self.logdir = self.writer.logdir
        return self.writer

    @hookimpl(trylast=True)
    def on_train_begin(self, run):
        self._open()
        # epochs of a later run continue the x axis instead of overwriting the earlier points
        if run.epochs is not None:
            self._epoch_base = self._last_epoch

    @hookimpl(trylast=True)
    def on_batch_end(self, step, loss):
        self.steps += 1
        if self.steps % self.every == 0 and math.isfinite(loss):
            self._open().add_scalar(self.prefix + "batch/loss", loss, self.steps)

    @hookimpl(trylast=True)
    def on_epoch_end(self, run, epoch, logs):
        w = self._open()
        x = self._epoch_base + epoch
        self._last_epoch = max(self._last_epoch, x)
        for name, value in logs.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
                w.add_scalar(f"{self.prefix}epoch/{name}", float(value), x)
        lr = _learning_rate(run.opt)
        if lr is not None:
            w.add_scalar(self.prefix + "train/learning_rate", lr, x)

    @hookimpl(trylast=True)
    def on_checkpoint(self, path, kind, epoch, step, metric):
        what = f"{kind} checkpoint at epoch {epoch}, step {step}" + ("" if metric is None else f", metric {metric:.6g}")
        self._open().add_text(self.prefix + "checkpoint", f"{what}: {path}", step)

    @hookimpl(trylast=True)
    def on_train_end(self):
        if self.writer is None:
            return
        if self._own_writer:
            self.writer.close()  # flushes; the next run opens a new event file in the same directory
            self.writer = None
        else:
            self.writer.flush()


def _learning_rate(opt: Any) -> float | None:
    try:
        from fluxrs.callbacks import get_lr
        return get_lr(opt)
    except Exception:
        return None


# ---------------------------------------------------------------- the module as a plugin

_env_loggers: dict[str, TensorBoardLogger] = {}


@hookimpl
def register_callbacks():
    return {"TensorBoardLogger": TensorBoardLogger}


@hookimpl
def on_train_begin(run):
    """With FLUXRS_TENSORBOARD_LOGDIR set, log this run (without it this plugin costs nothing
    per batch: it attaches its logger only to runs it logs)."""
    logdir = os.environ.get(ENV_LOGDIR)
    if not logdir:
        return
    logger = _env_loggers.get(logdir)
    if logger is None:
        logger = _env_loggers[logdir] = TensorBoardLogger(logdir=logdir)
    run.attach([logger])
