"""`train_`: one epoch of training, in each of the three styles Flux has had, and its helpers.

Explicit style (Flux 0.14): the loss takes the model, then the datapoint.

>>> import fluxrs as fx, numpy as np
>>> fx.seed_(0)
>>> model = fx.Dense(1, 1)
>>> x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(32, 1); y = 3 * x + 1
>>> opt = fx.setup(fx.Adam(0.1), model)
>>> for epoch in range(200):
...     fx.train_(lambda m, x, y: fx.mse(m(x), y), model, [(x, y)], opt)
>>> round(float(model.weight), 1), round(float(model.bias), 1)
(3.0, 1.0)

Implicit style (Flux 0.13): the loss closes over the model, `Params` say what to train.

>>> ps = fx.params(model)
>>> fx.train_(lambda x, y: fx.mse(model(x), y), ps, [(x, y)], fx.Descent(0.1), cb=lambda: None)

Oldest style: the rule is bound to the parameters, ``fx.train_(loss, data, opt)``.

>>> fx.train_(lambda x, y: fx.mse(model(x), y), [(x, y)], fx.Descent(0.1, ps))
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
import threading
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs.autodiff import Params, check_recording
from fluxrs.compile import record
from fluxrs.control import SkipStep, StopTraining, skip, stop
from fluxrs._checks import warn_caller as _warn_caller
from fluxrs.functor import Struct
from fluxrs.functor import leaves as leaves_of
from fluxrs.optimise.interface import (Leaf, _gather, _implicit_update, check_state_not_none, fused_plan, setup,
                                       update_leaves)
from fluxrs.optimise.rules import Rule

__all__ = ["train_", "stop", "skip", "StopTraining", "SkipStep", "NonFiniteLossError", "throttle", "epochs",
           "ncycle", "grad_reducer"]

log = logging.getLogger("fluxrs")


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or infinite; raised before the update that would spread it.

    `index` is the datapoint's position in this epoch (from 0), `value` the loss."""

    def __init__(self, index: int, value: float):
        self.index, self.value = index, value
        super().__init__(f"loss is {value} on data item {index} (counting from 0), stopping training; "
                         "the parameters were not updated with this item's gradient")


# ---------------------------------------------------------------- checking what the user gave

def _splat(d: Any, arity: tuple[int, float] | None = None) -> tuple:
    # Flux splats a Tuple datapoint into the loss's arguments; anything else is one argument.
    # A list is splatted too when the loss (taking `arity` data arguments) cannot take it whole
    # but can take its items: a PyTorch DataLoader's batches are [x, y] lists.
    if isinstance(d, tuple):
        return d
    if type(d) is list and arity is not None and not arity[0] <= 1 <= arity[1] and arity[0] <= len(d) <= arity[1]:
        return tuple(d)
    return (d,)


def _data_arity(loss: Callable, lead: int) -> tuple[int, float] | None:
    """(fewest, most) positional arguments `loss` takes after its `lead` leading ones (the
    model), or None when its signature cannot be read."""
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):
        return None
    lo, hi = 0, 0.0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            lo += p.default is p.empty
        elif p.kind is p.VAR_POSITIONAL:
            hi = math.inf
    return lo - lead, hi - lead


def _arity_error(loss: Callable, args: tuple, lead: int, i: int, d: Any) -> TypeError | None:
    """A clear error if calling `loss` with `args` failed because of their number, else None
    (a TypeError raised inside the loss is the user's own and is left alone)."""
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args)
    except TypeError:
        what = (f"a tuple of {len(d)} values" if isinstance(d, tuple)
                else f"a list of {len(d)} values, passed as one argument (a list is splatted like a tuple only "
                     f"when the loss takes its {len(d)} values)" if type(d) is list
                else f"a single {type(d).__name__} (not a tuple, so passed as one argument)")
        call = "loss(model, *item)" if lead else "loss(*item)"
        return TypeError(f"train_: data item {i} is {what}; the loss is called as {call}, i.e. with {len(args)} "
                         f"positional argument(s), but {_name(loss)}{sig} does not accept that. Make the loss take "
                         f"{'the model and ' if lead else ''}the datapoint's {len(args) - lead} value(s), or "
                         "change the data (e.g. zip(xs, ys) gives (x, y) tuples).")
    return None


