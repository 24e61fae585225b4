"""fluxrs's pluggy PluginManager: readable plugin names, hook errors that name the plugin,
``fx.stop()``/``fx.skip()`` inside hooks as requests, typo checks, and entry-point loading
that says which installed plugin failed; and `manager`, the one every run starts from."""

from __future__ import annotations

import difflib
import os
import threading
import types
from typing import Any

import pluggy

from fluxrs.control import SkipStep, StopTraining
from fluxrs.plugins import hookspecs

PROJECT = "fluxrs"
ENTRY_POINT_GROUP = "fluxrs"
#: Hooks every plugin gets even when one of them raised (the first error is raised after).
CLEANUP_HOOKS = ("on_train_end",)


class PluginError(RuntimeError):
    """A plugin failed: it raised inside a hook, could not be loaded, or is ambiguous.

    `plugin_name` and `hook` say where; `plugin` is the plugin object (None when it could
    not be loaded); the original exception is ``__cause__``. `step` and `epoch` are set when
    it happened during training."""

    def __init__(self, message: str, *, plugin_name: str | None = None, hook: str | None = None,
                 plugin: Any = None):
        super().__init__(message)
        self.message, self.plugin_name, self.hook, self.plugin = message, plugin_name, hook, plugin
        self.step: int | None = None
        self.epoch: int | None = None
        self.where = ""

    def __str__(self) -> str:
        return self.message + self.where


def describe(plugin: Any) -> str:
    """``module fluxrs_example`` or ``fluxrs.callbacks.EarlyStopping``: what a plugin is."""
    if isinstance(plugin, types.ModuleType):
        return f"module {plugin.__name__}"
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


# What the hooks of one call asked for, as a list (cheap to make once per call):
# [fx.stop() called, fx.skip() called, errors of cleanup hooks (raised once all had the call)]
STOP, SKIP, ERRORS = 0, 1, 2


def request() -> list:
    return [False, False, None]


class _Flags(threading.local):
    """Per thread: the request (see `request`) of the hook call in progress (None outside
    `Run.call`)."""

    def __init__(self) -> None:
        self.cur: list | None = None


flags = _Flags()


def plugin_error(name: str, plugin: Any, hook: str, e: BaseException) -> PluginError:
    """The `PluginError` for exception `e` raised by plugin `name` in hook `hook`."""
    return PluginError(f"plugin {name!r} ({describe(plugin)}) raised {type(e).__name__} in hook {hook}: {e}",
                       plugin_name=name, hook=hook, plugin=plugin)


