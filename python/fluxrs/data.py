"""Data helpers: `DataLoader` for mini-batches, and `onehotbatch` / `onecold` for labels.

Batch-first: observations run along axis 0, so Flux's ``rand(28, 28, 60_000)`` is
``(60_000, 28, 28)`` here and a batch of 32 images is ``(32, 28, 28)``.

>>> import fluxrs as fx, numpy as np
>>> X = np.random.rand(60_000, 28, 28).astype(np.float32)
>>> Y = np.random.randint(0, 10, 60_000)
>>> data = fx.DataLoader((X, Y), batchsize=32)
>>> len(data)
1875
>>> x1, y1 = next(iter(data))
>>> x1.shape, y1.shape
((32, 28, 28), (32,))
>>> fx.onehotbatch(y1, range(10)).shape
(32, 10)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from fluxrs._checks import torch_keywords
from fluxrs._core import Tensor
from fluxrs.random import default_rng
from fluxrs.tensor import stack

__all__ = ["DataLoader", "onehotbatch", "onehot", "onecold", "batch", "unbatch"]


def _as_array(a: Any, name: str) -> np.ndarray | Tensor:
    """Float data becomes float32 once, up front (not per batch); integer labels stay integer
    numpy arrays so that `onehotbatch` and indexing can use them."""
    if isinstance(a, Tensor):
        if a.ndim == 0:
            raise ValueError(f"DataLoader: {name} is a 0-d tensor; each array needs observations along axis 0")
        return a
    arr = np.asarray(a)
    if arr.ndim == 0:
        raise ValueError(f"DataLoader: {name} is a scalar; each array needs observations along axis 0")
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def _nobs(a: Any) -> int:
    return int(a.shape[0])


class DataLoader:
    """Iterate over mini-batches of `data`, slicing axis 0 of every array.

    ``DataLoader(data, batchsize=1, shuffle=False, partial=True, rng=None, collate=None)``

    * `data`: one array, or a tuple or dict of arrays (numpy or Tensor) with the same number
      of observations; each batch has the same structure, float arrays as float32 Tensors,
      integer arrays as numpy integer arrays. A list of observations (e.g. ``[(x, y), ...]``)
      gives lists of observations, stacked per field when ``collate=True``.
    * `shuffle`: a new random order on every pass, from `rng` (default: this thread's
      generator, `fx.random.default_rng()`).
    * `partial`: keep the last, smaller batch (False drops it).
    * `collate`: a function applied to each batch before it is yielded.

    ``len(loader)`` is the number of batches.

    >>> import fluxrs as fx, numpy as np
    >>> loader = fx.DataLoader(np.arange(10.0), batchsize=4)
    >>> [b.tolist() for b in loader]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    >>> len(fx.DataLoader(np.arange(10.0), batchsize=4, partial=False))
    2
    """

    @torch_keywords(
        batch_size=lambda v: f"write batchsize={v!r} (Flux's spelling, one word)",
        drop_last=lambda v: f"write partial={not v!r} (Flux's partial=False drops the last, smaller batch)",
        collate_fn="write collate=f (a function applied to each batch; collate=True stacks observations)",
        generator="write rng=np.random.default_rng(seed) (a numpy Generator) for the shuffling order",
        num_workers="batches are sliced in the training thread (a numpy slice each), so there are no workers to set",
    )
    def __init__(self, data: Any, batchsize: int = 1, shuffle: bool = False, partial: bool = True,
                 rng: np.random.Generator | None = None, collate: bool | Callable | None = None):
        if isinstance(batchsize, bool) or not isinstance(batchsize, numbers.Integral) or batchsize < 1:
            raise ValueError(f"DataLoader: batchsize must be a positive integer, got {batchsize!r}")
        self.batchsize = int(batchsize)
        self.shuffle = bool(shuffle)
        self.partial = bool(partial)
        self.rng = rng
        self.collate = collate
        self._kind, self.data = self._normalise(data)
        self.nobs = self._count()

    def _normalise(self, data: Any) -> tuple[str, Any]:
        if isinstance(data, dict):
            return "dict", {k: _as_array(v, f"data[{k!r}]") for k, v in data.items()}
        if isinstance(data, tuple):
            if hasattr(data, "_fields"):  # a namedtuple, as Flux's NamedTuple data
                return "namedtuple", type(data)(*(_as_array(v, f"data.{f}") for f, v in zip(data._fields, data)))
            return "tuple", tuple(_as_array(v, f"data[{i}]") for i, v in enumerate(data))
        if isinstance(data, list):
            return "list", data  # a list of observations, sliced as a list
        if isinstance(data, (np.ndarray, Tensor)) or hasattr(data, "__array__"):
            return "array", _as_array(data, "data")
        raise TypeError(f"DataLoader: data must be an array, a tuple or dict of arrays, or a list of observations; "
                        f"got {type(data).__name__}")

    def _arrays(self) -> list[tuple[str, Any]]:
        if self._kind == "dict":
            return [(repr(k), v) for k, v in self.data.items()]
        if self._kind in ("tuple", "namedtuple"):
            return [(f"data[{i}]", v) for i, v in enumerate(self.data)]
        if self._kind == "array":
            return [("data", self.data)]
        return []

    def _count(self) -> int:
        if self._kind == "list":
            return len(self.data)
        arrays = self._arrays()
        if not arrays:
            raise ValueError("DataLoader: data is an empty tuple or dict")
        counts = [(name, _nobs(a)) for name, a in arrays]
        if len({n for _, n in counts}) > 1:
            desc = ", ".join(f"{name} has {n} (shape {tuple(a.shape)})" for (name, n), (_, a) in zip(counts, arrays))
            raise ValueError(f"DataLoader: all arrays must have the same number of observations along axis 0 "
                             f"(batch-first); {desc}")
        return counts[0][1]

    def __len__(self) -> int:
        if self.partial:
            return math.ceil(self.nobs / self.batchsize)
        return self.nobs // self.batchsize

    def _take(self, a: Any, idx: slice | np.ndarray) -> Any:
        if isinstance(a, Tensor):
            if isinstance(idx, slice):
                return a[idx]
            return a.index_select(0, idx.tolist())
        b = a[idx]
        if b.dtype.kind == "f":
            return Tensor(np.ascontiguousarray(b))
        return b

    def _batch(self, idx: slice | np.ndarray) -> Any:
        if self._kind == "list":
            items = self.data[idx] if isinstance(idx, slice) else [self.data[i] for i in idx]
            if self.collate is True:
                return _stack_observations(items)
            return items
        if self._kind == "array":
            out = self._take(self.data, idx)
        elif self._kind == "dict":
            out = {k: self._take(v, idx) for k, v in self.data.items()}
        elif self._kind == "namedtuple":
            out = type(self.data)(*(self._take(v, idx) for v in self.data))
        else:
            out = tuple(self._take(v, idx) for v in self.data)
        return out

    def __iter__(self) -> Iterator[Any]:
        n, bs = self.nobs, self.batchsize
        order = None
        if self.shuffle:
            order = (self.rng or default_rng()).permutation(n)
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            idx = slice(lo, hi) if order is None else order[lo:hi]
            batch = self._batch(idx)
            if callable(self.collate):
                batch = self.collate(batch)
            yield batch

    def __repr__(self) -> str:
        return (f"DataLoader({self._kind}, batchsize={self.batchsize}, shuffle={self.shuffle}, "
                f"partial={self.partial})  # {len(self)} batches of {self.nobs} observations")


def _stack_observations(items: list) -> Any:
    """Stack a list of observations into one batch per field (MLUtils' `batch`)."""
    return batch(items) if items else items


def batch(xs: Any) -> Any:
    """Stack observations into one array with a new leading batch axis: MLUtils' (and Flux's)
    ``batch``, batch-first, so ``n`` arrays of shape ``S`` give ``(n, *S)`` where Flux gives
    ``(S..., n)``. Observations that are tuples or dicts are batched per field. Tensors are
    stacked with `fx.stack` (differentiable, dtype kept); other float data becomes a float32
    tensor, integer data stays a numpy array (labels, indices).

    >>> import fluxrs as fx
    >>> fx.batch([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).tolist()
    [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    >>> x, y = fx.batch([(fx.ones(3), 1), (fx.zeros(3), 0)])
    >>> x.shape, y.tolist()
    ((2, 3), [1, 0])
    """
    if isinstance(xs, (Tensor, np.ndarray)):
        return xs if isinstance(xs, Tensor) else _stack_leaves(list(xs))  # already one array: its rows
    items = list(xs)
    if not items:
        raise ValueError("batch: xs is empty; there is nothing to stack")
    first = items[0]
    if isinstance(first, (tuple, dict)):
        for i, it in enumerate(items):
            if type(it) is not type(first) or len(it) != len(first):
                raise ValueError(f"batch: item {i} is {_describe(it)}, item 0 is {_describe(first)}; "
                                 "every observation needs the same fields")
        if isinstance(first, dict):
            return {k: batch([it[k] for it in items]) for k in first}
        return tuple(batch([it[i] for it in items]) for i in range(len(first)))
    return _stack_leaves(items)


def _describe(v: Any) -> str:
    return f"a {type(v).__name__} of {len(v)} fields" if isinstance(v, (tuple, dict)) else type(v).__name__


def _stack_leaves(items: list) -> Any:
    shapes = [tuple(np.shape(it)) for it in items]
    for i, sh in enumerate(shapes):
        if sh != shapes[0]:
            raise ValueError(f"batch: item {i} has shape {sh}, item 0 has shape {shapes[0]}; "
                             "observations must all have the same shape")
    if any(isinstance(it, Tensor) for it in items):
        return stack(items, 0)
    arr = np.stack([np.asarray(it) for it in items])
    return Tensor(arr.astype(np.float32)) if arr.dtype.kind == "f" else arr


def unbatch(x: Any) -> list:
    """Split along the leading (batch) axis: the inverse of `batch`, MLUtils' ``unbatch``
    batch-first. A tensor gives tensors (differentiable slices), other arrays numpy arrays.

    >>> import fluxrs as fx
    >>> [t.tolist() for t in fx.unbatch(fx.tensor([[1.0, 2.0], [3.0, 4.0]]))]
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if not isinstance(x, Tensor):
        x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("unbatch: x must have a leading batch axis, got a 0-d array")
    if isinstance(x, Tensor):
        return [x.select(0, i) for i in range(x.shape[0])]
    return list(x)


# ---------------------------------------------------------------- one-hot encoding

def _class_index(classes: Sequence) -> dict:
    index = {}
    for i, c in enumerate(classes):
        index.setdefault(_key(c), i)
    return index


def _key(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def onehotbatch(labels: Any, classes: Iterable, default: Any = None) -> Tensor:
    """One-hot encode `labels` against `classes`: an ``(N, len(classes))`` float32 tensor,
    batch-first (Flux's is ``(nclasses, N)``). A label not in `classes` is an error unless
    `default` names the class to use instead. A single label gives a vector; labels of
    shape ``S`` give ``S + (len(classes),)``.

    >>> import fluxrs as fx
    >>> fx.onehotbatch([0, 2], range(3)).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    >>> fx.onehotbatch(["b", "z"], ["a", "b", "c"], default="c").tolist()
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    classes = _classes(classes, "onehotbatch")
    try:
        index = _class_index(classes)
    except TypeError:
        raise TypeError(f"onehotbatch: classes must be hashable values (numbers, strings, ...), got "
                        f"{classes[:5]!r}") from None
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    scalar = not isinstance(labels, (list, tuple, np.ndarray))
    arr = np.asarray([labels] if scalar else labels, dtype=object)
    # labels of shape S give S + (nclasses,), as Flux's give (nclasses, S...)
    shape, arr = arr.shape, arr.reshape(-1)
    cols = np.empty(len(arr), dtype=np.int64)
    for i, lab in enumerate(arr):
        try:
            j = index.get(_key(lab))
        except TypeError:
            raise TypeError(f"onehotbatch: label {lab!r} (item {i}) is not hashable; labels are numbers, strings "
                            "or other hashable values") from None
        if j is None:
            if default is None or _key(default) not in index:
                raise ValueError(f"onehotbatch: label {lab!r} (item {i}) is not one of the classes "
                                 f"{classes if len(classes) <= 20 else classes[:20] + ['...']}"
                                 + ("" if default is None else f", nor is the default {default!r}"))
            j = index[_key(default)]
        cols[i] = j
    out = np.zeros((len(arr), len(classes)), dtype=np.float32)
    out[np.arange(len(arr)), cols] = 1.0
    return Tensor(out[0] if scalar else out.reshape(shape + (len(classes),)))


def _classes(classes: Any, who: str) -> list:
    if isinstance(classes, Tensor):
        classes = classes.numpy()
    if classes is None or isinstance(classes, (numbers.Number, bool)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"{who}: classes must be a sequence of class labels (e.g. range(10)), got "
                        f"{type(classes).__name__}")
    return list(classes)


def onehot(label: Any, classes: Iterable, default: Any = None) -> Tensor:
    """One-hot vector of a single label (Flux's `onehot`)."""
    return onehotbatch(label, classes, default)


def onecold(y: Any, classes: Sequence | None = None) -> Any:
    """The inverse of `onehotbatch`: for each row of an ``(N, C)`` batch (or for a vector),
    the class with the largest value; class indices 0..C-1 unless `classes` is given.
    Works on probabilities and logits alike. Returns a numpy array (a scalar for a vector).

    >>> import fluxrs as fx
    >>> fx.onecold(fx.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist()
    [1, 0]
    >>> fx.onecold([0.3, 0.7], ["cat", "dog"])
    'dog'
    """
    try:
        a = np.asarray(y.detach() if isinstance(y, Tensor) else y)
    except ValueError as e:
        raise ValueError(f"onecold: y is not a rectangular array of scores ({e})") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"onecold: y must hold numbers (scores or probabilities), got {type(y).__name__} of dtype "
                        f"{a.dtype}")
    if a.ndim == 0 or a.ndim > 2:
        raise ValueError(f"onecold: expected a vector or an (N, classes) batch, got shape {a.shape}")
    if a.shape[-1] == 0:
        if a.ndim == 2 and a.shape[0] == 0:  # no observations: nothing to choose
            return np.zeros(0, dtype=np.int64) if classes is None else np.asarray(list(classes))[:0]
        raise ValueError(f"onecold: there are no classes to choose from (y has shape {a.shape})")
    if classes is not None:
        classes = _classes(classes, "onecold")
    idx = a.argmax(axis=-1)
    if classes is None:
        return idx if a.ndim == 2 else int(idx)
    if len(classes) != a.shape[-1]:
        raise ValueError(f"onecold: {len(classes)} classes given for {a.shape[-1]} scores per observation")
    if a.ndim == 1:
        return classes[int(idx)]
    return np.asarray(classes, dtype=object)[idx] if not all(isinstance(c, numbers.Number) for c in classes) \
        else np.asarray(classes)[idx]