def _name(f: Callable) -> str:
    return getattr(f, "__name__", type(f).__name__)


def _check_scalar(val: Any, i: int) -> None:
    if isinstance(val, Tensor):
        if val.size != 1:
            raise ValueError(f"train_: the loss must return a scalar, but on data item {i} it returned a tensor of "
                             f"shape {tuple(val.shape)}; reduce it, e.g. with .mean() or .sum(), or use a loss "
                             "from fx.losses (which reduce with agg=mean)")
        return
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        return
    raise TypeError(f"train_: the loss must return a scalar, but on data item {i} it returned "
                    f"{type(val).__name__}")


def _callbacks(cb: Any) -> list[Callable[[], Any]]:
    if cb is None:
        return []
    if callable(cb):
        return [cb]
    cbs = list(cb)
    for c in cbs:
        if not callable(c):
            raise TypeError(f"train_: every callback must be callable, got {type(c).__name__}")
    return cbs


def _progress(data: Any, enabled: Any, desc: str | None):
    if not enabled:
        return None
    if hasattr(enabled, "update") and hasattr(enabled, "set_postfix"):
        return enabled  # a bar the caller made, e.g. one spanning every epoch
    from tqdm.auto import tqdm
    try:
        total = len(data)
    except TypeError:
        total = None
    return tqdm(total=total, desc=desc or "train_", unit="batch", leave=True, dynamic_ncols=True)


# ---------------------------------------------------------------- train_

def train_(loss: Callable, *args: Any, cb: Any = None, progress: Any = False, desc: str | None = None,
           callbacks: Any = None, epoch: int | None = None, compile: bool = False) -> None:
    """Train for one pass over the data (one epoch), updating parameters in place.

    * Explicit (Flux 0.14): ``train_(loss, model, data, opt_state)`` with ``loss(m, x, y)``
      and ``opt_state = fx.setup(rule, model)``.
    * Implicit (Flux 0.13): ``train_(loss, params, data, opt)`` with ``loss(x, y)``
      closing over the model and `opt` a rule that keeps its state.
    * Oldest: ``train_(loss, data, opt)`` with `opt` bound to its parameters, e.g.
      ``fx.Descent(0.1, fx.params(m))``.

    A tuple datapoint is splatted into the loss's arguments; anything else is passed as one,
    except a list that the loss cannot take whole but can take item by item (a PyTorch
    DataLoader's ``[x, y]`` batches), which is splatted like a tuple.
    `cb` (a function or a list of them, taking no arguments) runs after each update; in it or
    in the loss, `fx.stop()` ends training and `fx.skip()` (in the loss) skips this update.
    A NaN or infinite loss raises `NonFiniteLossError` before its update. ``progress=True``
    shows a progress bar (tqdm) with the running loss; ``progress=bar`` advances a tqdm bar
    you made (say, one spanning all epochs) and leaves it open.

    Plugins (`fx.plugins`) see the run through their hooks: ``callbacks=[...]`` takes plugin
    objects (``fx.callbacks.EarlyStopping(...)``, anything with ``@fx.hookimpl`` methods) for
    this call only (for the rest of the ``fx.epochs`` loop when called inside one);
    ``epoch=k`` outside ``fx.epochs`` makes this call epoch `k` for the epoch hooks.

    ``compile=True`` (explicit style) runs the loss in Python on the first step only, records
    the ops it ran, and replays them on later steps (forward, gradient and update in one
    call from Python, the GIL released throughout): the same numbers, less Python per step.
    Like ``jax.jit`` it suits a loss that is a fixed composition of tensor ops of its
    arguments: the loss's Python side effects (prints, ``fx.skip()``/``fx.stop()`` inside
    it) happen only when it records, which it does again when the data's shapes change.
    Float numpy data are given to the loss as tensors of the parameters' dtype (as the layers
    would convert them). Where a step cannot be compiled (other data, such as integer labels;
    a loss that needs its data as numpy arrays; a layer with running statistics; an op
    without a replay; a tensor the loss makes from outside the ops, such as a dropout mask; a
    loss that reads tensor values with ``float()`` or numpy while it computes) train_ warns
    once and trains as without `compile`. Data of a new shape (a
    last, smaller batch) are recorded once and replayed from then on. When no callback or
    hook watches single batches and the data are a list, a tuple or a DataLoader, up to 32
    steps (or ~50 ms of them) run per call, with the GIL released, so threads training side by
    side seldom wait on each other's Python; a progress bar still counts every batch.

    >>> import fluxrs as fx
    >>> m = fx.Dense(2, 1)
    >>> data = [(fx.tensor([[1.0, 2.0]]), fx.tensor([[3.0]]))] * 3
    >>> fx.train_(lambda m, x, y: fx.mse(m(x), y), m, data, fx.setup(fx.Descent(0.1), m), compile=True)
    """
    check_recording("train_")
    if len(args) == 3:
        target, data, opt = args
        if isinstance(target, Params):
            if compile:
                raise TypeError("train_(..., compile=True) compiles the explicit style, train_(loss, model, data, "
                                "opt_state); the implicit style (params) runs as usual without it")
            return _train_implicit(loss, target, data, opt, cb, progress, desc, callbacks, epoch)
        return _train_explicit(loss, target, data, opt, cb, progress, desc, callbacks, epoch, compile)
    if len(args) == 2:
        data, opt = args
        if not isinstance(opt, Rule):
            raise TypeError(f"train_(loss, data, opt): opt must be a rule bound to parameters, e.g. "
                            f"fx.Descent(0.1, fx.params(model)); got {type(opt).__name__}. For the explicit style "
                            "call train_(loss, model, data, fx.setup(rule, model)).")
        if opt.params is None:
            raise TypeError(f"train_(loss, data, opt): {opt!r} is not bound to any parameters; write "
                            f"{type(opt).__name__}(..., fx.params(model)), or use train_(loss, fx.params(model), "
                            "data, opt)")
        if compile:
            raise TypeError("train_(..., compile=True) compiles the explicit style, train_(loss, model, data, "
                            "opt_state); train_(loss, data, opt) runs as usual without it")
        return _train_implicit(loss, opt.params, data, opt, cb, progress, desc, callbacks, epoch)
    raise TypeError(f"train_ takes (loss, model, data, opt_state), (loss, params, data, opt) or (loss, data, opt); "
                    f"got loss and {len(args)} more positional arguments")


