"""Warnings that point at the user's line.

A fixed ``stacklevel`` is right for one call path only: the same check runs from a layer's
``__call__``, from ``train_``'s loop or from a compiled replay, at different depths.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_caller"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn_caller(msg: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside fluxrs (the user's call, however deep the loop that
    noticed)."""
    f, level = sys._getframe(0), 1
    while f is not None and f.f_code.co_filename.startswith(_PACKAGE):
        f, level = f.f_back, level + 1
    warnings.warn(msg, category, stacklevel=level)
