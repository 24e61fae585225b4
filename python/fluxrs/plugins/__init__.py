"""Plugins: one mechanism (pluggy) behind callbacks, loggers and components registered by name.

A plugin is any object (an instance, or a module) with methods marked ``@fx.hookimpl``, named
after the hooks in `fluxrs.plugins.hookspecs` (``on_train_begin``, ``on_epoch_end``,
``on_batch_end``, ``register_layers``, ...). Use one for a single run, or for every run:

>>> import fluxrs as fx
>>> class Losses:
...     def __init__(self):
...         self.seen = []
...     @fx.hookimpl
...     def on_batch_end(self, step, loss):
...         self.seen.append(step)
>>> model = fx.Dense(1, 1)
>>> data = [(fx.ones((4, 1)), fx.zeros((4, 1)))] * 3
>>> rec = Losses()
>>> fx.train_(lambda m, x, y: fx.mse(m(x), y), model, data, fx.setup(fx.Descent(0.1), model), callbacks=[rec])
>>> rec.seen
[1, 2, 3]
>>> with fx.plugins.using(Losses()) as (other,):   # or fx.plugins.register(obj) / unregister(obj)
...     for epoch in fx.epochs(2):
...         fx.train_(lambda m, x, y: fx.mse(m(x), y), model, data, fx.setup(fx.Descent(0.1), model))
>>> other.seen                                     # steps count across the epochs of one run
[1, 2, 3, 4, 5, 6]

**Installed plugins.** A package declares its plugin module under the entry-point group
``fluxrs`` (``[project.entry-points.fluxrs] name = "module"`` in its pyproject.toml); fluxrs
imports and registers it, under that name, the first time plugins are needed: the first
`train_` call, ``fx.epochs`` loop, name lookup or registration. ``import fluxrs`` imports no
plugin, nor pluggy. Set ``FLUXRS_DISABLE_PLUGIN_AUTOLOAD=1`` to skip installed plugins, or call
``fx.plugins.manager(autoload=False)`` before training (``autoload=True`` loads them even
with the variable set). ``fx.plugins.installed()`` lists the ones loaded.

**Call order.** For one event, pluggy calls: wrappers (``@fx.hookimpl(wrapper=True)``, up to
their ``yield``), then ``tryfirst`` implementations, then plain ones, then ``trylast`` ones,
then the wrappers' code after ``yield``. Within each group the plugin registered last runs
first; a run's ``callbacks=[a, b]`` run in list order, before globally registered plugins of
the same group. fluxrs's own callbacks sit in fixed places: `Timer` is ``tryfirst`` (its
times are in ``logs`` for everyone after it); `EarlyStopping`, `ReduceLROnPlateau`,
`ModelCheckpoint` and `TerminateOnNaN` are plain; the loggers (`ProgressBar`, `CSVLogger`,
the TensorBoard plugin) are ``trylast``, so they see every metric other hooks add and the
final decision of the epoch. A hook computing a metric for others (a validation loss) should
be ``tryfirst``. Registration hooks of fluxrs itself are ``trylast``.

**Stopping and skipping.** In a hook, ``fx.stop()`` ends training once every plugin has had
the current event (it does not cut the event short for the others), as setting
``run.stop_training = True`` does; in an ``fx.epochs`` loop it also ends the loop after the
current epoch. ``fx.skip()`` skips the batch in ``on_batch_begin`` and
``on_nonfinite_loss``, and the epoch in ``on_epoch_begin``; elsewhere it does nothing.
(``cb=`` callbacks keep Flux's rules: ``fx.stop()`` there ends the current `train_` call.)

**Errors.** A hook that raises becomes a `PluginError` naming the plugin, the hook, the step
and epoch, chained to the original exception. Hooks at ``on_batch_end`` run after the update,
those at ``on_batch_begin`` and ``on_nonfinite_loss`` before it, so a step is applied whole or
not at all. Every plugin still gets ``on_train_end(error=...)``; errors of ``on_train_end``
itself are raised after every plugin had the call.

**Names.** ``fx.plugins.layer("Dense")``, ``loss("mse")``, ``rule("Adam")``,
``callback("EarlyStopping")`` find fluxrs's own components and those plugins register through
``register_layers``/``register_losses``/``register_rules``/``register_callbacks``, so a
config can say ``"layer": "MyConv"``. Classes decorated with ``@fx.layer`` and names given to
`register_layer` (and friends) in your program come first. A name two sources give to
different objects is an error; ``"plugin:Name"`` picks one (``"fluxrs:Dense"``).

>>> fx.plugins.layer("Dense") is fx.Dense, fx.plugins.loss("mse") is fx.mse, fx.plugins.rule("adam") is fx.Adam
(True, True, True)

**Threads.** A run's callbacks are visible to that run only (each run with callbacks gets its
own copy of the plugin manager), so parallel training jobs do not see each other's. Plugins
registered with `register` are seen by every later run of every thread.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Mapping
from typing import Any, Iterator

from fluxrs import _registry
from fluxrs._registry import register_callback, register_layer, register_loss, register_rule
from fluxrs.plugins import hookspecs
from fluxrs.plugins._manager import (ENTRY_POINT_GROUP, ENV_DISABLE_AUTOLOAD, PluginError, PluginManager, _state,
                                     manager)
from fluxrs.plugins.hookspecs import REGISTRATION_HOOKS, TRAINING_HOOKS

__all__ = ["hookimpl", "hookspec", "hookspecs", "PluginError", "PluginManager", "Run", "manager", "reset",
           "register", "unregister", "using", "registered", "installed", "layer", "loss", "rule", "callback",
           "registry", "register_layer", "register_loss", "register_rule", "register_callback", "log",
           "current_run", "ENV_DISABLE_AUTOLOAD", "TRAINING_HOOKS"]

#: Marks a hook implementation: ``@fx.hookimpl``, ``@fx.hookimpl(tryfirst=True)``,
#: ``@fx.hookimpl(trylast=True)``, ``@fx.hookimpl(wrapper=True)``.
hookimpl = hookspecs.hookimpl
#: Marks a hook specification (for plugins that add hooks of their own).
hookspec = hookspecs.hookspec


def reset(names: bool = False) -> None:
    """Forget the plugin manager: every registered plugin, and whether installed plugins were
    loaded; the next use starts afresh (as the first did). ``names=True`` also forgets the
    names given with `register_layer` and friends (and by ``@fx.layer``)."""
    with _state.lock:
        _state.pm = None
        _state.autoload = None
        _state.cache.clear()
        if names:
            _registry.clear()


def register(plugin: Any, name: str | None = None) -> str:
    """Register `plugin` (an object or module with ``@fx.hookimpl`` methods) for every later
    run; returns its name (by default its class's name, or the module's)."""
    if isinstance(plugin, type):
        raise TypeError(f"register: got the class {plugin.__qualname__}; pass an instance, e.g. "
                        f"{plugin.__qualname__}()")
    out = manager().register(plugin, name)
    if out is None:
        raise ValueError(f"register: the plugin name {name!r} is blocked")
    return out


def unregister(plugin: Any = None, name: str | None = None) -> Any:
    """Unregister a plugin, by object or by name; returns it (None if it was not registered)."""
    return manager().unregister(plugin, name)


@contextlib.contextmanager
def using(*plugins: Any) -> Iterator[tuple[Any, ...]]:
    """``with fx.plugins.using(a, b):`` registers the plugins for the block, and unregisters
    them after it, also after an error."""
    done = []
    try:
        for p in plugins:
            register(p)
            done.append(p)
        yield plugins
    finally:
        pm = manager()
        for p in reversed(done):
            pm.unregister(p)


def registered() -> dict[str, Any]:
    """Every registered plugin by name (``fluxrs`` is fluxrs's own built-ins)."""
    return {n: p for n, p in manager().list_name_plugin() if p is not None}


def installed() -> dict[str, str]:
    """The installed plugins loaded through entry points: name → ``"dist version: module"``."""
    return dict(manager().entry_points)


# ---------------------------------------------------------------- components by name

def layer(name: str) -> Any:
    """The layer registered as `name` (``"Dense"``, a plugin's ``"MyConv"``, or
    ``"plugin:Name"``)."""
    return _lookup("layers", name)


def loss(name: str) -> Any:
    """The loss function registered as `name` (``"mse"``, ``"logitcrossentropy"``, ...)."""
    return _lookup("losses", name)


def rule(name: str) -> Any:
    """The optimisation rule class registered as `name` (``"Adam"``, ``"Descent"``, ...)."""
    return _lookup("rules", name)


def callback(name: str) -> Any:
    """The callback class registered as `name` (``"EarlyStopping"``, a plugin's logger, ...)."""
    return _lookup("callbacks", name)


def registry(kind: str) -> dict[str, Any]:
    """Every name of `kind` (``"layers"``, ``"losses"``, ``"rules"``, ``"callbacks"``) and its
    object; a name several plugins give to different objects appears as ``"plugin:Name"``."""
    _check_kind(kind)
    by_name: dict[str, list[tuple[str, Any]]] = {}
    for pname, d in _sources(kind):
        for n, o in d.items():
            got = by_name.setdefault(n, [])
            if not any(o is f for _, f in got):
                got.append((pname, o))
    out: dict[str, Any] = {}
    for n, got in by_name.items():
        if len(got) == 1:
            out[n] = got[0][1]
        else:
            out.update((f"{p}:{n}", o) for p, o in got)
    out.update(_registry.names(kind))
    return out


def _check_kind(kind: str) -> None:
    if kind not in REGISTRATION_HOOKS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _registry.KINDS))}, got {kind!r}")


