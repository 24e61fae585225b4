"""Devices: where a tensor's data lives, and moving models between them.

As in Flux, ``fx.gpu(model)`` returns the model with every array on the GPU and
``fx.cpu(model)`` brings it back; ops then run where their inputs are. The GPU backend
(wgpu: Vulkan, Metal or DX12) is compiled in only by the ``gpu`` build
(``maturin develop --release --features gpu``); the default build is CPU-only and never
loads a GPU driver. Without the backend, or without an adapter, ``fx.gpu`` raises
RuntimeError saying which, and everything else keeps working on the CPU.

>>> import fluxrs as fx
>>> m = fx.Dense(2, 3)
>>> fx.cpu(m).weight.device
'cpu'
>>> fx.gpu_available() in (True, False)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs.functor import fmap

__all__ = ["cpu", "gpu", "gpu_available", "gpu_info", "to_device"]


def gpu_info() -> str:
    """The GPU adapter in use, e.g. ``'llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)'``.

    Raises RuntimeError when this build has no GPU backend or no adapter is found.
    """
    return _core.gpu_info()


def gpu_available() -> bool:
    """Whether `gpu` would work: the backend is compiled in and an adapter was found."""
    if not _core.GPU_COMPILED:
        return False
    try:
        _core.gpu_info()
    except RuntimeError:
        return False
    return True


def to_device(x: Any, device: str) -> Any:
    """`x` with every tensor (and numpy array) moved to ``"cpu"`` or ``"gpu"``.

    Models and other trees are rebuilt (`fmap`), not changed in place; a tensor already on
    `device` is kept as it is, so shared weights stay shared.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"to_device: unknown device {device!r}; expected 'cpu' or 'gpu'")
    if device == "gpu":
        gpu_info()  # a clear error now, rather than from the first tensor
    if isinstance(x, np.ndarray):
        x = Tensor(x)
    return fmap(lambda t: t.to_device(device), x)


def gpu(x: Any) -> Any:
    """Move a tensor, array or model to the GPU (Flux's ``gpu``).

    Data must be float32 there; float64 tensors raise TypeError naming the dtype.
    """
    return to_device(x, "gpu")


def cpu(x: Any) -> Any:
    """Move a tensor or model to the CPU (Flux's ``cpu``); a no-op for CPU data."""
    return to_device(x, "cpu")
