"""Tensor construction and the parts of `fluxrs.Tensor` that are ergonomics rather than
math: repr, numpy-style indexing, and numpy ufunc/function dispatch (so ``np.exp(t)`` on a
tracked tensor stays differentiable).

>>> import fluxrs as fx, numpy as np
>>> t = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> t[1], t[:, 0].tolist()
(Tensor([3., 4.], dtype=float32), [1.0, 3.0])
>>> float(np.exp(fx.zeros(2)).sum())
2.0
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

from fluxrs import _core
from fluxrs._checks import warn_caller
from fluxrs._core import Tensor
from fluxrs.random import default_rng

float32 = np.dtype("float32")
float64 = np.dtype("float64")


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else np.dtype(dtype).name


_warned_f64 = False


def tensor(data: Any, dtype=None) -> Tensor:
    """A tensor from array-like data (a copy). float64 becomes float32 unless `dtype` says
    otherwise. A tensor passes through unchanged when no dtype change is asked for."""
    if isinstance(data, Tensor) and (dtype is None or np.dtype(dtype) == data.dtype):
        return data
    name = _dtype_name(dtype)
    if name is None and not isinstance(data, Tensor) and getattr(data, "dtype", None) == np.float64:
        # Said here rather than by the core, which cannot tell how deep in fluxrs it was called
        # and so would name the wrong line.
        global _warned_f64
        if not _warned_f64:
            _warned_f64 = True
            warn_caller("fluxrs converts float64 data to float32 (the default dtype); pass dtype='float64' to keep "
                        "it. This warning is shown once.")
        name = "float32"
    try:
        return Tensor(data, dtype=name)
    except ValueError as e:
        if isinstance(data, (list, tuple)) and "inhomogeneous" in str(e):
            # ragged nesting: numpy's message does not say who asked
            raise ValueError(f"fx.tensor: data is not a rectangular array of numbers ({e})") from None
        raise


# The most bytes one tensor may take: numpy's limit (the size in bytes must fit an isize).
_MAX_BYTES = np.iinfo(np.intp).max


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _shape(shape, who: str = "shape", dtype=float32) -> tuple[int, ...]:
    """`f(2, 3)` or `f((2, 3))` as a tuple of sizes, checked: integers, non-negative, and a
    total size that can be allocated (the core aborts the process on a failed allocation,
    so an impossible request must stop here, as an exception)."""
    if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
        if not isinstance(shape[0], (tuple, list, range, np.ndarray)):
            raise TypeError(f"{who}: the shape must be integers or a tuple of integers, got {shape[0]!r}")
        shape = tuple(shape[0])
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{who}: the shape must be integers, got {tuple(shape)!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{who}: negative dimension in shape {shape}")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > _MAX_BYTES or any(s > _MAX_BYTES for s in shape):
        raise ValueError(f"{who}: shape {shape} is too big: {nbytes} bytes is more than any array can hold")
    mem = _physical_memory()
    if mem is not None and nbytes > mem:
        raise MemoryError(f"{who}: shape {shape} of {np.dtype(dtype).name} needs {nbytes} bytes, more than this "
                          f"machine's {mem} bytes of memory")
    return shape


def _dtype_arg(dtype, who: str) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise TypeError(f"{who}: dtype must be float32 or float64, got {dtype!r} ({e})") from None
    if name not in ("float32", "float64"):
        raise TypeError(f"{who}: dtype must be float32 or float64, got {name}")
    return name


def _value_arg(value, who: str) -> float:
    if isinstance(value, Tensor) and value.size == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{who}: the fill value must be a real number, got {type(value).__name__}")
    return float(value)


def full(shape, value: float, dtype=float32) -> Tensor:
    """A tensor of `shape` filled with `value`: ``full((2, 3), 0.5)`` or ``full(4, 0.5)``."""
    name = _dtype_arg(dtype, "full")
    return _core.full(list(_shape((shape,), "full", name)), _value_arg(value, "full"), name)


def zeros(*shape, dtype=float32) -> Tensor:
    """>>> import fluxrs as fx
    >>> fx.zeros(2, 3).shape
    (2, 3)"""
    name = _dtype_arg(dtype, "zeros")
    return _core.full(list(_shape(shape, "zeros", name)), 0.0, name)


def ones(*shape, dtype=float32) -> Tensor:
    name = _dtype_arg(dtype, "ones")
    return _core.full(list(_shape(shape, "ones", name)), 1.0, name)


def host_like(data: Any, like: Tensor, lend: bool = False) -> Tensor:
    """Host data (a numpy array, a list, a CPU tensor) as a tensor with `like`'s dtype, on
    `like`'s device: masks, targets and constants that layers and losses make beside a tensor.
    One call into the core, which copies a float array's buffer once; with `lend`, a
    C-contiguous, writeable numpy array of that dtype is read in place instead (for a caller
    that only reads it and never hands the tensor out: it sees later writes to the array)."""
    return _core.host_like(data, like, lend)


def zeros_like(t: Tensor) -> Tensor:
    t = tensor(t)
    return host_like(_core.full(list(t.shape), 0.0, t.dtype.name), t)


def ones_like(t: Tensor) -> Tensor:
    t = tensor(t)
    return host_like(_core.full(list(t.shape), 1.0, t.dtype.name), t)


def rand(*shape, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Uniform on [0, 1), from this thread's generator unless `rng` is given."""
    name = _dtype_arg(dtype, "rand")
    shape = _shape(shape, "rand", np.float64)  # drawn in float64, then converted
    rng = rng or default_rng()
    return Tensor(rng.random(shape), dtype=name)


