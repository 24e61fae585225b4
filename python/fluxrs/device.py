"""Devices: where a tensor's data lives, and moving models between them.

As in Flux, ``fx.gpu(model)`` returns the model with every array on the GPU and
``fx.cpu(model)`` brings it back; ops then run where their inputs are. The GPU backend
(wgpu: Vulkan, Metal or DX12) is compiled in only by the ``gpu`` build, from a source
checkout: ``MATURIN_PEP517_ARGS="--features gpu" pip install .`` (or ``maturin develop
--release --features gpu``); the default build is CPU-only and never loads a GPU driver.

Without the backend, or without an adapter, ``fx.gpu`` falls back to the CPU as Flux's
``gpu`` does: it returns its argument unchanged and warns once per process, saying which,
so a device-agnostic script runs anywhere. ``fx.gpu(x, strict=True)``, or the environment
variable ``FLUXRS_REQUIRE_GPU`` set to anything non-empty (as CI sets it for the GPU
tests), makes that a RuntimeError instead. ``fx.to_device(x, "gpu")`` always raises.

>>> import fluxrs as fx
>>> m = fx.Dense(2, 3)
>>> fx.cpu(m).weight.device
'cpu'
>>> fx.gpu_available() in (True, False)
True
"""

from __future__ import annotations

import os
import threading
import warnings
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


_fallback_warned = False
_fallback_lock = threading.Lock()


def gpu(x: Any, strict: bool = False) -> Any:
    """Move a tensor, array or model to the GPU (Flux's ``gpu``).

    Data must be float32 there; float64 tensors raise TypeError naming the dtype.

    Without a usable GPU (no backend in this build, or no adapter found) `x` is returned
    as it is, on the CPU (an array as a CPU tensor, the type the GPU would give), with one
    RuntimeWarning per process saying why. With ``strict=True``, or with the environment
    variable ``FLUXRS_REQUIRE_GPU`` non-empty, that raises RuntimeError instead.
    """
    global _fallback_warned
    if not gpu_available() and not (strict or os.environ.get("FLUXRS_REQUIRE_GPU")):
        with _fallback_lock:
            first, _fallback_warned = not _fallback_warned, True
        if first:
            warnings.warn(f"fx.gpu: no GPU, so the data stays on the CPU ({_why_no_gpu()}). Pass strict=True or set "
                          "FLUXRS_REQUIRE_GPU=1 to make this an error.", RuntimeWarning, stacklevel=2)
        return Tensor(x) if isinstance(x, np.ndarray) else x
    return to_device(x, "gpu")  # without a GPU: RuntimeError saying why


def _why_no_gpu() -> str:
    try:
        gpu_info()
    except RuntimeError as e:
        return str(e)
    return "the GPU failed after it was found"


def cpu(x: Any) -> Any:
    """Move a tensor or model to the CPU (Flux's ``cpu``); a no-op for CPU data."""
    return to_device(x, "cpu")
