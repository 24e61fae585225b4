"""Built-in callbacks: plugins on the same hooks as any other (see `fluxrs.plugins`).

Pass them to one run with ``callbacks=``, to ``fx.epochs(n, callbacks=...)``, or register
them for every run with ``fx.plugins.register(obj)``:

>>> import fluxrs as fx, numpy as np
>>> fx.seed_(0)
>>> model = fx.Dense(1, 1)
>>> x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(32, 1); y = 2 * x
>>> opt = fx.setup(fx.Adam(0.1), model)
>>> stop = fx.callbacks.EarlyStopping(patience=2, min_delta=1e-3)
>>> for epoch in fx.epochs(500, callbacks=[stop, fx.callbacks.TerminateOnNaN()]):
...     fx.train_(lambda m, x, y: fx.mse(m(x), y), model, [(x, y)], opt)
>>> stop.stopped, stop.stopped_epoch < 500
(True, True)

Where each runs among the hooks of one event (see "Call order" in `fluxrs.plugins`): `Timer`
first (``tryfirst``), then the monitors (`EarlyStopping`, `ReduceLROnPlateau`,
`ModelCheckpoint`, `TerminateOnNaN`), then the loggers (`ProgressBar`, `CSVLogger`,
``trylast``), which so see every metric and the epoch's decision.

The monitors read a metric from the epoch's ``logs`` (``"loss"``, the mean training loss, by
default; ``fx.plugins.log(val_loss=...)`` adds others). Used without epochs (plain `train_`
calls), each call counts as an epoch for them, and once `EarlyStopping` has stopped, later
calls it is passed to train nothing (``.reset()`` to reuse it).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from typing import Any, TextIO

from fluxrs._checks import require
from fluxrs.plugins.hookspecs import hookimpl

__all__ = ["ProgressBar", "CSVLogger", "LearningCurves", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN",
           "ReduceLROnPlateau", "Timer"]

log = logging.getLogger("fluxrs.callbacks")


def _epochless_end(run: Any, error: Any) -> bool:
    """A run that ended without error and without epochs (a plain train_ call): monitors treat
    it as one epoch, with ``run.logs``."""
    return error is None and run.epochs is None and not run.history and run.epoch is None


# ---------------------------------------------------------------- monitors

class _Monitor:
    """A metric of the epoch logs, and whether a new value is an improvement."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str):
            # PyTorch's ReduceLROnPlateau(optimizer) habit: here the run gives the optimiser state
            raise TypeError(f"{type(self).__name__}: monitor must be the name of a logged metric, such as 'loss' or "
                            f"'val_loss', got {type(monitor).__name__}; the optimiser state comes from the run it "
                            f"watches (train_'s opt_state), so pass {type(self).__name__}(monitor='loss', ...) to "
                            "callbacks=[...]")
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"{type(self).__name__}: mode must be 'min', 'max' or 'auto', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor.lower() for k in ("acc", "auc", "f1", "precision", "recall")) else "min"
        if not min_delta >= 0:
            raise ValueError(f"{type(self).__name__}: min_delta must be >= 0, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self._warned = False

    def _value(self, logs: dict) -> float | None:
        v = logs.get(self.monitor)
        if v is None:
            if not self._warned:
                self._warned = True
                log.warning("%s: metric %r is not in the epoch logs (they have %s); add it with "
                            "fx.plugins.log(%s=...) in the loop or from a tryfirst on_epoch_end hook",
                            type(self).__name__, self.monitor, ", ".join(sorted(logs)) or "nothing", self.monitor)
            return None
        return float(v)

    def _better(self, v: float, best: float) -> bool:
        if math.isnan(v):
            return False
        return v < best - self.min_delta if self.mode == "min" else v > best + self.min_delta

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf


class EarlyStopping(_Monitor):
    """Stop training when `monitor` has not improved by more than `min_delta` for `patience`
    epochs (``mode="min"``: lower is better; ``"max"``; ``"auto"`` picks max for accuracies).
    `baseline`: stop also when the metric does not beat it within `patience` epochs.

    After a stop: ``stopped`` is True, ``stopped_epoch`` the epoch it stopped after,
    ``best`` and ``best_epoch`` the best value and its epoch. An ``fx.epochs`` loop starts it
    afresh; across plain `train_` calls it keeps counting (``reset()`` starts over).

    >>> import fluxrs as fx
    >>> es = fx.callbacks.EarlyStopping(patience=2)
    >>> for epoch in fx.epochs(10, callbacks=[es]):
    ...     fx.plugins.log(loss=[3, 2, 2.5, 2.2, 1, 0][epoch - 1])
    >>> es.stopped_epoch, es.best, es.best_epoch
    (4, 2.0, 2)
    """

    def __init__(self, monitor: str = "loss", patience: int = 3, min_delta: float = 0.0, mode: str = "auto",
                 baseline: float | None = None):
        super().__init__(monitor, mode, min_delta)
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.patience, self.baseline = int(patience), baseline
        self.reset()

    def reset(self) -> None:
        """Forget the best value and any stop, to train afresh."""
        self.best = self._worst() if self.baseline is None else float(self.baseline)
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped = False
        self.stopped_epoch: int | None = None
        self._epochs = 0

    @hookimpl
    def on_train_begin(self, run):
        if run.epochs is not None:  # an fx.epochs loop is one training, as Keras's fit
            self.reset()
        elif self.stopped:
            run.stop_training = True  # a later train_ call after the stop: nothing to train

    @hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self._check(run, epoch, logs)

    @hookimpl
    def on_train_end(self, run, error):
        if _epochless_end(run, error):
            self._epochs += 1
            self._check(run, self._epochs, run.logs)

    def _check(self, run, epoch, logs):
        v = self._value(logs)
        if v is None or self.stopped:
            return
        if self._better(v, self.best):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped, self.stopped_epoch = True, epoch
            run.stop_training = True
            log.info("EarlyStopping: %s did not improve on %.6g (epoch %s) for %d epoch(s); stopping after epoch %d",
                     self.monitor, self.best, self.best_epoch, self.wait, epoch)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has not improved by more than
    `min_delta` for `patience` epochs; then wait `cooldown` epochs; never below `min_lr`.
    Works on an explicit-style state (via ``fx.adjust_``) and on an implicit-style rule (set in
    place). ``lrs`` lists ``(epoch, new_lr)`` of every reduction.

    With a `fx.Scheduler`, the rate it reads is the scheduled one for the next step, and a
    reduction scales the whole schedule by `factor` (the Scheduler's ``eta_scale``): the
    schedule goes on, lower, as when PyTorch's ReduceLROnPlateau follows another scheduler.
    `min_lr` bounds the rate at the reduction; the schedule may take it lower later.

    >>> import fluxrs as fx
    >>> model = fx.Dense(1, 1); opt = fx.setup(fx.Descent(0.1), model)
    >>> plateau = fx.callbacks.ReduceLROnPlateau(factor=0.5, patience=1)
    >>> for epoch in fx.epochs(4, callbacks=[plateau]):
    ...     fx.train_(lambda m, x, y: fx.mse(m(x), y), model, [], opt)   # no data: only the epochs
    ...     fx.plugins.log(loss=1.0)                                       # a loss that never improves
    >>> plateau.lrs
    [(2, 0.05), (3, 0.025), (4, 0.0125)]
    """

    def __init__(self, monitor: str = "loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.cooldown, self.min_lr = float(factor), int(patience), int(cooldown), min_lr
        self.best = self._worst()
        self.wait = 0
        self._cool = 0
        self._epochs = 0
        self.lrs: list[tuple[int, float]] = []

    @hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self._check(run, epoch, logs)

    @hookimpl
    def on_train_end(self, run, error):
        if _epochless_end(run, error):
            self._epochs += 1
            self._check(run, self._epochs, run.logs)

    def _check(self, run, epoch, logs):
        v = self._value(logs)
        if v is None:
            return
        if self._cool > 0:
            self._cool -= 1
            self.wait = 0
        if self._better(v, self.best):
            self.best, self.wait = v, 0
            return
        if self._cool > 0:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        lr = get_lr(run.opt)
        if lr is None:
            log.warning("ReduceLROnPlateau: no learning rate (eta) found in %r", run.opt)
            return
        new = max(lr * self.factor, self.min_lr)
        if lr - new > 1e-12 * max(lr, 1e-30):
            set_lr(run.opt, new)
            self.lrs.append((epoch, new))
            log.info("ReduceLROnPlateau: epoch %d: learning rate %.4g -> %.4g", epoch, lr, new)
        self._cool, self.wait = self.cooldown, 0


def get_lr(opt: Any) -> float | None:
    """The learning rate (``eta``) of an optimiser state from `fx.setup`, or of a rule (the
    first rule of a chain that has one); for a `fx.Scheduler`, the rate the next update will
    use (the schedule's value now, times its ``eta_scale``). None when no rule has one."""
    from fluxrs.optimise.rules import OptimiserChain, Rule
    from fluxrs.optimise.schedules import Scheduler

    rules = [opt] if isinstance(opt, Rule) else [leaf.rule for leaf in _leaves(opt)]
    for r in rules:
        if isinstance(r, Scheduler):
            r = r.current()
        for sub in (r.rules if isinstance(r, OptimiserChain) else (r,)):
            if "eta" in sub.fields:
                return float(sub.eta)
    return None


def _leaves(tree: Any) -> list[Any]:
    from fluxrs.functor import Struct
    from fluxrs.optimise import Leaf
    out: list[Any] = []

    def walk(t):
        if isinstance(t, Leaf):
            out.append(t)
        elif isinstance(t, (list, tuple)):
            for v in t:
                walk(v)
        elif isinstance(t, dict):
            for v in t.values():
                walk(v)
        elif isinstance(t, Struct):
            for v in vars(t).values():
                walk(v)

    walk(tree)
    return out


def set_lr(opt: Any, lr: float) -> None:
    """Set the learning rate: ``fx.adjust_(opt, lr)`` for a state from `fx.setup`; in place for
    a rule (the implicit style keeps its state in the rule, so it cannot be replaced). A
    `fx.Scheduler` keeps its schedule and scales it (its ``eta_scale``) so that the rate of
    the next update is `lr`; later steps follow the schedule's shape from there."""
    from fluxrs.optimise import adjust_
    from fluxrs.optimise.rules import OptimiserChain, Rule
    from fluxrs.optimise.schedules import Scheduler

    if isinstance(opt, Rule):
        if isinstance(opt, Scheduler):
            object.__setattr__(opt, "eta_scale", _rescaled(opt, lr).eta_scale)
            return
        for sub in (opt.rules if isinstance(opt, OptimiserChain) else (opt,)):
            if "eta" in sub.fields:
                object.__setattr__(sub, "eta", sub._check("eta", lr))
        return
    leaves = _leaves(opt)
    if not any(isinstance(leaf.rule, Scheduler) for leaf in leaves):
        adjust_(opt, lr)
        return
    new: dict[int, Any] = {}  # rules shared by several parameters stay shared
    for leaf in leaves:
        r = leaf.rule
        if id(r) not in new:
            new[id(r)] = _rescaled(r, lr) if isinstance(r, Scheduler) else \
                r.adjust(eta=lr) if get_lr(r) is not None else r
    for leaf in leaves:
        leaf.rule = new[id(leaf.rule)]


def _rescaled(sched: Any, lr: float) -> Any:
    """`sched` (a Scheduler) with the eta_scale that makes its current rate `lr`."""
    now = get_lr(sched)
    if now is None:
        return sched
    if not now > 0:
        raise ValueError(f"set_lr: {sched!r} schedules a learning rate of {now} at step {sched.t}, which no factor "
                         "can scale to a new rate; schedule a rate > 0 (or adjust_ its schedule)")
    return sched.adjust(eta_scale=sched.eta_scale * lr / now)


class ModelCheckpoint(_Monitor):
    """Save the model (and its optimiser state) after each epoch: ``last`` every epoch, and
    ``best`` when `monitor` improved. Files go to `dirpath`, named by `filename` (formatted
    with `kind`, `epoch` and `step`), written with ``fx.save`` (safetensors, atomically: a
    crash mid-save leaves the previous file whole). The epoch, step, kind and metric are saved
    as metadata, with this thread's random-generator state (``rng``, as
    ``fx.random.get_state()`` at the epoch's end), so that
    ``fx.epochs(n, start=fx.load_checkpoint(last_path, model, opt))`` continues the run
    exactly: same shuffles, same Dropout masks. After each save, every plugin's
    ``on_checkpoint`` hook is called.

    >>> import fluxrs as fx, tempfile, os
    >>> model = fx.Dense(2, 1); opt = fx.setup(fx.Adam(0.01), model)
    >>> ckpt = fx.callbacks.ModelCheckpoint(tempfile.mkdtemp())
    >>> data = [(fx.ones((4, 2)), fx.zeros((4, 1)))]
    >>> for epoch in fx.epochs(3, callbacks=[ckpt]):
    ...     fx.train_(lambda m, x, y: fx.mse(m(x), y), model, data, opt)
    >>> sorted(os.listdir(ckpt.dirpath)), ckpt.best_epoch
    (['best.safetensors', 'last.safetensors'], 3)
    >>> fx.load(ckpt.best_path).meta["epoch"]
    3
    """

    def __init__(self, dirpath: str | os.PathLike, monitor: str = "loss", mode: str = "auto",
                 save_best: bool = True, save_last: bool = True, min_delta: float = 0.0,
                 filename: str = "{kind}.safetensors", save_opt: bool = True):
        super().__init__(monitor, mode, min_delta)
        self.dirpath = os.fspath(dirpath)
        self.save_best, self.save_last, self.filename, self.save_opt = save_best, save_last, filename, save_opt
        self.best = self._worst()
        self.best_epoch: int | None = None
        self.best_path: str | None = None
        self.last_path: str | None = None
        self.saved: list[tuple[str, str, int | None]] = []  # (kind, path, epoch)
        self._epochs = 0

    @hookimpl
    def on_epoch_end(self, run, epoch, logs):
        self._save(run, epoch, logs)

    @hookimpl
    def on_train_end(self, run, error):
        if _epochless_end(run, error):
            self._epochs += 1
            self._save(run, self._epochs, run.logs)

    def _save(self, run, epoch, logs):
        target = run.model if run.model is not None else run.params
        if target is None:
            return
        v = logs.get(self.monitor)
        v = None if v is None else float(v)
        if self.save_last:
            self.last_path = self._write(run, "last", epoch, v, target)
        if self.save_best:
            v = self._value(logs)
            if v is not None and self._better(v, self.best):
                self.best, self.best_epoch = v, epoch
                self.best_path = self._write(run, "best", epoch, v, target)

    def _write(self, run, kind, epoch, metric, target) -> str:
        from fluxrs import random
        from fluxrs.io import save
        from fluxrs.optimise.rules import Rule

        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, self.filename.format(kind=kind, epoch=epoch, step=run.step))
        opt = run.opt if self.save_opt and run.model is not None and not isinstance(run.opt, Rule) else None
        if not isinstance(target, (list, tuple, dict)) and run.model is None:
            target = list(target)  # Params
        save(path, target, opt, epoch=epoch, step=run.step, kind=kind,
             metric=None if metric is None or not math.isfinite(metric) else metric, monitor=self.monitor,
             rng=random.get_state())
        self.saved.append((kind, path, epoch))
        run.call("on_checkpoint", path=path, kind=kind, epoch=epoch, step=run.step, metric=metric)
        return path


class TerminateOnNaN:
    """End training cleanly (``fx.stop()``, no exception) when a loss is NaN or infinite; the
    update from that batch is not applied. Without it, `train_` raises
    `fx.NonFiniteLossError`. ``terminated`` is ``(step, loss)`` once it stopped.

    >>> import fluxrs as fx, math
    >>> model = fx.Dense(1, 1); opt = fx.setup(fx.Descent(0.1), model)
    >>> nan = fx.callbacks.TerminateOnNaN()
    >>> data = [fx.tensor([[1.0]]), fx.tensor([[math.nan]]), fx.tensor([[1.0]])]
    >>> fx.train_(lambda m, x: m(x).sum() * x.sum(), model, data, opt,
    ...           callbacks=[nan])
    >>> nan.terminated
    (2, nan)
    """

    def __init__(self) -> None:
        self.terminated: tuple[int, float] | None = None

    @hookimpl
    def on_nonfinite_loss(self, run, step, epoch, loss, index):
        from fluxrs.control import stop
        self.terminated = (step, loss)
        where = f" (epoch {epoch})" if epoch is not None else ""
        log.warning("TerminateOnNaN: loss is %s at step %d%s, data item %d; stopping training", loss, step, where,
                    index)
        stop()


class Timer:
    """Time the run: ``logs["elapsed"]`` (seconds since training began) and
    ``logs["steps_per_s"]`` (this epoch) for every plugin after it (it runs first:
    ``tryfirst``). After training: ``total`` (seconds), ``epoch_times`` and ``steps``;
    ``summary()`` says it in a line, also logged at INFO on the ``fluxrs.callbacks`` logger.

    >>> import fluxrs as fx
    >>> t = fx.callbacks.Timer()
    >>> for epoch in fx.epochs(2, callbacks=[t]):
    ...     pass
    >>> len(t.epoch_times), t.total >= 0, t.summary().startswith("trained 0 steps in 2 epochs")
    (2, True, True)
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.epoch_times: list[float] = []
        self.steps = 0
        self._t0 = self._te = time.perf_counter()
        self._step0 = 0

    @hookimpl(tryfirst=True)
    def on_train_begin(self, run):
        self._t0 = time.perf_counter()
        self.epoch_times, self.steps, self.total = [], 0, 0.0

    @hookimpl(tryfirst=True)
    def on_epoch_begin(self, run):
        self._te = time.perf_counter()
        self._step0 = run.step

    @hookimpl(tryfirst=True)
    def on_epoch_end(self, run, logs):
        now = time.perf_counter()
        dt = now - self._te
        self.epoch_times.append(dt)
        logs["elapsed"] = now - self._t0
        logs["steps_per_s"] = (run.step - self._step0) / dt if dt > 0 else 0.0

    @hookimpl(tryfirst=True)
    def on_train_end(self, run):
        self.total = time.perf_counter() - self._t0
        self.steps = run.step
        log.info("Timer: %s", self.summary())

    def summary(self) -> str:
        rate = f", {self.steps / self.total:.1f} steps/s" if self.total > 0 and self.steps else ""
        per = f", {sum(self.epoch_times) / len(self.epoch_times):.3g} s per epoch" if self.epoch_times else ""
        return f"trained {self.steps} steps in {len(self.epoch_times)} epochs, {self.total:.3g} s{rate}{per}"


# ---------------------------------------------------------------- loggers

def _batch_size(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first array, else 1."""
    b = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    shape = getattr(b, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return 1


class ProgressBar:
    """A tqdm progress bar per epoch (per `train_` call), with the running loss (exponential
    average, weight `smoothing` on the past) and the throughput in samples per second. At
    the epoch's end it shows the epoch's mean loss and the metrics in ``logs``. Runs last
    (``trylast``). `file`, `leave`, `disable` and other keywords go to tqdm.

    >>> import fluxrs as fx, io
    >>> out = io.StringIO()
    >>> model = fx.Dense(2, 1); opt = fx.setup(fx.Descent(0.1), model)
    >>> data = [(fx.ones((8, 2)), fx.zeros((8, 1)))] * 4
    >>> fx.train_(lambda m, x, y: fx.mse(m(x), y), model, data, opt, epoch=1,
    ...           callbacks=[fx.callbacks.ProgressBar(file=out, mininterval=0)])
    >>> "epoch 1: 100%" in out.getvalue() and "4/4" in out.getvalue() and "samples/s" in out.getvalue()
    True
    """

    def __init__(self, smoothing: float = 0.9, unit: str = "batch", **tqdm_kwargs: Any):
        self.smoothing, self.unit, self.kwargs = smoothing, unit, tqdm_kwargs
        self.bar: Any = None
        self._running: float | None = None
        self._samples = 0
        self._t0 = 0.0
        self._shown = 0.0

    def _open(self, run):
        from tqdm.auto import tqdm
        self._close()
        if run.epoch is not None:
            desc = f"epoch {run.epoch}" + (f"/{run.epochs}" if run.epochs else "")
        else:
            desc = "train_"
        kw = dict(total=run.batches, desc=desc, unit=self.unit, dynamic_ncols=True, leave=True)
        kw.update(self.kwargs)
        self.bar = tqdm(**kw)
        self._running, self._samples, self._t0, self._shown = None, 0, time.perf_counter(), 0.0

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @hookimpl(trylast=True)
    def on_batch_end(self, run, loss, batch, index):
        if self.bar is None or index == 0:
            self._open(run)
        s = self.smoothing
        self._running = loss if self._running is None else s * self._running + (1 - s) * loss
        self._samples += _batch_size(batch)
        now = time.perf_counter()
        if now - self._shown > 0.1 or (run.batches is not None and index + 1 >= run.batches):
            self._shown = now
            dt = now - self._t0
            self.bar.set_postfix_str(f"loss={self._running:.4g}, {self._samples / dt if dt > 0 else 0:.4g} samples/s",
                                     refresh=False)
        self.bar.update(1)

    @hookimpl(trylast=True)
    def on_epoch_end(self, logs):
        if self.bar is not None:
            extra = ", ".join(f"{k}={v:.4g}" for k, v in logs.items()
                              if isinstance(v, (int, float)) and k not in ("batches", "time"))
            dt = time.perf_counter() - self._t0
            self.bar.set_postfix_str(f"{extra}, {self._samples / dt if dt > 0 else 0:.4g} samples/s", refresh=True)
        self._close()

    @hookimpl(trylast=True)
    def on_train_end(self):
        self._close()


class CSVLogger:
    """Write a CSV row per epoch (``per="epoch"``: the epoch and its logs) or per batch
    (``per="batch"``: step, epoch, loss) to `path`. The columns are those of the first row;
    `append` keeps an existing file's rows. Runs last (``trylast``), so it sees every metric.

    >>> import fluxrs as fx, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
    >>> for epoch in fx.epochs(2, callbacks=[fx.callbacks.CSVLogger(path)]):
    ...     fx.plugins.log(loss=1.0 / epoch, val_loss=2.0 / epoch)
    >>> print(open(path).read().replace("\\r", ""), end="")
    epoch,loss,val_loss
    1,1.0,2.0
    2,0.5,1.0
    """

    def __init__(self, path: str | os.PathLike, per: str = "epoch", separator: str = ",", append: bool = False):
        if per not in ("epoch", "batch"):
            raise ValueError(f"CSVLogger: per must be 'epoch' or 'batch', got {per!r}")
        self.path, self.per, self.separator, self.append = os.fspath(path), per, separator, append
        self.columns: list[str] | None = None
        self._file: TextIO | None = None
        self._writer: Any = None
        self._started = False
        self._dropped: set[str] = set()
        self.fluxrs_disabled_hooks = {"on_batch_end"} if per == "epoch" else set()  # no per-batch call when unused

    def _row(self, row: dict) -> None:
        if self._file is None:
            exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
            mode = "a" if (self._started or self.append) else "w"
            if mode == "a" and exists and self.columns is None:
                with open(self.path, newline="") as f:
                    first = f.readline().strip()
                self.columns = first.split(self.separator) if first else None
            self._file = open(self.path, mode, newline="")
            self._started = True
            if self.columns is None or mode == "w" or not exists:
                self.columns = self.columns if (mode == "a" and exists) else list(row)
                csv.writer(self._file, delimiter=self.separator).writerow(self.columns)
            self._writer = csv.DictWriter(self._file, self.columns, delimiter=self.separator, extrasaction="ignore")
        new = set(row) - set(self.columns) - self._dropped
        if new:
            self._dropped |= new
            log.warning("CSVLogger: %s not in the columns of %s (%s), not written", sorted(new), self.path,
                        ", ".join(self.columns))
        self._writer.writerow({k: ("" if v is None else v) for k, v in row.items()})

    @hookimpl(trylast=True)
    def on_batch_end(self, step, epoch, loss):
        if self.per == "batch":
            self._row({"step": step, "epoch": epoch, "loss": loss})

    @hookimpl(trylast=True)
    def on_epoch_end(self, epoch, logs):
        if self.per == "epoch":
            self._row({"epoch": epoch, **{k: v for k, v in logs.items() if k not in ("batches", "time")}})

    @hookimpl(trylast=True)
    def on_train_end(self, run, error):
        if self.per == "epoch" and _epochless_end(run, error) and run.logs:
            self._row({"epoch": None, **{k: v for k, v in run.logs.items() if k not in ("batches", "time")}})
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


class LearningCurves:
    """Plot the metrics of each epoch to a PNG (matplotlib), redrawn after every epoch so
    the picture follows a long run: losses (names with "loss") in one panel, accuracies
    (names with "acc") in another, any other metric named in `metrics` in a third. The
    numbers are kept in ``history`` (metric → one value per epoch, NaN where an epoch did not
    log it). The file is replaced whole, never left half-written.

    ``LearningCurves(path, metrics=None, title=None)``: `metrics` picks the metrics to plot
    (default: every number the epochs log except timings).

    >>> import fluxrs as fx, numpy as np, os, tempfile
    >>> curves = fx.callbacks.LearningCurves(os.path.join(tempfile.mkdtemp(), "curves.png"))
    >>> for epoch in fx.epochs(3, callbacks=[curves]):
    ...     fx.plugins.log(loss=1.0 / epoch, test_acc=0.5 + 0.1 * epoch)
    >>> curves.history["test_acc"], os.path.getsize(curves.path) > 0
    ([0.6, 0.7, 0.8], True)
    """

    _SKIP = ("elapsed", "steps_per_s", "lr", "batches", "time")  # bookkeeping, not learning

    def __init__(self, path: str | os.PathLike, metrics: Any = None, title: str | None = None):
        require("matplotlib", "LearningCurves draws with matplotlib", "plot")
        self.path = os.fspath(path)
        self.metrics = None if metrics is None else list(metrics)
        self.title = title
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    @hookimpl(trylast=True)
    def on_epoch_end(self, epoch, logs):
        names = self.metrics if self.metrics is not None else [
            k for k, v in logs.items() if k not in self._SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)]
        for k in names:
            self.history.setdefault(k, [math.nan] * len(self.epochs))
        self.epochs.append(epoch)
        for k, vals in self.history.items():
            v = logs.get(k)
            vals.append(float(v) if isinstance(v, (int, float)) else math.nan)
        self.draw()

    def draw(self) -> None:
        """Write the picture of ``history`` to ``path`` now."""
        import io

        from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads and without a display

        from fluxrs.io import _write_atomic

        groups = {"loss": [], "accuracy": [], "other": []}
        for k in self.history:
            groups["loss" if "loss" in k else "accuracy" if "acc" in k else "other"].append(k)
        panels = [(g, ks) for g, ks in groups.items() if ks]
        fig = Figure(figsize=(5 * max(1, len(panels)), 3.6), layout="constrained")
        for i, (g, ks) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for k in ks:
                ax.plot(self.epochs, self.history[k], marker="o" if len(self.epochs) < 30 else None, label=k)
            ax.set_xlabel("epoch")
            ax.set_ylabel(g)
            ax.grid(alpha=0.3)
            ax.legend()
        if self.title:
            fig.suptitle(self.title)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        _write_atomic(self.path, buf.getvalue())