def randn(*shape, dtype=float32, rng: np.random.Generator | None = None) -> Tensor:
    """Standard normal, from this thread's generator unless `rng` is given."""
    name = _dtype_arg(dtype, "randn")
    shape = _shape(shape, "randn", np.float64)
    rng = rng or default_rng()
    return Tensor(rng.standard_normal(shape), dtype=name)


def _axis_arg(axis, who: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{who}: axis must be an integer, got {axis!r}")
    if not -2**62 <= axis < 2**62:  # would not fit the core's isize: out of range for any tensor
        raise ValueError(f"{who}: axis {axis} is out of range")
    return int(axis)


def _tensor_list(tensors, who: str) -> list:
    if isinstance(tensors, (Tensor, np.ndarray, str, bytes)) or not hasattr(tensors, "__iter__"):
        raise TypeError(f"{who}: expected a sequence of tensors, got {type(tensors).__name__}")
    out = []
    for i, t in enumerate(tensors):
        try:
            out.append(tensor(t))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{who}: item {i}: {e}") from None
    return out


def concat(*tensors, axis: int | None = None) -> Tensor:
    """Join tensors along an existing axis, in two spellings:

    * ``concat([a, b, ...], axis=0)``: a sequence, axis 0 unless given (numpy's concatenate,
      PyTorch's cat); the axis may also be the second positional argument.
    * ``concat(a, b, ...)``: the tensors themselves, along the feature axis, the last one
      (``axis=-1`` unless given): Flux's ``vcat`` of batch-first data, so ``fx.concat`` works
      as a combiner, as in ``fx.Parallel(fx.concat, f, g)``.

    >>> import fluxrs as fx
    >>> fx.concat(fx.ones(2, 3), fx.zeros(2, 1)).shape
    (2, 4)
    >>> fx.concat([fx.ones(2, 3), fx.zeros(1, 3)]).shape
    (3, 3)
    """
    if tensors and not _array_like(tensors[0]):  # concat(sequence[, axis])
        if len(tensors) > 2 or len(tensors) == 2 and axis is not None:
            raise TypeError("concat: after a sequence of tensors only the axis may follow; write "
                            "concat([a, b], axis=0), or concat(a, b) to join along the feature axis")
        seq = tensors[0]
        axis = tensors[1] if len(tensors) == 2 else 0 if axis is None else axis
    else:  # concat(a, b, ...)
        seq, axis = tensors, -1 if axis is None else axis
    axis = _axis_arg(axis, "concat")
    return _core.concat(_tensor_list(seq, "concat"), axis)


def _array_like(x) -> bool:
    return isinstance(x, (Tensor, np.ndarray, numbers.Number))


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors along a new axis (numpy's stack)."""
    axis = _axis_arg(axis, "stack")
    return _core.stack(_tensor_list(tensors, "stack"), axis)


def where(cond, a, b) -> Tensor:
    """`a` where `cond` is true else `b`; gradients flow to `a` and `b` only where chosen."""
    like = next((x for x in (a, b) if isinstance(x, Tensor)), None)
    dt = like.dtype.name if like is not None else "float32"
    def as_t(x):
        return x if isinstance(x, Tensor) and x.dtype.name == dt else Tensor(np.asarray(x), dtype=dt)
    return _core.where(as_t(cond), as_t(a), as_t(b))


# ---------------------------------------------------------------- repr

def _repr(t: Tensor) -> str:
    a = np.asarray(t)
    body = np.array2string(a, separator=", ", prefix="Tensor(", threshold=200)
    extra = f", dtype={t.dtype.name}"
    if t.is_tracked:
        extra += f", op={t.op}"
    return f"Tensor({body}{extra})"


# ---------------------------------------------------------------- indexing

def _normalize_key(key, ndim: int) -> list:
    if not isinstance(key, tuple):
        key = (key,)
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_real > ndim:
        raise IndexError(f"too many indices for a tensor of {ndim} dimensions: {n_real} were given")
    out = []
    for k in key:
        if k is Ellipsis:
            out.extend([slice(None)] * (ndim - n_real))
        else:
            out.append(k)
    if Ellipsis not in key:
        out.extend([slice(None)] * (ndim - n_real))
    return out


def _getitem(t: Tensor, key) -> Tensor:
    if isinstance(key, Tensor):
        key = np.asarray(key)
    if isinstance(key, np.ndarray) and key.dtype == bool and key.shape == tuple(t.shape)[:key.ndim] and key.ndim > 1:
        raise IndexError("multi-dimensional boolean masks are not supported; use fx.where")
    parts = _normalize_key(key, t.ndim)
    out, axis, advanced = t, 0, False
    for k in parts:
        if k is None:
            shape = list(out.shape)
            shape.insert(axis, 1)
            out = out.reshape(shape)
            axis += 1
        elif isinstance(k, numbers.Integral) and not isinstance(k, bool):
            n = out.shape[axis]
            if not -n <= k < n:  # checked here: an index beyond int64 cannot even reach the core
                raise IndexError(f"index {int(k)} is out of bounds for axis {axis} with size {n}")
            out = out.select(axis, int(k))
        elif isinstance(k, slice):
            start, stop, step = k.indices(out.shape[axis])
            if step < 0:
                raise IndexError("negative slice steps are not supported")
            out = out.slice(axis, start, max(start, stop), step)
            axis += 1
        else:
            idx = np.asarray(k.tolist() if isinstance(k, Tensor) else k)
            if idx.dtype == bool:
                if idx.ndim != 1 or idx.shape[0] != out.shape[axis]:
                    raise IndexError(f"boolean index of shape {idx.shape} does not match axis {axis} of size {out.shape[axis]}")
                idx = np.nonzero(idx)[0]
            if idx.dtype.kind not in "iu" or idx.ndim != 1:
                raise IndexError(f"only integers, slices, None, ..., and 1-D integer or boolean arrays are valid "
                                 f"indices, got {type(k).__name__}")
            if advanced:
                raise IndexError("only one array index per indexing expression is supported")
            advanced = True
            n = out.shape[axis]
            if idx.size and (idx.max() >= n or idx.min() < -n):
                raise IndexError(f"index {int(idx.max() if idx.max() >= n else idx.min())} is out of bounds for axis "
                                 f"{axis} with size {n}")
            out = out.index_select(axis, [int(i) % n for i in idx])
            axis += 1
    return out


def _setitem(t: Tensor, key, value) -> None:
    target = _getitem(t, key)
    if not target.same_storage(t):
        raise IndexError("assignment through array indices is not supported; use slices")
    target.assign_(value)


# ---------------------------------------------------------------- numpy dispatch

_UNARY = {np.negative: "__neg__", np.exp: "exp", np.log: "log", np.log1p: "log1p", np.sqrt: "sqrt",
          np.absolute: "abs", np.tanh: "tanh", np.sin: "sin", np.cos: "cos", np.sign: "sign"}
_BINARY = {np.add: "__add__", np.subtract: "__sub__", np.multiply: "__mul__", np.true_divide: "__truediv__",
           np.power: "__pow__", np.maximum: "maximum", np.minimum: "minimum", np.matmul: "__matmul__",
           np.less: "__lt__", np.less_equal: "__le__", np.greater: "__gt__", np.greater_equal: "__ge__",
           np.equal: "__eq__", np.not_equal: "__ne__"}


def _to_numpy_args(x):
    if isinstance(x, Tensor):
        if x.is_tracked:
            raise TypeError("this numpy function is not differentiable in fluxrs and the tensor is being "
                            "differentiated; use tensor methods (t.sum(), fx.where, ...) or .detach() first")
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_numpy_args(v) for v in x)
    return x


def _array_ufunc(ufunc, method, inputs, kwargs):
    if method == "__call__" and not kwargs:
        if ufunc in _UNARY and len(inputs) == 1:
            return getattr(inputs[0], _UNARY[ufunc])()
        if ufunc is np.square and len(inputs) == 1:
            return inputs[0] * inputs[0]
        if ufunc in _BINARY and len(inputs) == 2:
            a, b = inputs
            if isinstance(a, Tensor):
                return getattr(a, _BINARY[ufunc])(b)
            # numpy left operand: make it a tensor of the other's dtype, keep the order
            return getattr(Tensor(np.asarray(a), dtype=b.dtype.name), _BINARY[ufunc])(b)
    args = _to_numpy_args(tuple(inputs))
    kwargs = {k: _to_numpy_args(v) for k, v in (kwargs or {}).items()}
    return getattr(ufunc, method)(*args, **kwargs)


def _axis_kw(kwargs):
    return kwargs.get("axis"), bool(kwargs.get("keepdims", False))


def _array_function(func, types, args, kwargs):
    if func in (np.sum, np.mean, np.max, np.min, np.amax, np.amin) and isinstance(args[0], Tensor) and len(args) == 1:
        axis, keep = _axis_kw(kwargs)
        name = {np.sum: "sum", np.mean: "mean", np.max: "max", np.amax: "max", np.min: "min", np.amin: "min"}[func]
        return getattr(args[0], name)(axis, keep)
    if func is np.reshape:
        return args[0].reshape(args[1] if len(args) > 1 else kwargs["newshape"])
    if func is np.transpose and isinstance(args[0], Tensor):
        return args[0].transpose(*(args[1:] or ([kwargs["axes"]] if kwargs.get("axes") is not None else [])))
    if func is np.concatenate:
        return concat(args[0], kwargs.get("axis", args[1] if len(args) > 1 else 0))
    if func is np.stack:
        return stack(args[0], kwargs.get("axis", args[1] if len(args) > 1 else 0))
    if func is np.where and len(args) == 3:
        return where(*args)
    if func is np.clip and isinstance(args[0], Tensor):
        lo = args[1] if len(args) > 1 else kwargs.get("a_min")
        hi = args[2] if len(args) > 2 else kwargs.get("a_max")
        return args[0].clamp(lo, hi)
    if func is np.shape:
        return tuple(args[0].shape)
    return func(*_to_numpy_args(tuple(args)), **{k: _to_numpy_args(v) for k, v in kwargs.items()})


# ---------------------------------------------------------------- DLPack

def _dlpack(self: Tensor, *, stream=None, max_version=None, dl_device=None, copy=None):
    # DLPack is what torch.tensor(x), torch.from_dlpack and np.from_dlpack read (torch takes
    # neither __array__ nor __array_interface__ from a non-numpy object, only a sequence, which
    # it walks element by element). Exported through the numpy view of the tensor's memory,
    # which the capsule keeps alive: no copy, and writes on either side show on the other
    # (numpy before 2.1, the last for Python 3.9, reads only unversioned DLPack, which cannot
    # say "writable", so it marks its side read-only; t.numpy() is the writable view there).
    if self.device == "gpu":
        raise BufferError("__dlpack__: a GPU tensor cannot be shared yet (the wgpu backend has no DLPack device); "
                          "move it to the host first with fx.cpu(t)")
    kw = {k: v for k, v in (("max_version", max_version), ("dl_device", dl_device), ("copy", copy)) if v is not None}
    return self.numpy().__dlpack__(stream=stream, **kw)


_KDL_CPU, _KDL_VULKAN = 1, 7  # DLPack's device codes


def _dlpack_device(self: Tensor) -> tuple[int, int]:
    return (_KDL_VULKAN if self.device == "gpu" else _KDL_CPU, 0)


# The DLPack version asked of producers: the versioned capsule, which says when memory is read-only.
_DLPACK_MAX_VERSION = (1, 0)


def from_dlpack(x: Any, *, device: Any = None, copy: bool | None = None) -> Tensor:
    """A tensor from any object with ``__dlpack__`` (a numpy array, a PyTorch or JAX CPU
    tensor, another fluxrs tensor), as the array API's ``from_dlpack``.

    The tensor shares the producer's memory (no copy): a write on either side, by an
    optimiser step or ``assign_`` here, or in numpy there, shows on the other, and the tensor
    keeps the producer's array alive. Strided views and offsets are shared as they are.
    Memory that cannot be shared is copied once instead: read-only memory (fluxrs tensors
    are writable, optimisers update them in place), data not aligned to their element size,
    and negative or overlapping (broadcast) strides. ``copy=True`` always copies;
    ``copy=False`` raises BufferError where a copy would be needed. float32 and float64 keep
    their dtype; other dtypes raise TypeError, naming the conversion to make. Only host
    (CPU) memory can be read: other devices raise BufferError.

    >>> import fluxrs as fx, numpy as np
    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> t = fx.from_dlpack(a[:, ::2])                  # a strided view of a's memory
    >>> t.tolist(), t.dtype.name
    ([[0.0, 2.0], [3.0, 5.0]], 'float32')
    >>> _ = t.assign_(np.zeros((2, 2), np.float32))    # writes land in a...
    >>> a.tolist()
    [[0.0, 1.0, 0.0], [0.0, 4.0, 0.0]]
    >>> a[1, 2] = 7.0                                  # ...and a's writes show in t
    >>> t.tolist()
    [[0.0, 0.0], [0.0, 7.0]]
    """
    if device not in (None, "cpu", (_KDL_CPU, 0)):
        raise ValueError(f"from_dlpack: device must be None or 'cpu' (move a GPU tensor to the host with fx.gpu "
                         f"after importing), got {device!r}")
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__ (a tensor or array), got {type(x).__name__}")
    try:
        try:
            capsule = x.__dlpack__(max_version=_DLPACK_MAX_VERSION)
        except TypeError:
            capsule = x.__dlpack__()  # a producer from before DLPack 1.0 takes no max_version
    except BufferError as e:
        if isinstance(x, np.ndarray) and not x.flags.writeable and copy is not False:
            # numpy before 2.1 exports no read-only array through DLPack; such memory is copied anyway
            return _core.from_dlpack_capsule(np.array(x).__dlpack__(), True)
        raise BufferError(f"from_dlpack: {type(x).__name__} cannot be exported: {e}") from None
    return _core.from_dlpack_capsule(capsule, copy)


Tensor.__dlpack__ = _dlpack
Tensor.__dlpack_device__ = _dlpack_device


# ---------------------------------------------------------------- the class's documentation

# The class is defined in Rust, its documentation here, beside the Python parts it describes.
Tensor.__doc__ = """An n-dimensional array of float32 (the default) or float64 numbers, on the CPU
or, with `fx.gpu`, on the GPU. Operations on tensors are recorded while `fx.gradient` (or
`train_`) differentiates, and only then.

Make one with ``fx.tensor(data, dtype=None)`` (a copy of array-like data; float64 becomes
float32 unless ``dtype="float64"``), `fx.zeros`, `fx.ones`, `fx.full`, `fx.rand`,
`fx.randn`; layers, losses and `train_` accept numpy arrays where a tensor is expected.
Arithmetic, ``@``, reductions (``t.sum(axis)``, ``t.mean(axis)``, ``t.max(axis)``),
``reshape``/``transpose``, numpy-style indexing and numpy functions (``np.exp(t)``) all
differentiate. Read values out with ``t.numpy()`` (a view of the same memory), ``t.tolist()``,
``float(t)``, ``np.asarray(t)``; ``torch.tensor(t)`` and ``np.from_dlpack(t)`` read it through
DLPack, and `fx.from_dlpack` makes a tensor over another library's memory. The layout is batch-first: a batch of 32 images is ``(32, C, H, W)``.

>>> import fluxrs as fx, numpy as np
>>> x = fx.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> x.shape, x.dtype.name
((2, 2), 'float32')
>>> (x @ x.T + 1).sum(1).tolist()
[18.0, 38.0]
>>> fx.gradient(lambda t: (t * t).sum(), x)[0].tolist()
[[2.0, 4.0], [6.0, 8.0]]
>>> np.from_dlpack(x).tolist() == x.tolist()
True
"""