# ---------------------------------------------------------------- plugin hooks
# The plugins (fluxrs.plugins) sit above training: they call into it, and load pluggy. So
# training reaches their hooks through `_plugins`, a function returning the hook runner (an
# object with the `session` and `epochs` of fluxrs.plugins._run), which the package installs
# with `use_plugins`, deferring the plugins' import to the first run.
_plugins: Callable[[], Any] | None = None


def use_plugins(runner: Callable[[], Any]) -> None:
    """Install the function returning the plugin hook runner that `train_` and `epochs` use:
    its ``session(callbacks, epoch, model, params, opt, data)`` opens one `train_` call's
    hooks (None when there are none to call), its ``epochs(n, callbacks, log, start)`` runs
    an ``fx.epochs`` loop. ``import fluxrs`` installs fluxrs.plugins's."""
    global _plugins
    _plugins = runner


def _runner() -> Any:
    if _plugins is None:
        raise RuntimeError("fluxrs.train: no plugin hook runner is installed; `import fluxrs` installs it")
    return _plugins()


def _hooks(callbacks: Any, epoch: int | None, model: Any, params: Any, opt: Any, data: Any):
    """The plugin hooks of one train_ call (fluxrs.plugins), or None when no plugin implements a
    training hook and there are no `callbacks`: then the loop makes no hook calls at all."""
    return _runner().session(callbacks, epoch, model, params, opt, data)


# Compiled steps run in groups per call into Rust: at most this many batches, fewer when the
# steps are slow, so that a group takes about _GROUP_SECONDS (Ctrl-C waits for a group to end),
# and fewer once the group holds _GROUP_BYTES of tensors.
_GROUP_STEPS = 32
_GROUP_SECONDS = 0.05
_GROUP_BYTES = 8 << 20


