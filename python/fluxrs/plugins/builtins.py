"""fluxrs's own layers, losses, rules and callbacks, registered by name the way any plugin
registers its own: this module is the plugin ``fluxrs``, registered before all others, and its
registration hooks are ``trylast``. So ``fx.plugins.layer("Dense")`` is ``fx.Dense``, and a
plugin that registers a name fluxrs already has makes that name ambiguous (an error that
asks for ``"plugin:Name"``), never silently different.
"""

from __future__ import annotations

from typing import Any

from fluxrs.plugins.hookspecs import hookimpl

# in fluxrs.losses.__all__ but not losses: helpers and a label transform
_NOT_LOSSES = frozenset({"xlogx", "xlogy", "mean", "label_smoothing"})


def _exported(module: Any) -> dict[str, Any]:
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


@hookimpl(trylast=True)
def register_layers() -> dict[str, Any]:
    from fluxrs import layers
    from fluxrs.functor import Layer
    return {n: o for n, o in _exported(layers).items()
            if isinstance(o, type) and (issubclass(o, Layer) or getattr(o, "__fluxrs_layer__", False))}


@hookimpl(trylast=True)
def register_losses() -> dict[str, Any]:
    from fluxrs import losses
    return {n: o for n, o in _exported(losses).items() if callable(o) and n not in _NOT_LOSSES}


@hookimpl(trylast=True)
def register_rules() -> dict[str, Any]:
    from fluxrs import optimise
    from fluxrs.optimise.rules import Rule
    return {n: o for n, o in _exported(optimise).items() if isinstance(o, type) and issubclass(o, Rule) and o is not Rule}


@hookimpl(trylast=True)
def register_callbacks() -> dict[str, Any]:
    from fluxrs import callbacks
    return {n: o for n, o in _exported(callbacks).items() if isinstance(o, type)}
