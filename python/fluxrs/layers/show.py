"""Flux-style printing of models: the layer as you would write it, then the parameter count.

A model whose one-line form is wider than `WIDTH` prints as a tree, one layer per line with
its parameter count, as Flux prints a big model:

>>> import fluxrs as fx
>>> fx.Chain(fx.Dense(784, 32, fx.σ), fx.Dense(32, 10), fx.softmax)
Chain(Dense(784 => 32, σ), Dense(32 => 10), softmax)  # 25_450 parameters
>>> fx.Chain(fx.Conv((5, 5), (1, 6), fx.relu), fx.MaxPool((2, 2)), fx.Flatten(),
...          fx.Dense(864, 120, fx.relu), fx.Dense(120, 10), fx.softmax)
Chain(
  Conv((5, 5), 1 => 6, relu),           # 156 parameters
  MaxPool((2, 2)),
  Flatten(),
  Dense(864 => 120, relu),              # 103_800 parameters
  Dense(120 => 10),                     # 1_210 parameters
  softmax,
)  # Total: 6 tensors (410.805 KiB), 105_166 parameters

A layer prints through `_repr_inner` (its one-line form; a leaf of the tree) or, by default,
through `_repr_parts` (an opening, its children, a closing: a node of the tree, one child a
line when it does not fit on one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fluxrs._core import Tensor
from fluxrs.functor import Layer, leaves

__all__ = ["short_repr", "param_count", "show", "WIDTH"]

#: The widest one-line form printed as one line; wider models print as a tree. A wide
#: terminal's width: a small model (an MLP of three or four layers) stays on one line.
WIDTH = 100
# Where the tree's parameter counts start (Flux's column)
_COMMENT_COLUMN = 40


def short_repr(x: Any) -> str:
    """How `x` reads inside a model's repr: a layer as constructed, a function by the name
    Flux prints (``σ`` for sigmoid), a tensor by its shape, anything else by its own repr."""
    inner = getattr(x, "_repr_inner", None)
    if callable(inner) and not isinstance(x, type):
        return inner()
    if isinstance(x, (Tensor, np.ndarray)):
        dt = "" if x.dtype == np.float32 else f", dtype={x.dtype.name}"
        return f"{type(x).__name__}(shape={tuple(x.shape)}{dt})"
    if type(x) in (list, tuple, dict):
        return one_line(_container_parts(x))
    name = getattr(x, "flux_name", None) or getattr(x, "__name__", None)
    if name is not None and callable(x):
        return name
    return repr(x)


def one_line(parts: tuple[str, list[tuple[str, Any]], str]) -> str:
    """The one-line form of ``(opening, [(prefix, child), ...], closing)``."""
    head, items, tail = parts
    return head + ", ".join(p + short_repr(v) for p, v in items) + tail


def _container_parts(x: Any) -> tuple[str, list[tuple[str, Any]], str]:
    if isinstance(x, dict):
        return "{", [(f"{k!r}: ", v) for k, v in x.items()], "}"
    if isinstance(x, list):
        return "[", [("", v) for v in x], "]"
    return "(", [("", v) for v in x], ",)" if len(x) == 1 else ")"


def _parts(x: Any) -> tuple[str, list[tuple[str, Any]], str] | None:
    """The parts of a node that the tree may open: a container, or a layer printed from its
    parts (not one with a one-line form of its own); None for a leaf."""
    if type(x) in (list, tuple, dict):
        return _container_parts(x) if x else None
    cls = type(x)
    if getattr(cls, "_repr_inner", None) is Layer._repr_inner and cls.__repr__ is Layer.__repr__:
        return x._repr_parts()
    return None


def param_count(x: Any) -> tuple[int, int]:
    """(trainable, non-trainable) number of parameters of a model."""
    trainable = leaves(x, trainable_only=True)
    ids = {id(t) for t in trainable}
    n = sum(t.size for t in trainable)
    other = sum(t.size for t in leaves(x, trainable_only=False) if id(t) not in ids)
    return n, other


def _count(x: Any) -> str:
    """``# N parameters`` (and the non-trainable count when there is any, as Flux prints for
    BatchNorm), or "" for what has none, or is a tensor (its shape is shown)."""
    if isinstance(x, Tensor):
        return ""
    n, other = param_count(x)
    if not (n or other):
        return ""
    return f"# {n:_} parameters" + (f", plus {other:_} non-trainable" if other else "")


def _commented(text: str, comment: str) -> str:
    return text + " " * max(2, _COMMENT_COLUMN - len(text)) + comment if comment else text


def _lines(x: Any, prefix: str, depth: int, sep: str, top: bool = False, opened: frozenset = frozenset()) -> list[str]:
    """`x` as lines at `depth`: one line when it fits `WIDTH`, else opened to one line per
    child. `opened`: the ids of the nodes opened above, so that a cycle is not opened again."""
    pad = "  " * depth
    line = _commented(pad + prefix + short_repr(x) + sep, _count(x))
    parts = _parts(x)
    if parts is None or not top and len(line) <= WIDTH or id(x) in opened:
        return [line]
    head, items, tail = parts
    out = [pad + prefix + head]
    for p, v in items:
        out += _lines(v, p, depth + 1, ",", opened=opened | {id(x)})
    return out + [pad + tail.lstrip(",") + sep]


def _bytes(n: int) -> str:
    # as Julia's Base.format_bytes, which Flux prints
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3f} {unit}"
    raise AssertionError("unreachable")


def show(x: Any) -> str:
    """The top-level repr: the one-line form plus ``# N parameters`` when it fits `WIDTH`,
    else the tree, one layer a line, closed by the totals."""
    line = short_repr(x)
    count = _count(x)
    if count:
        line += "  " + count
    if len(line) <= WIDTH or _parts(x) is None:
        return line
    lines = _lines(x, "", 0, "", top=True)
    everything = leaves(x, trainable_only=False)
    n, other = param_count(x)
    size = _bytes(sum(t.size * t.dtype.itemsize for t in everything))
    # the count last, as the one-line form ends
    total = f"# Total: {len(everything)} tensors ({size}), {n:_} parameters"
    if other:
        total += f", plus {other:_} non-trainable"
    lines[-1] += "  " + total
    return "\n".join(lines)