def _loop(data: Any, step: Callable[[int, Any], float | None], cb: Any, progress: Any, desc: str | None,
          s: Any = None, steps: Callable[[int, list], list[float] | None] | None = None) -> None:
    """The loop shared by every style: step, plugin hooks (session `s`), callbacks, stop/skip,
    progress bar. `steps(i, ds)`, where given, makes the steps for the leading batches of `ds`
    (numbered from `i`) it can make in one go and returns their losses, or None when it will
    make no more; the loop uses it when no hook or callback watches single batches and the data
    are already made (`_groupable`)."""
    cbs = _callbacks(cb)
    bar = _progress(data, progress, desc)
    running = None

    def shown(val: float | None) -> None:
        nonlocal running
        if bar is not None:
            if val is not None:
                running = val if running is None else 0.9 * running + 0.1 * val
                bar.set_postfix(loss=f"{running:.4g}", refresh=False)
            bar.update(1)

    def one(i: int, d: Any) -> None:
        try:
            shown(step(i, d))
        except SkipStep:
            shown(None)

    try:
        if steps is not None and s is None and not cbs and _groupable(data):
            # Nothing watches single batches: the steps a group's batches allow run in one
            # call, with the GIL released, the rest (the first of a new shape) one by one.
            i, it, most = 0, iter(data), _GROUP_STEPS
            while group := _group(it, most):
                k = 0
                while k < len(group):
                    t = time.perf_counter()
                    vals = steps(i + k, group[k:])
                    if vals is None:  # not compiling any more: one by one from here on
                        break
                    for v in vals:
                        shown(v)
                    if vals:
                        per = (time.perf_counter() - t) / len(vals)
                        most = max(1, min(_GROUP_STEPS, int(_GROUP_SECONDS / max(per, 1e-9))))
                    k += len(vals)
                    if k < len(group):
                        one(i + k, group[k])
                        k += 1
                for j in range(k, len(group)):
                    one(i + j, group[j])
                i += len(group)
                if vals is None:
                    for i, d in enumerate(it, i):
                        one(i, d)
                    break
        else:
            for i, d in enumerate(data if s is None or s.begin() else ()):
                if s is not None and s.batch_begin(i, d):  # a hook skipped this batch
                    shown(None)
                    continue
                try:
                    val = step(i, d)
                except SkipStep:
                    shown(None)
                    continue
                except NonFiniteLossError as e:
                    if s is None or not s.nonfinite(i, d, e):  # raises StopTraining if a hook stopped training
                        raise
                    shown(None)
                    continue  # a hook skipped this batch
                if s is not None:
                    s.batch_end(i, d, val)
                try:
                    for c in cbs:
                        c()
                except SkipStep:
                    pass  # the update has happened; skipping now only skips the rest of the callbacks
                shown(val)
    except StopTraining:
        log.debug("train_: stopped by fx.stop()")
    except BaseException as e:
        if s is not None:
            s.end(e)
        raise
    finally:
        if bar is not None and bar is not progress:
            bar.close()
    if s is not None:
        s.end(None)


def _groupable(data: Any) -> bool:
    """Whether batches may be taken from `data` ahead of their steps: a list or tuple, or a
    DataLoader without a collate function of the caller's. An arbitrary iterator may refill
    one tensor in place for each batch, or wait on the training, so it is stepped one by one."""
    from fluxrs.data import DataLoader
    return isinstance(data, (list, tuple)) or (isinstance(data, DataLoader) and not callable(data.collate))


def _group(it: Iterator, most: int) -> list:
    """The next batches of `it`: up to `most` of them, fewer once their tensors hold
    _GROUP_BYTES."""
    out, size = [], 0
    for d in it:
        out.append(d)
        parts = d if isinstance(d, (tuple, list)) else (d,)  # a list counts whether or not the loss splats it
        size += sum(a.size * a.dtype.itemsize for a in parts if type(a) is Tensor or type(a) is np.ndarray)
        if len(out) >= most or size >= _GROUP_BYTES:
            break
    return out


def _call_loss(loss: Callable, args: tuple, lead: int, i: int, d: Any):
    try:
        return loss(*args)
    except TypeError as e:
        clear = _arity_error(loss, args, lead, i, d)
        if clear is not None:
            raise clear from e
        raise