def _guard(impl: Any, hook: str) -> None:
    """Wrap one hook implementation so that ``fx.stop()``/``fx.skip()`` raised in it become
    requests (the other plugins still get the call) and any other exception becomes a
    `PluginError` naming the plugin and the hook, chained to the original."""
    f = impl.function
    if getattr(f, "__fluxrs_guarded__", False):
        return
    name, plugin = impl.plugin_name, impl.plugin
    cleanup = hook in CLEANUP_HOOKS

    def error(e: BaseException) -> PluginError:
        return plugin_error(name, plugin, hook, e)

    if impl.hookwrapper or impl.wrapper:
        # a generator: delegate, so pluggy's send/throw reach the plugin's own generator
        def guarded(*args, **kwargs):
            try:
                return (yield from f(*args, **kwargs))
            except (StopTraining, SkipStep, PluginError, GeneratorExit):
                raise
            except Exception as e:
                raise error(e) from e
    else:
        def guarded(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except StopTraining:
                req = flags.cur
                if req is not None:
                    req[STOP] = True
            except SkipStep:
                req = flags.cur
                if req is not None:
                    req[SKIP] = True
            except PluginError:
                raise
            except Exception as e:
                err = error(e)
                req = flags.cur
                if not cleanup or req is None:
                    raise err from e
                err.__cause__ = e
                if req[ERRORS] is None:
                    req[ERRORS] = []
                req[ERRORS].append(err)

    guarded.__fluxrs_guarded__ = True
    guarded.__wrapped__ = f
    impl.function = guarded  # pluggy reads HookImpl.function on every call; argnames stay the original's


def _marked(obj: Any, name: str, marker: str) -> bool:
    """Whether attribute `name` of `obj` may carry pluggy's `marker`: a quick look into the
    namespaces, which runs no descriptor. pluggy's own (careful, slow) lookup then decides for
    the few that may; this makes registering a plugin ~10x faster (a run with callbacks
    registers them and every global plugin into a manager of its own)."""
    if isinstance(obj, types.ModuleType):
        spaces = [vars(obj)]
    elif isinstance(obj, type):
        spaces = [vars(c) for c in obj.__mro__]
    else:
        spaces = [vars(obj)] if hasattr(obj, "__dict__") else []
        spaces += [vars(c) for c in type(obj).__mro__]
    for ns in spaces:
        if name in ns:
            v = ns[name]
            try:
                return getattr(v, marker, None) is not None or \
                    getattr(getattr(v, "__func__", None), marker, None) is not None
            except Exception:
                return True
    return True  # not in any namespace (slots, __getattr__): let pluggy look


class PluginManager(pluggy.PluginManager):
    """`pluggy.PluginManager` for project ``fluxrs`` with fluxrs's hook specifications.

    Differences from plain pluggy: a plugin object registered without a name is named after
    its class (``EarlyStopping``, ``EarlyStopping-2``, ...); every hook implementation is
    guarded (errors become `PluginError` naming plugin and hook; ``fx.stop()``/``fx.skip()``
    become requests); implementing a hook fluxrs does not define is an error (with a
    did-you-mean), unless marked ``@fx.hookimpl(optionalhook=True)``; hooks named in a plugin's
    ``fluxrs_disabled_hooks`` attribute are not registered."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.version = 0  # bumped on every (un)registration: caches of registered names key on it
        self.entry_points: dict[str, str] = {}  # plugin name -> "dist version: module" for loaded entry points

    def get_canonical_name(self, plugin: Any) -> str:
        if isinstance(plugin, types.ModuleType):
            return plugin.__name__
        base = plugin.__name__ if isinstance(plugin, type) else type(plugin).__name__
        name, k = base, 2
        while self.has_plugin(name):
            name, k = f"{base}-{k}", k + 1
        return name

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        # A plugin may switch hooks off per instance (`fluxrs_disabled_hooks`, a set of hook
        # names), so a hook its configuration does not use costs nothing per batch.
        if name in (getattr(plugin, "fluxrs_disabled_hooks", None) or ()) or not _marked(plugin, name, "fluxrs_impl"):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if not _marked(module_or_class, name, "fluxrs_spec"):
            return None
        return super().parse_hookspec_opts(module_or_class, name)

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        name = super().register(plugin, name)
        if name is None:  # blocked
            return None
        try:
            for caller in self.get_hookcallers(plugin) or ():
                for impl in caller.get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    if not caller.has_spec() and not impl.optionalhook:
                        known = [h for h in vars(hookspecs) if h.startswith(("on_", "register_"))]
                        near = difflib.get_close_matches(caller.name, known, n=1)
                        hint = f"; did you mean {near[0]!r}?" if near else f"; fluxrs's hooks are {', '.join(known)}"
                        raise PluginError(
                            f"plugin {name!r} ({describe(plugin)}) implements hook {caller.name!r}, which fluxrs does "
                            f"not define{hint} (mark it @fx.hookimpl(optionalhook=True) if it is meant for hooks "
                            "another plugin adds)", plugin_name=name, hook=caller.name, plugin=plugin)
                    _guard(impl, caller.name)
        except BaseException:
            super().unregister(plugin, name)
            raise
        self.version += 1
        return name

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
            if name is None:
                return None
        out = super().unregister(plugin, name)
        self.version += 1
        return out

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Load and register the installed plugins of entry-point group `group` (as
        ``load_setuptools_entrypoints``), naming the one that fails to load."""
        import importlib.metadata

        count = 0
        for dist in list(importlib.metadata.distributions()):
            for ep in dist.entry_points:
                if ep.group != group or self.has_plugin(ep.name) or self.is_blocked(ep.name):
                    continue
                label = f"{dist.metadata['Name']} {dist.version}"
                try:
                    plugin = ep.load()
                except Exception as e:
                    raise PluginError(f"could not load the installed fluxrs plugin {ep.name!r} ({ep.value}, from "
                                      f"{label}): {type(e).__name__}: {e}. Uninstall it, or set "
                                      "FLUXRS_DISABLE_PLUGIN_AUTOLOAD=1 to start without installed plugins",
                                      plugin_name=ep.name) from e
                self.register(plugin, name=ep.name)
                if hasattr(self, "_plugin_distinfo"):  # so pluggy's list_plugin_distinfo() sees it too
                    self._plugin_distinfo.append((plugin, pluggy._manager.DistFacade(dist)))
                self.entry_points[ep.name] = f"{label}: {ep.value}"
                count += 1
        return count

    def snapshot(self) -> "PluginManager":
        """A new manager with the same plugins, registered in the same order (so hooks run in
        the same order), for a run that adds its own callbacks without other threads seeing
        them."""
        pm = PluginManager()
        for name, plugin in self.list_name_plugin():
            if plugin is not None:
                pm.register(plugin, name=name)
        return pm


# ---------------------------------------------------------------- the manager every run starts from

ENV_DISABLE_AUTOLOAD = "FLUXRS_DISABLE_PLUGIN_AUTOLOAD"


class _State:
    def __init__(self) -> None:
        self.pm: PluginManager | None = None
        self.autoload: bool | None = None  # None: as the environment variable says
        self.lock = threading.RLock()
        self.cache: dict[str, tuple[Any, list[tuple[str, dict[str, Any]]]]] = {}


_state = _State()


def _env_disabled() -> bool:
    v = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower()
    return v not in ("", "0", "false", "no", "off")


def manager(autoload: bool | None = None) -> PluginManager:
    """The plugin manager (a `pluggy.PluginManager`) every run starts from, created on first
    use with fluxrs's hooks and built-ins, and the installed plugins (entry-point group
    ``fluxrs``) unless `autoload` is False or ``FLUXRS_DISABLE_PLUGIN_AUTOLOAD=1`` is set.

    ``manager(autoload=False)`` also unregisters installed plugins already loaded, and keeps
    them out until `reset`; ``manager(autoload=True)`` loads those not yet loaded."""
    pm = _state.pm
    if pm is not None and autoload is None:
        return pm
    with _state.lock:
        if autoload is not None:
            _state.autoload = autoload
        pm = _state.pm
        if pm is None:
            pm = PluginManager()
            from fluxrs.plugins import builtins
            pm.register(builtins, name="fluxrs")
            want = _state.autoload if _state.autoload is not None else not _env_disabled()
            if want:
                pm.load_entry_points(ENTRY_POINT_GROUP)
            _state.pm = pm
        elif autoload:
            pm.load_entry_points(ENTRY_POINT_GROUP)
        elif autoload is False:
            for name in list(pm.entry_points):
                pm.unregister(name=name)
                del pm.entry_points[name]
        return pm