def _sources(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(plugin name, its dict) for each plugin's registration hook, in call order; cached
    until a plugin is (un)registered."""
    pm = manager()
    key = (id(pm), pm.version)
    hit = _state.cache.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    spec = REGISTRATION_HOOKS[kind]
    out = []
    for impl in reversed(getattr(pm.hook, spec).get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            continue
        got = impl.function()
        if got is None:
            continue
        if not isinstance(got, Mapping) or not all(isinstance(k, str) for k in got):
            raise PluginError(f"plugin {impl.plugin_name!r}: {spec}() must return a dict from names (str) to "
                              f"objects, got {type(got).__name__}", plugin_name=impl.plugin_name, hook=spec,
                              plugin=impl.plugin)
        out.append((impl.plugin_name, dict(got)))
    _state.cache[kind] = (key, out)
    return out


def _lookup(kind: str, name: str) -> Any:
    what = kind[:-1]
    if not isinstance(name, str):
        raise TypeError(f"fx.plugins.{what}: the name must be a string, got {type(name).__name__}")
    local = _registry.names(kind)
    if ":" in name:
        src, _, short = name.partition(":")
        if src == "local":
            if short in local:
                return local[short]
            raise LookupError(f"no {what} named {short!r} was registered in this program")
        sources = dict(_sources(kind))
        if src not in sources:
            raise LookupError(f"no plugin {src!r} registers {kind}; those that do: {', '.join(sources) or 'none'}")
        if short not in sources[src]:
            raise LookupError(f"plugin {src!r} registers no {what} named {short!r}{_near(short, sources[src])}")
        return sources[src][short]
    if name in local:
        return local[name]
    sources = _sources(kind)
    found = _find(sources, lambda n: n == name)
    if not found:  # a config's "adam" for "Adam": accepted when it is unambiguous
        low = name.lower()
        found = _find([("local", local)], lambda n: n.lower() == low) or _find(sources, lambda n: n.lower() == low)
    if len(found) == 1:
        return found[0][1]
    if not found:
        known = {n for _, d in sources for n in d} | set(local)
        raise LookupError(f"no {what} named {name!r}{_near(name, known)}. Known {kind}: {', '.join(sorted(known))}"
                          + ("" if installed() else f" (no installed plugin is loaded: is it installed, and "
                             f"{ENV_DISABLE_AUTOLOAD} unset?)"))
    owners = ", ".join(f"{p!r} ({_qual(o)})" for p, o in found)
    picks = " or ".join(f"'{p}:{name}'" for p, _ in found)
    raise PluginError(f"{what} name {name!r} is registered by several plugins, for different objects: {owners}; "
                      f"say which with {picks}")


def _find(sources: list[tuple[str, dict[str, Any]]], match: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for pname, d in sources:
        for n, o in d.items():
            if match(n) and not any(o is f for _, f in found):
                found.append((pname, o))
    return found


def _near(name: str, names: Any) -> str:
    near = difflib.get_close_matches(name, list(names), n=3)
    return f"; did you mean {' or '.join(map(repr, near))}?" if near else ""


def _qual(o: Any) -> str:
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', type(o).__qualname__)}"


# ---------------------------------------------------------------- the run in progress

def current_run() -> Any:
    """The `Run` in progress on this thread (an ``fx.epochs`` loop or a `train_` call with
    hooks), or None."""
    from fluxrs.plugins._run import current
    return current()


def log(**metrics: Any) -> None:
    """Add metrics to the current epoch's logs, e.g. a validation loss computed in the
    ``fx.epochs`` loop after `train_`; ``on_epoch_end`` hooks (`EarlyStopping(monitor=...)`,
    loggers) see them.

    >>> import fluxrs as fx
    >>> for epoch in fx.epochs(1):
    ...     fx.plugins.log(val_loss=0.5)
    ...     fx.plugins.current_run().logs
    {'val_loss': 0.5}
    """
    run = current_run()
    if run is None or run.ended:
        raise RuntimeError("fx.plugins.log: no training run in progress on this thread; call it inside an "
                           "fx.epochs loop or a hook")
    run.logs.update(metrics)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from fluxrs.plugins._run import Run
        return Run
    raise AttributeError(f"module 'fluxrs.plugins' has no attribute {name!r}")