def _finite(val: Any, i: int) -> float:
    v = float(val)
    if not math.isfinite(v):
        raise NonFiniteLossError(i, v)
    return v


# ---------------------------------------------------------------- gradient reduction (the fx.distributed hook)

_reducer: ContextVar[Callable | None] = ContextVar("fluxrs_grad_reducer", default=None)


@contextlib.contextmanager
def grad_reducer(reduce: Callable | None) -> Iterator[None]:
    """Within this block (this thread or task only), `train_` passes each step's gradients
    and loss through ``reduce(params, grads, loss) -> (grads, loss)`` between the backward
    pass and the update. It is the hook of data-parallel training: `fx.distributed` installs
    an allreduce averaging them over processes, and a plugin may install another engine's.
    `params` are the tensors trained, `grads` their gradients (None where one got none),
    `loss` the step's loss as a float; the loss returned is the one checked for NaN, shown
    and passed to hooks. It is called on every step (with all-None grads when the loss is
    not a tensor), so every process makes the same calls.

    A reducer may also have ``begin(params, loss) -> callback or None``, called before each
    backward pass: the callback gets ``(i, grad)`` for each parameter as soon as its gradient
    is final, during the backward pass (`fx.distributed` starts sending buckets of them while
    the rest are computed); ``reduce`` is then called as usual with all the gradients. And a
    reducer with ``updates_early = True`` is called with ``update=``, a function that updates
    parameters ``indices`` with ``gradients`` at once: it may apply some reduced gradients
    while others are still being reduced, and returns None in their place.
    """
    token = _reducer.set(reduce)
    try:
        yield
    finally:
        _reducer.reset(token)


def _grads_and_loss(val: Any, xs: list[Tensor], i: int,
                    update: Callable[[list[int], list[Tensor]], None] | None = None) -> tuple[list | None, float]:
    """The step's gradients (None: nothing to update) and loss (checked finite), reduced
    by the `grad_reducer` in force, if any; `update(indices, grads)` lets a reducer that
    `updates_early` apply some of them itself (those come back as None)."""
    reduce = _reducer.get()
    if reduce is None:
        v = _finite(val, i)
        return (_core.grad(val, xs) if isinstance(val, Tensor) and xs else None), v
    if isinstance(val, Tensor) and xs:
        # A reducer with `begin` may take each gradient as soon as it is final (to start
        # communicating it during the rest of the backward pass).
        begin = getattr(reduce, "begin", None)
        on_final = begin(xs, float(val)) if begin is not None else None
        gs = _core.grad(val, xs, on_final=on_final)
    else:
        gs = [None] * len(xs)
    if update is not None and getattr(reduce, "updates_early", False):
        gs, v = reduce(xs, gs, float(val), update=update)
    else:
        gs, v = reduce(xs, gs, float(val))
    return gs, _finite(v, i)


