"""Train and test mode: `trainmode_` and `testmode_`, as Flux's `trainmode!` / `testmode!`.

Layers that behave differently while training (Dropout, AlphaDropout, BatchNorm,
InstanceNorm, ...) subclass `ModalLayer` and carry an ``active`` attribute:

* ``None`` (the default): automatic, active exactly while `fx.gradient` (or `train_`)
  runs on this thread, as Flux decides with ``Zygote.within_gradient``;
* ``True``: always in training mode (dropout drops, BatchNorm uses batch statistics and
  updates its running ones);
* ``False``: always in test mode.

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Dense(2, 2), fx.Dropout(0.5))
>>> _ = fx.testmode_(m)
>>> m[1].active
False
>>> _ = fx.trainmode_(m, None)     # back to automatic
>>> m[1].active is None
True
"""

from __future__ import annotations

from typing import Any

from fluxrs.autodiff import in_gradient
from fluxrs.functor import _ATOMS, Layer, children, is_node

__all__ = ["ModalLayer", "trainmode_", "testmode_", "is_active"]


class ModalLayer(Layer):
    """Base of layers with a training mode: they hold ``active`` (None, True or False).
    A custom layer joins in by subclassing this, or by setting ``__fluxrs_modal__ = True``
    on its class and reading `is_active(self)`."""

    active: bool | None = None

    def _is_active(self) -> bool:
        a = self.active
        return in_gradient() if a is None else bool(a)

    def _mode_repr(self) -> str:
        return "" if self.active is None else f", active={self.active}"


def is_active(layer: Any) -> bool:
    """Whether `layer` behaves as in training right now (its `active`, or automatic)."""
    a = getattr(layer, "active", None)
    return in_gradient() if a is None else bool(a)


_AUTO = (None, "auto", ":auto")


def _mode_value(mode: Any, who: str, test: bool) -> bool | None:
    if mode is None or (isinstance(mode, str) and mode in _AUTO):
        return None
    if isinstance(mode, bool):
        return (not mode) if test else mode
    raise TypeError(f"{who}(model, mode): mode must be True, False or None (\"auto\"), got {mode!r}")


def _set_mode(model: Any, value: bool | None) -> Any:
    visiting: set[int] = set()

    def walk(node):
        if isinstance(node, _ATOMS) or id(node) in visiting:
            return
        if isinstance(node, ModalLayer) or (is_node(node) and getattr(type(node), "__fluxrs_modal__", False)):
            node.active = value
        visiting.add(id(node))
        for v in children(node).values():
            walk(v)

    walk(model)
    return model


def trainmode_(model: Any, mode: Any = True) -> Any:
    """Put every Dropout / normalisation layer of `model` in training mode (``mode=True``),
    test mode (``False``) or back to automatic (``None`` or ``"auto"``); returns `model`."""
    return _set_mode(model, _mode_value(mode, "trainmode_", test=False))


def testmode_(model: Any, mode: Any = True) -> Any:
    """Put every Dropout / normalisation layer of `model` in test mode (``mode=True``),
    training mode (``False``) or back to automatic (``None`` or ``"auto"``); returns `model`.

    >>> import fluxrs as fx
    >>> bn = fx.testmode_(fx.BatchNorm(2))
    >>> bn.active
    False
    """
    return _set_mode(model, _mode_value(mode, "testmode_", test=True))
