"""A training run as the hooks see it (`Run`), and the glue `train_` and `fx.epochs` use to
call the hooks (`session`, `epochs`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable, Iterator

import operator

from fluxrs.control import SkipStep, StopTraining
from fluxrs.plugins._manager import (ERRORS, SKIP, STOP, PluginError, PluginManager, describe, flags, manager,
                                     plugin_error, request)
from fluxrs.plugins.hookspecs import TRAINING_HOOKS

log = logging.getLogger("fluxrs.plugins")


class _Stack(threading.local):
    def __init__(self) -> None:
        self.runs: list[Run] = []


_stack = _Stack()


def current() -> "Run | None":
    """The innermost run in progress on this thread, or None."""
    runs = _stack.runs
    return runs[-1] if runs else None


def active(pm: PluginManager) -> bool:
    """Whether any plugin of `pm` implements a training hook."""
    hook = pm.hook
    return any(getattr(hook, h).get_hookimpls() for h in TRAINING_HOOKS)


class Run:
    """One training run: an ``fx.epochs(n)`` loop, or a `train_` call made outside one.
    Every training hook receives it as `run`.

    Attributes: `model` (explicit style; None in the implicit style), `params` (the tensors
    being trained), `opt` (the optimiser state from `fx.setup`, or the rule in the implicit
    style), `data` and `batches` (the current `train_` call's data and its length, or None),
    `epochs` (n of ``fx.epochs(n)``, else None), `epoch` (current epoch from 1, or None),
    `step` (updates applied in this run), `logs` (this epoch's metrics, see
    ``on_epoch_end``), `history` (earlier epochs' logs), `stop_training` (set it to end
    training after the current event), `error` (what ended the run, once ended), `started`
    (``time.time()`` at the start), `pm` (the plugin manager whose hooks it calls).
    """

    def __init__(self, pm: PluginManager, epochs: int | None = None):
        self.pm = pm
        self.model: Any = None
        self.params: Any = None
        self.opt: Any = None
        self.data: Any = None
        self.batches: int | None = None
        self.epochs = epochs
        self.epoch: int | None = None
        self.step = 0
        self.logs: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.stop_training = False
        self.error: BaseException | None = None
        self.started = time.time()
        self.ended = False
        self._t0 = time.perf_counter()
        self._epoch_t0 = 0.0
        self._loss_sum = 0.0
        self._loss_n = 0
        self._begun = False
        self._in_epoch = False
        self._own_pm = False
        self._base: tuple | None = None  # (global manager, its version, plugins) when self.pm can be reused
        self._scoped: list[Any] = []
        self._session: Session | None = None

    def __repr__(self) -> str:
        state = "ended" if self.ended else "running"
        ep = f", epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else "") if self.epoch is not None else ""
        return f"<Run {state}: step {self.step}{ep}>"

    # ---------------------------------------------------------------- calling hooks

    def call(self, hook: str, *, only: Iterable[Any] | None = None, **kwargs: Any) -> bool:
        """Call hook `hook` of every plugin (or of the plugins in `only`) with ``run=self``
        and `kwargs`. Returns whether a hook called ``fx.skip()``; ``fx.stop()`` in a hook
        sets ``self.stop_training``. A hook's exception propagates as `PluginError`."""
        prev = flags.cur
        req = flags.cur = request()
        try:
            try:
                if only is None:
                    getattr(self.pm.hook, hook)(run=self, **kwargs)
                else:
                    self._call_only(hook, only, kwargs)
            except PluginError as e:
                raise self._where(e, hook)
            return self._done(req, hook)
        finally:
            flags.cur = prev

    def fire(self, plan: Any, hook: str, args: tuple) -> bool:
        """`call` for the per-batch hooks, with a `plan` from `_plan` and `args` in the order
        of the hook's specification (``run`` first). A plan of plain implementations is run
        here, in pluggy's order, with the same rules (``fx.stop()``/``fx.skip()`` are requests,
        other errors `PluginError`); a hook with wrappers goes through pluggy."""
        if plan.__class__ is not list:
            return self.call(hook, **dict(zip(plan[2:], args[1:])))  # plan: (caller, "run", ...)
        stop = skip = False
        for fn, get, n, name, plugin in plan:
            try:
                if n == 0:
                    fn()
                elif n == 1:
                    fn(get(args))
                else:
                    fn(*get(args))
            except StopTraining:
                stop = True
            except SkipStep:
                skip = True
            except PluginError as e:
                raise self._where(e, hook)
            except Exception as e:
                raise self._where(plugin_error(name, plugin, hook, e), hook) from e
        if stop:
            self.stop_training = True
        return skip

    def _done(self, req: list, hook: str) -> bool:
        if req[ERRORS]:
            raise self._where(req[ERRORS][0], hook)
        if req[STOP]:
            self.stop_training = True
        return req[SKIP]

    def _call_only(self, hook: str, plugins: Iterable[Any], kwargs: dict) -> None:
        # the same order as a full call (pluggy calls its list back to front); wrappers skipped
        kwargs = dict(kwargs, run=self)
        ids = {id(p) for p in plugins}
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if id(impl.plugin) in ids and not (impl.wrapper or impl.hookwrapper):
                impl.function(*[kwargs[a] for a in impl.argnames],
                              **{a: kwargs[a] for a in impl.kwargnames if a in kwargs})

    def _where(self, e: PluginError, hook: str) -> PluginError:
        if e.step is None:
            e.step, e.epoch = self.step, self.epoch
            ep = f", epoch {self.epoch}" if self.epoch is not None else ""
            if hook == "on_batch_end":
                e.where = f" [at step {self.step}{ep}: that step's update was applied whole before the hook ran]"
            elif hook in ("on_batch_begin", "on_nonfinite_loss"):
                e.where = (f" [before step {self.step + 1}{ep}: its update was not applied; {self.step} "
                           "step(s) were]")
            else:
                e.where = f" [after {self.step} step(s){ep}]"
        return e

    # ---------------------------------------------------------------- plugins for this run only

    def attach(self, plugins: Iterable[Any]) -> None:
        """Add plugins for the rest of this run only (other runs and threads do not see
        them). ``callbacks=[a, b]`` of `train_` come here: `a`'s hooks run before `b`'s, and
        both before globally registered plugins of the same priority. A plugin joining a run
        already under way gets ``on_train_begin`` (and ``on_epoch_begin``) at once."""
        new = []
        for p in plugins:
            if p is None or self.pm.get_name(p) is not None or any(p is q for q in new):
                continue
            _check_plugin(p)
            new.append(p)
        if not new:
            return
        if not self._own_pm:
            base = (self.pm, self.pm.version, tuple(new))
            self.pm = _reuse(base) or _with_plugins(self.pm.snapshot(), new)
            self._own_pm, self._base = True, base
        else:
            _with_plugins(self.pm, new)
            self._base = None  # this manager is no longer "global plugins + one list": not reused
        self._scoped.extend(new)
        if self._begun and not self.ended:
            if self.call("on_train_begin", only=new):
                self.stop_training = True
            if self._in_epoch:
                self.call("on_epoch_begin", only=new, epoch=self.epoch)
        if self._session is not None:
            self._session.refresh()

    # ---------------------------------------------------------------- the run's life

    def begin(self) -> None:
        self._begun = True
        if self.call("on_train_begin"):
            self.stop_training = True  # skip at train begin: nothing to train

    def epoch_begin(self, epoch: int) -> bool:
        """Start epoch `epoch`; True when a hook skipped it."""
        self.epoch = epoch
        self.logs = {}
        self._loss_sum, self._loss_n = 0.0, 0
        self._epoch_t0 = time.perf_counter()
        self._in_epoch = True
        skipped = self.call("on_epoch_begin", epoch=epoch)
        if skipped or self.stop_training:
            self._in_epoch = False
        return skipped

    def epoch_end(self, epoch: int) -> None:
        self._in_epoch = False
        logs = {}
        if self._loss_n:
            logs["loss"] = self._loss_sum / self._loss_n
        logs["batches"] = self._loss_n
        logs["time"] = time.perf_counter() - self._epoch_t0
        logs.update(self.logs)  # what fx.plugins.log(...) added during the epoch wins
        self.logs = logs
        self.call("on_epoch_end", epoch=epoch, logs=logs)
        self.history.append(dict(logs))

    def end(self, error: BaseException | None = None) -> None:
        """End the run (once): ``on_train_end``, then drop the run's own plugins."""
        if self.ended:
            return
        self.ended = True
        self.error = error
        self._in_epoch = False
        try:
            if self._begun:
                if error is None and self._loss_n and self.epochs is None and self.epoch is None:
                    self.logs.setdefault("loss", self._loss_sum / self._loss_n)  # a run without epochs
                self.call("on_train_end", error=error)
        except Exception as e:
            if error is None:
                raise
            log.warning("%s (while ending training after %s: %s)", e, type(error).__name__, error)
        finally:
            runs = _stack.runs
            for i in range(len(runs) - 1, -1, -1):
                if runs[i] is self:
                    del runs[i]
                    break
            if self._base is not None:  # the next run with the same callbacks reuses the manager
                _spare.slots = [(self._base, self.pm)] + _spare.slots[:_SPARE - 1]
            else:
                for p in self._scoped:
                    self.pm.unregister(p)
            self._scoped = []
            self._session = None


def _with_plugins(pm: PluginManager, plugins: list) -> PluginManager:
    for p in reversed(plugins):  # pluggy calls the last registered first
        pm.register(p)
    return pm


_SPARE = 4


class _Spare(threading.local):
    """Per thread: the managers of the last few runs with callbacks, kept for later runs with
    the same callbacks (``for ...: train_(..., callbacks=cbs)``): making one costs about half
    a millisecond, finding one here nothing. They keep those callbacks alive until replaced."""

    def __init__(self) -> None:
        self.slots: list[tuple] = []


_spare = _Spare()


def _reuse(base: tuple) -> PluginManager | None:
    for i, ((pm, version, plugins), local) in enumerate(_spare.slots):
        if pm is base[0] and version == pm.version == base[1] and len(plugins) == len(base[2]) and \
                all(a is b for a, b in zip(plugins, base[2])):
            del _spare.slots[i]
            return local
    return None


def _as_list(callbacks: Any) -> list:
    """``callbacks=`` as a list: a list or tuple of plugins, or one plugin."""
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _check_plugin(p: Any) -> None:
    if isinstance(p, type):
        raise TypeError(f"callbacks: got the class {p.__qualname__}; pass an instance, e.g. {p.__qualname__}()")
    project = "fluxrs_impl"
    if not any(getattr(getattr(p, a, None), project, None) is not None for a in dir(p) if not a.startswith("__")):
        raise TypeError(f"callbacks: {describe(p)} implements no fluxrs hook (methods marked @fx.hookimpl); "
                        "for a plain function to call after each batch, pass it as cb=")


def _plan(caller: Any) -> Any:
    """How `Run.fire` calls a per-batch hook: None (no implementation); a list of plain
    implementations in call order, each ``(function, getter of its arguments from the spec's
    argument tuple, their number, plugin name, plugin)``, called directly (a pluggy call costs
    several microseconds, this a fraction of one); or, when there are wrappers, a tuple
    ``(caller, *spec argument names)`` for a call through pluggy. Hook-call tracing
    (``pm.add_hookcall_monitoring``) therefore sees per-batch hooks only with wrappers."""
    impls = caller.get_hookimpls()
    if not impls:
        return None
    spec = tuple(caller.spec.argnames)
    if any(i.wrapper or i.hookwrapper or i.kwargnames for i in impls):
        return (caller, *spec)
    plan = []
    for i in reversed(impls):
        fn = i.function.__wrapped__ if getattr(i.function, "__fluxrs_guarded__", False) else i.function  # fire()
        # does what the guard does
        idx = [spec.index(a) for a in i.argnames]
        get = operator.itemgetter(*idx) if idx else None
        plan.append((fn, get, len(idx), i.plugin_name, i.plugin))
    return plan


class Session:
    """One `train_` call's link to its run: the hook calls `train_`'s loop makes."""

    __slots__ = ("run", "own", "epoch", "bb", "be", "nf")

    def __init__(self, run: Run, own: bool, epoch: int | None):
        self.run, self.own, self.epoch = run, own, epoch
        self.bb = self.be = self.nf = False

    def refresh(self) -> None:
        hook = self.run.pm.hook
        self.bb = _plan(hook.on_batch_begin)
        self.be = _plan(hook.on_batch_end)
        self.nf = _plan(hook.on_nonfinite_loss)

    def begin(self) -> bool:
        """Before the first batch; False when nothing is to be trained (stopped or skipped)."""
        run = self.run
        run._session = self
        if self.own:
            _stack.runs.append(run)
            run.begin()
            if not run.stop_training and self.epoch is not None and run.epoch_begin(self.epoch):
                return False
        self.refresh()
        return not run.stop_training

    def batch_begin(self, index: int, batch: Any) -> bool:
        """True when a hook skipped this batch; raises StopTraining when one stopped training."""
        if self.bb is None:
            return False
        run = self.run
        skipped = run.fire(self.bb, "on_batch_begin", (run, run.step + 1, run.epoch, batch, index))
        if run.stop_training:
            raise StopTraining()
        return skipped

    def batch_end(self, index: int, batch: Any, loss: float) -> None:
        run = self.run
        run.step += 1
        run._loss_sum += loss
        run._loss_n += 1
        if self.be is not None:
            run.fire(self.be, "on_batch_end", (run, run.step, run.epoch, loss, batch, index))
        if run.stop_training:
            raise StopTraining()

    def nonfinite(self, index: int, batch: Any, error: Any) -> bool:
        """A NaN/inf loss: True when a hook skipped the batch; raises StopTraining when one
        stopped training; False: the caller raises `error`."""
        if self.nf is None:
            return False
        run = self.run
        skipped = run.fire(self.nf, "on_nonfinite_loss", (run, run.step + 1, run.epoch, error.value, batch, index,
                                                          error))
        if run.stop_training:
            raise StopTraining()
        return skipped

    def end(self, error: BaseException | None) -> None:
        run = self.run
        run._session = None
        if error is not None:
            run.end(error)  # the whole run, also one this call joined: the exception ends it
            return
        if not self.own:
            return
        try:
            if run._in_epoch:
                run.epoch_end(run.epoch)
        except BaseException as e:
            run.end(e)
            raise
        run.end(None)


def session(callbacks: Any, epoch: int | None, model: Any, params: Any, opt: Any, data: Any) -> Session | None:
    """The hooks of one `train_` call, or None when there are none to call (then `train_`
    runs its plain loop)."""
    run = current()
    cbs = _as_list(callbacks)
    if run is not None:
        if epoch is not None and run.epoch is not None and epoch != run.epoch:
            raise ValueError(f"train_(..., epoch={epoch}) inside fx.epochs, which is at epoch {run.epoch}; leave "
                             "epoch= out there (fx.epochs numbers the epochs)")
        if cbs:
            try:
                run.attach(cbs)
            except BaseException as e:
                run.end(e)
                raise
        if not active(run.pm):
            return None
        s = Session(run, False, None)
    else:
        pm = manager()
        if not cbs and not active(pm):
            return None
        run = Run(pm)
        if cbs:
            run.attach(cbs)
        s = Session(run, True, epoch)
    run.model, run.params, run.opt, run.data = model, params, opt, data
    try:
        run.batches = len(data)
    except TypeError:
        run.batches = None
    return s


def epochs(n: int, callbacks: Any, log_epoch: logging.Logger, start: int = 0) -> Iterator[int]:
    """The body of ``fx.epochs(n, start=start)``: one run spanning epochs start+1..n, with
    epoch hooks."""
    run = Run(manager(), epochs=n)
    _stack.runs.append(run)
    i = start
    try:
        if callbacks is not None:
            run.attach(_as_list(callbacks))
        run.begin()
        while i < n and not run.stop_training and not run.ended:
            i += 1
            if run.epoch_begin(i) or run.stop_training:
                continue  # skipped (or stopped: the loop condition ends it)
            log_epoch.info("Epoch %d", i)
            yield i
            if run.ended:  # a train_ call ended the run with an error, which the caller caught
                break
            run.epoch_end(i)
    except GeneratorExit:  # the loop was left early (break) or abandoned
        run.end(None)
        raise
    except BaseException as e:
        run.end(e)
        raise
    if not run.ended:
        run.end(None)
        return
    for j in range(i + 1, n + 1):  # the run is over (see above): the remaining epochs without hooks
        log_epoch.info("Epoch %d", j)
        yield j