def _train_explicit(loss, model, data, opt, cb, progress, desc, callbacks=None, epoch=None, compile=False) -> None:
    if isinstance(opt, Rule):
        # Flux 0.14 does this too, with a warning: momentum is lost between calls.
        _warn_caller(f"train_(loss, model, data, {opt!r}): a rule instead of the state from fx.setup; creating a "
                     "fresh state now, so any momentum is lost after this call. Call opt = fx.setup(rule, model) "
                     "once and pass opt.")
        opt = setup(opt, model)
    elif not (opt is None or isinstance(opt, (Leaf, Struct, list, tuple, dict))):
        raise TypeError(f"train_(loss, model, data, opt_state): opt_state must come from fx.setup(rule, model), "
                        f"got {type(opt).__name__}")
    check_state_not_none(opt, model, "train_(loss, model, data, opt_state)")
    # Match every parameter to its Leaf once, which also checks that the state fits the
    # model before any work (a state made for another model). Each step then differentiates
    # with respect to exactly these tensors and updates them, without walking the model,
    # gradient and state trees again: the same result as withgradient + update_, with less
    # Python per step.
    plan = _gather(opt, model, None, everything=True)
    arity = _data_arity(loss, 1)
    xs = [x for x, _, _ in plan]
    leaves = [leaf for _, _, leaf in plan]

    # Tensors the forward pass may change but the update does not (a BatchNorm's running
    # statistics): a step that does not complete puts them back, so a Ctrl-C or an error
    # leaves the model as it was after the last whole step. None in most models: no cost.
    trained = {id(x) for x in xs}
    buffers = [t for t in leaves_of(model, trainable_only=False) if id(t) not in trained]

    # compile=True: the recorded steps (_core.Trace) by the data's shapes and dtypes, the last
    # one used in `trace`; `compiling` turns False for the rest of the call when a step
    # cannot be compiled.
    trace, traces = None, {}
    compiling = compile and _compilable(buffers, xs)

    def replay(i, ds):
        """Compiled steps for the leading batches of `ds` a recorded trace fits: their losses
        (None once the call has stopped compiling)."""
        nonlocal trace, compiling
        if not compiling:
            return None
        # the rule chain is read on every call, so fx.adjust_ in a callback takes effect
        plan = fused_plan(xs, leaves) if _reducer.get() is None else None
        if plan is None:
            compiling = False
            _warn_caller("train_(compile=True): the update is not one built-in rule over every parameter (a "
                         "frozen parameter, a rule written in Python, or a gradient reducer); training without "
                         "compiling")
            return None
        if trace is None:  # the first step records
            return []
        batches = []
        for d in ds:
            args = _data_tensors(_splat(d, arity), xs[0], lend=True)
            if args is None:
                break
            batches.append(args)
        if not batches:
            return []
        losses, stop = trace.steps(batches, plan[0], xs, plan[1])
        if not losses and stop is None:  # other shapes than the last batch's: one recorded for them, if any
            other = traces.get(_signature(batches[0]))
            if other is None:
                return []
            trace = other
            losses, stop = trace.steps(batches, plan[0], xs, plan[1])
        if stop is not None:
            v, gs = stop
            v = _finite(v, i + len(losses))  # a non-finite loss updated nothing
            update_leaves(xs, gs, leaves)
            losses.append(v)
        return losses

    def update_some(idx: list[int], gs: list[Tensor]) -> None:  # a reducer's early updates
        update_leaves([xs[j] for j in idx], gs, [leaves[j] for j in idx])

    def step(i, d):
        nonlocal trace, compiling
        vs = replay(i, [d])
        if vs:  # None or [] when the step was not replayed
            return vs[0]
        given = args = _splat(d, arity)
        if compiling:  # numpy data are recorded as the tensors the replays will be given
            args = _data_tensors(args, xs[0]) or args
        saved = [t.numpy().copy() for t in buffers] if buffers else None
        try:
            mark, reads = _core.tensor_mark(), _core.value_reads()
            # Recording, the data are watched too, so what the loss computes from them alone
            # (a smoothed target) is recorded, and replayed, rather than frozen.
            _core.push_watch(xs + list(args) if compiling and _all_tensors(args) else xs)
            try:
                val = _call_loss(loss, (model,) + args, 1, i, d)
            except Exception as e:
                if not compiling or all(a is b for a, b in zip(args, given)):
                    raise
                compiling = False  # the loss needs its numpy data as they are
                _warn_caller(f"train_(compile=True): the loss fails when its numpy data are given as tensors "
                             f"({type(e).__name__}: {e}); training without compiling")
                args = given
                val = _call_loss(loss, (model,) + args, 1, i, d)
            finally:
                _core.pop_watch()
            _check_scalar(val, i)
            if compiling:
                trace, compiling = _record(val, xs, args, mark, _core.value_reads() != reads)
                if trace is not None:
                    traces[_signature(args)] = trace
            # The usual step (no buffers to restore, no gradient reducer, one built-in rule):
            # backward pass and update in one Rust call below, one GIL hand-over, and the
            # gradients never become Python objects.
            fused = None if saved is not None or not xs or not isinstance(val, Tensor) or _reducer.get() is not None \
                else fused_plan(xs, leaves)
            if fused is None:
                gs, v = _grads_and_loss(val, xs, i, update_some)
        except (SkipStep, StopTraining):
            raise  # fx.skip()/fx.stop(): the forward pass counts, as in Flux
        except BaseException:
            if saved is not None:
                for t, a in zip(buffers, saved):
                    t.assign_(a)
            raise
        if fused is not None:
            v = _finite(val, i)
            # None when it updated; the gradients, untouched, when some parameter got none.
            gs = _core.grad_update(val, fused[0], xs, fused[1])
        if gs is not None:
            update_leaves(xs, gs, leaves)
        return v

    _loop(data, step, cb, progress, desc, _hooks(callbacks, epoch, model, xs, opt, data), replay if compiling else None)


