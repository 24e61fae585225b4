"""Checks and messages the public API shares: sizes given to constructors, keywords spelled
the PyTorch way, optional dependencies, and warnings shown at the user's line.

>>> from fluxrs._checks import size
>>> size("Dense", "the input size", 64)
64
>>> size("Dense", "the input size", 64.0)
Traceback (most recent call last):
TypeError: Dense: the input size must be an integer (sizes are ints), got 64.0 (float); write 64
"""

from __future__ import annotations

import functools
import importlib
import numbers
import os
import sys
import warnings
from types import ModuleType
from typing import Any, Callable

__all__ = ["is_int", "size", "sizes_given", "torch_keywords", "require", "warn_caller"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def is_int(v: Any) -> bool:
    """An integer, numpy's included, but not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def size(who: str, what: str, v: Any, minimum: int = 1, hint: str = "") -> int:
    """`v` as a size (a count of features, channels, units...): an int of at least `minimum`.
    Anything else is a TypeError naming `what`, the value and the fix (`hint`, or for a
    whole float such as 64.0 the int to write); a small int is a ValueError."""
    if not is_int(v):
        whole = isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer()
        fix = hint or (f"write {int(v)}" if whole else "give a whole number")
        raise TypeError(f"{who}: {what} must be an integer (sizes are ints), got {v!r} ({type(v).__name__}); {fix}")
    if v < minimum:
        kind = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{who}: {what} must be {kind}, got {v}")
    return int(v)


def sizes_given(v: Any) -> bool:
    """Whether `v` was meant as sizes rather than a weight array: a number, or a pair of
    numbers, of any type (so that ``Dense(64.0, 10)`` is told that sizes are ints, instead of
    being taken for a 0-d weight)."""
    def number(e: Any) -> bool:
        return isinstance(e, numbers.Real)
    return number(v) or isinstance(v, (tuple, list)) and len(v) == 2 and all(number(e) for e in v)


def torch_keywords(**hints: str | Callable[[Any], str]) -> Callable:
    """Decorate a constructor (a function or an ``__init__``) so that a keyword PyTorch spells
    differently is a TypeError giving fluxrs's spelling; Python's own error only says the
    keyword is unexpected. A hint is a text, or a function of the value given that returns one.
    Only keywords the constructor does not take may be hinted, so a correct call is untouched."""
    def wrap(f: Callable) -> Callable:
        @functools.wraps(f)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if kwargs and not hints.keys().isdisjoint(kwargs):
                who = type(args[0]).__name__ if f.__name__ == "__init__" else f.__name__
                k = next(k for k in kwargs if k in hints)
                h = hints[k]
                raise TypeError(f"{who}: unexpected keyword {k}={kwargs[k]!r} (PyTorch's spelling); "
                                f"{h(kwargs[k]) if callable(h) else h}")
            return f(*args, **kwargs)
        return checked
    return wrap


def require(module: str, why: str, extra: str) -> ModuleType:
    """Import the optional dependency `module`, or raise ImportError saying `why` it is
    needed and which of fluxrs's extras installs it.

    >>> require("math", "for the example", "plot").__name__
    'math'
    >>> require("no_such_module", "LearningCurves draws with it", "plot")
    Traceback (most recent call last):
    ImportError: LearningCurves draws with it, which is not installed: pip install 'fluxrs[plot]'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{why}, which is not installed: pip install 'fluxrs[{extra}]'") from None


def warn_caller(msg: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside fluxrs (the user's call, however deep the layers or
    loops that noticed), so the warning names the user's file and line."""
    f, level = sys._getframe(0), 1
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE + os.sep):
        f, level = f.f_back, level + 1
    warnings.warn(msg, category, stacklevel=level)
