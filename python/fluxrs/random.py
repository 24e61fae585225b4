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
from typing import Any

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
    """This thread's generator's state (a JSON-serialisable dict), for exact resumption:
    `fx.save` takes it as ``rng=``, and `fx.callbacks.ModelCheckpoint` saves it."""
    return default_rng().bit_generator.state


def check_state(state: Any) -> None:
    """Raise ValueError unless `state` is one `set_state` can restore (tried on a scratch
    generator, so nothing changes here)."""
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"not a random-generator state from fx.random.get_state() "
                         f"({type(e).__name__}: {e})") from None


def set_state(state: dict) -> None:
    """Put this thread's generator back in `state` (from `get_state`). The generator object
    stays the same, so references to it see the restored stream."""
    check_state(state)
    default_rng().bit_generator.state = state