def _all_tensors(args: tuple) -> bool:
    return all(type(a) is Tensor for a in args)


def _data_tensors(args: tuple, like: Tensor, lend: bool = False) -> tuple | None:
    """A datapoint's values as tensors, float numpy arrays in `like`'s dtype (as the layers
    would convert them), or None when one is something else (integer labels, a list).
    `lend`: arrays are read in place (`host_like`), for a replay, whose tensors no Python
    code sees; a recording hands them to the loss, which might keep them."""
    if _all_tensors(args):
        return args
    out = []
    for a in args:
        if type(a) is np.ndarray and a.dtype.kind == "f":
            a = _core.host_like(a, like, lend)
        elif type(a) is not Tensor:
            return None
        out.append(a)
    return tuple(out)


def _compilable(buffers: list, xs: list) -> bool:
    """Whether train_(compile=True) can compile this model's steps (warns when not)."""
    if buffers:
        _warn_caller("train_(compile=True): the model has tensors its forward pass changes (running statistics, "
                     "e.g. BatchNorm), which a replayed step would not update; training without compiling")
        return False
    return bool(xs)


def _signature(args: tuple) -> tuple:
    return tuple((a.shape, a.dtype) for a in args)


def _record(val: Any, xs: list, args: tuple, mark: int, read: bool) -> tuple:
    """(trace, still compiling) from a step just run eagerly: the trace of its graph, or
    (None, False) with a warning when it cannot be replayed. `read`: the loss read tensor
    values into Python while it ran."""
    if not read and isinstance(val, Tensor) and not _all_tensors(args):
        kinds = ", ".join(f"ndarray of {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__ for a in args)
        trace, why = None, (f"the data are not all float arrays or fx tensors ({kinds}); a replay takes tensor "
                            "inputs (one-hot encode labels in the data, e.g. with fx.onehotbatch)")
    else:
        trace, why = record(val, xs, list(args), mark, read)
    if trace is None:
        _warn_caller(f"train_(compile=True): {why}; training without compiling")
        return None, False
    return trace, True


def _train_implicit(loss, ps, data, opt, cb, progress, desc, callbacks=None, epoch=None) -> None:
    if not isinstance(opt, Rule):
        raise TypeError(f"train_(loss, params, data, opt): opt must be a rule such as fx.Descent(0.1) (the implicit "
                        f"style keeps state inside it), got {type(opt).__name__}. A state from fx.setup goes with "
                        "the explicit style: train_(loss, model, data, opt_state) with loss(model, x, y).")
    if not isinstance(ps, Params):
        ps = Params(ps)

    xs = list(ps)
    arity = _data_arity(loss, 0)

    def step(i, d):
        args = _splat(d, arity)
        _core.push_watch(xs)  # as gradient(() -> loss(d...), ps), without building Grads
        try:
            val = _call_loss(loss, args, 0, i, d)
        finally:
            _core.pop_watch()
        _check_scalar(val, i)
        gs, v = _grads_and_loss(val, xs, i)
        if gs is not None:
            _implicit_update(opt, zip(xs, gs))
        return v

    _loop(data, step, cb, progress, desc, _hooks(callbacks, epoch, None, ps, opt, data))


# ---------------------------------------------------------------- helpers

class throttle:
    """Wrap `f` so it runs at most once every `timeout` seconds (Flux's `throttle`).

    With `leading` (default) the first call in a quiet period runs `f` at once; with
    `trailing`, a call that arrives while throttled is remembered and run (the latest
    arguments) when the period ends, on a timer thread. Returns the last result of `f`.
    `clock` replaces `time.monotonic`, for tests.

    >>> import fluxrs as fx
    >>> t = [0.0]
    >>> calls = []
    >>> f = fx.throttle(lambda: calls.append(t[0]), 5, clock=lambda: t[0])
    >>> for t[0] in [0, 1, 2, 5, 6, 11]:
    ...     _ = f()
    >>> calls
    [0, 5, 11]
    """

    def __init__(self, f: Callable, timeout: float, leading: bool = True, trailing: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        if timeout < 0:
            raise ValueError(f"throttle: timeout must be >= 0 seconds, got {timeout}")
        self.f, self.timeout, self.leading, self.trailing, self.clock = f, float(timeout), leading, trailing, clock
        self.result = None
        self._ready_at = -math.inf        # when the next leading call may run
        self._later: tuple | None = None  # a pending trailing call's (args, kwargs)
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()
        self.__wrapped__ = f

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            now = self.clock()
            cooling = self._timer is not None or now < self._ready_at
            if not cooling:
                self._ready_at = now + self.timeout
                if self.leading:
                    self.result = self.f(*args, **kwargs)
                else:
                    self._later = (args, kwargs)
                if self.trailing or not self.leading:
                    self._arm()
            elif self.trailing:
                self._later = (args, kwargs)
            return self.result

    def _arm(self) -> None:
        t = threading.Timer(self.timeout, self._fire)
        t.daemon = True
        self._timer = t
        t.start()

    def _fire(self) -> None:
        # End of a period: run the pending call, if any, and start another period;
        # otherwise the next call may run at once.
        with self._lock:
            later, self._later = self._later, None
            if later is None:
                self._timer = None
                self._ready_at = -math.inf
                return
            self.result = self.f(*later[0], **later[1])
            self._arm()

    def cancel(self) -> None:
        """Drop a pending trailing call."""
        with self._lock:
            self._later = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def epochs(n: int, callbacks: Any = None, *, start: int = 0) -> Iterator[int]:
    """``for epoch in fx.epochs(n)``: yields 1..n, logging "Epoch 1", "Epoch 2", ... at INFO
    on the "fluxrs" logger, as Flux's `@epochs` did (show them with
    ``logging.basicConfig(level=logging.INFO)``).

    `start` is the number of epochs already done (Keras' ``initial_epoch``): the loop yields
    start+1..n, so a resumed run counts on from where it stopped and its hooks and
    checkpoints see the true epoch; `n` stays the last epoch, not the number left.
    ``fx.epochs(n, start=fx.load_checkpoint(path, model, opt))`` resumes a run.

    The loop is one training run for plugins (`fx.plugins`): ``on_train_begin`` before the
    first epoch, ``on_epoch_begin``/``on_epoch_end`` around each, ``on_train_end`` after the
    last; `train_` calls inside it join the run. `callbacks` are plugin objects for this loop
    only. A hook's ``fx.stop()`` ends the loop after the current epoch.

    >>> import fluxrs as fx
    >>> list(fx.epochs(2))
    [1, 2]
    >>> list(fx.epochs(5, start=3))
    [4, 5]
    """
    n = int(n)
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
        raise ValueError(f"epochs: start (the epochs already done) must be a whole number >= 0, got {start!r}")
    if start > n:
        raise ValueError(f"epochs(n={n}, start={start}): start is past n; n is the last epoch, not the number of "
                         f"epochs left (as Keras' epochs and initial_epoch), so resuming after epoch {start} to train "
                         f"k more is epochs({start} + k, start={start})")
    return _runner().epochs(n, callbacks, log, int(start))


def ncycle(data: Iterable, n: int) -> Iterator[Any]:
    """The items of `data`, `n` times over (IterTools' `ncycle`). A one-shot iterator such as
    `zip(...)` is remembered on the first pass, so later passes see the same items.

    >>> import fluxrs as fx
    >>> list(fx.ncycle([1, 2], 3))
    [1, 2, 1, 2, 1, 2]
    >>> list(fx.ncycle(zip("ab", "cd"), 2))
    [('a', 'c'), ('b', 'd'), ('a', 'c'), ('b', 'd')]
    """
    if n <= 0:
        return
    if iter(data) is data:  # an iterator: keep its items for the later passes
        seen = []
        for d in data:
            seen.append(d)
            yield d
        data = seen
    else:
        yield from data
    for _ in range(n - 1):
        yield from data
