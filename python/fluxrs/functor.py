"""Models as trees.

A model is a tree whose leaves are tensors. Its nodes are `Layer` objects (their children are
their public attributes), other objects with a ``__dict__``, lists, tuples and dicts. This module
walks such trees: collecting leaves (`leaves`), rebuilding them (`fmap`) and mirroring them with
gradients in place of tensors (`mirror`), as Functors.jl does for Flux.

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Dense(2, 3), fx.Dense(3, 1))
>>> [tuple(p.shape) for p in fx.functor.leaves(m)]
[(3, 2), (3,), (1, 3), (1,)]
"""

from __future__ import annotations

import copy
import types
from typing import Any, Callable, Iterator

from fluxrs._core import Tensor

_ATOMS = (str, bytes, int, float, complex, bool, type(None), types.FunctionType, types.BuiltinFunctionType,
          types.MethodType, types.ModuleType, type)


class Layer:
    """Base class for layers and custom models.

    Children are the public attributes (tensors, layers, lists, tuples, dicts). Override
    `trainable` to return the names of the children an optimiser should see, as
    ``Flux.trainable`` does; the others (running statistics, say) stay model state.

    >>> import fluxrs as fx
    >>> class Affine(fx.Layer):
    ...     def __init__(self, n):
    ...         self.scale = fx.ones(n)
    ...         self.shift = fx.zeros(n)
    ...     def __call__(self, x):
    ...         return x * self.scale + self.shift
    >>> len(fx.params(Affine(3)))
    2
    """

    def children(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def trainable(self) -> tuple[str, ...] | None:
        """Names of trainable children; None means all of them."""
        return None


def layer(cls):
    """Class decorator: make a plain class a model node (like ``Functors.@functor``).

    >>> import fluxrs as fx
    >>> @fx.layer
    ... class Scale:
    ...     def __init__(self):
    ...         self.w = fx.ones(2)
    >>> len(fx.params(Scale()))
    1
    """
    cls.__fluxrs_layer__ = True
    if not hasattr(cls, "children"):
        cls.children = Layer.children
    if not hasattr(cls, "trainable"):
        cls.trainable = Layer.trainable
    try:
        from fluxrs import plugins
        plugins.register_layer(cls.__name__, cls)
    except Exception:  # registration is a convenience; a name clash must not break class creation
        pass
    return cls


def is_node(x: Any) -> bool:
    """Whether `x` is an object node of a model tree (not a container, tensor or atom)."""
    if isinstance(x, (Tensor, list, tuple, dict) + _ATOMS) or callable(x) and not hasattr(x, "__dict__"):
        return False
    return isinstance(x, Layer) or getattr(type(x), "__fluxrs_layer__", False) or hasattr(x, "__dict__")


def children(x: Any, trainable_only: bool = False) -> dict[Any, Any]:
    """The named children of a node or container (empty for leaves and atoms)."""
    if isinstance(x, (list, tuple)):
        return dict(enumerate(x))
    if isinstance(x, dict):
        return dict(x)
    if not is_node(x):
        return {}
    ch = x.children() if hasattr(x, "children") and callable(getattr(x, "children")) else \
        {k: v for k, v in vars(x).items() if not k.startswith("_")}
    if trainable_only and hasattr(x, "trainable"):
        names = x.trainable()
        if names is not None:
            ch = {k: v for k, v in ch.items() if k in names}
    return ch


def leaves(x: Any, trainable_only: bool = True) -> list[Tensor]:
    """Tensors in the tree, in order, each once (shared weights appear once)."""
    out: list[Tensor] = []
    seen: set[int] = set()
    visiting: set[int] = set()

    def walk(node):
        if isinstance(node, Tensor):
            if id(node) not in seen:
                seen.add(id(node))
                out.append(node)
            return
        if isinstance(node, _ATOMS):
            return
        if id(node) in visiting:  # a cycle: walk each node once
            return
        visiting.add(id(node))
        for v in children(node, trainable_only).values():
            walk(v)
        visiting.discard(id(node))

    walk(x)
    return out


class Struct(types.SimpleNamespace):
    """The gradient of an object node: one field per child, ``None`` where nothing is
    differentiable (Zygote's NamedTuple). Fields are read as attributes or by name."""

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else list(vars(self).values())[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(vars(self).values())

    def __len__(self) -> int:
        return len(vars(self))


def mirror(x: Any, at_leaf: Callable[[Tensor], Any], trainable_only: bool = False) -> Any:
    """Rebuild the shape of `x` with `at_leaf(t)` for each tensor and None elsewhere;
    a subtree that is all None collapses to None."""

    def walk(node):
        if isinstance(node, Tensor):
            return at_leaf(node)
        if isinstance(node, _ATOMS):
            return None
        ch = children(node, trainable_only)
        if not ch and not isinstance(node, (list, tuple, dict)):
            return None
        got = {k: walk(v) for k, v in ch.items()}
        if all(v is None for v in got.values()):
            return None
        if isinstance(node, list):
            return [got[i] for i in range(len(node))]
        if isinstance(node, tuple):
            vals = [got[i] for i in range(len(node))]
            return type(node)(*vals) if hasattr(node, "_fields") else tuple(vals)
        if isinstance(node, dict):
            return got
        return Struct(**{str(k): v for k, v in got.items()})

    return walk(x)


def fmap(f: Callable[..., Any], x: Any, *ys: Any) -> Any:
    """Apply `f` to every tensor of `x` (and the matching leaves of `ys`), returning a new
    tree of the same structure; the original is untouched. A leaf whose match in some `y`
    is None (no gradient) is kept as it is.

    >>> import fluxrs as fx
    >>> m = fx.Dense(2, 2)
    >>> m2 = fx.fmap(lambda p: p * 0, m)
    >>> float(abs(m2.weight).sum()), m2 is m
    (0.0, False)
    """
    memo: dict[int, Any] = {}

    def walk(node, others):
        if isinstance(node, Tensor):
            if any(o is None for o in others):
                return node
            key = id(node)
            if not others and key in memo:  # shared weights stay shared
                return memo[key]
            out = f(node, *others)
            memo[key] = out
            return out
        if isinstance(node, _ATOMS):
            return node
        ch = children(node)
        if not ch:
            return node

        def sub(o, k):
            if o is None:
                return None
            if isinstance(o, (list, tuple)):
                return o[k]
            if isinstance(o, dict):
                return o.get(k)
            return getattr(o, str(k), None)

        new = {k: walk(v, [sub(o, k) for o in others]) for k, v in ch.items()}
        if isinstance(node, list):
            return [new[i] for i in range(len(node))]
        if isinstance(node, tuple):
            vals = [new[i] for i in range(len(node))]
            return type(node)(*vals) if hasattr(node, "_fields") else tuple(vals)
        if isinstance(node, dict):
            return new
        clone = copy.copy(node)
        for k, v in new.items():
            object.__setattr__(clone, k, v)
        return clone

    return walk(x, list(ys))
