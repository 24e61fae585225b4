"""Random numbers for initialisation and shuffling, one generator per thread, so that
parallel training jobs neither share a stream nor race on one.

>>> import fluxrs as fx
>>> fx.seed_(0); a = fx.randn(3).tolist()
>>> fx.seed_(0); b = fx.randn(3).tolist()
>>> a == b
True
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def default_rng() -> np.random.Generator:
    """This thread's generator (created on first use from fresh entropy)."""
    g = getattr(_local, "rng", None)
    if g is None:
        g = _local.rng = np.random.default_rng()
    return g


def seed_(seed: int) -> None:
    """Reseed this thread's generator (Julia's ``Random.seed!``)."""
    _local.rng = np.random.default_rng(seed)


def get_state() -> dict:
    """The generator's state, for exact resumption."""
    return default_rng().bit_generator.state


def set_state(state: dict) -> None:
    default_rng().bit_generator.state = state
