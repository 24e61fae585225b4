"""The names this program gives to layers, losses, rules and callbacks (`register_layer` and
friends, and ``@fx.layer`` for every class it decorates), for ``fx.plugins.layer(name)`` and
friends to find before those of plugins.

A leaf module: ``@fx.layer`` registers its class here without loading pluggy or any plugin;
`fluxrs.plugins` reads these names and adds those of the plugins.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KINDS", "register_layer", "register_loss", "register_rule", "register_callback", "names", "clear"]

#: The kinds of registered objects, as `fx.plugins.registry(kind)` takes them.
KINDS = ("layers", "losses", "rules", "callbacks")

_names: dict[str, dict[str, Any]] = {k: {} for k in KINDS}


def register_layer(name: str, obj: Any) -> None:
    """Make `obj` findable as ``fx.plugins.layer(name)``; ``@fx.layer`` does this for every
    class it decorates. Names given here come before those of plugins and of fluxrs."""
    _register("layers", name, obj)


def register_loss(name: str, obj: Any) -> None:
    """Make `obj` findable as ``fx.plugins.loss(name)``."""
    _register("losses", name, obj)


def register_rule(name: str, obj: Any) -> None:
    """Make `obj` findable as ``fx.plugins.rule(name)``."""
    _register("rules", name, obj)


def register_callback(name: str, obj: Any) -> None:
    """Make `obj` findable as ``fx.plugins.callback(name)``."""
    _register("callbacks", name, obj)


def _register(kind: str, name: str, obj: Any) -> None:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"register_{kind[:-1]}: the name must be a non-empty string without ':', got {name!r}")
    _names[kind][name] = obj


def names(kind: str) -> dict[str, Any]:
    """The names of `kind` given in this program (the registry's own dict: read it, do not
    change it)."""
    return _names[kind]


def clear() -> None:
    """Forget every name given in this program."""
    for d in _names.values():
        d.clear()
