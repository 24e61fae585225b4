"""Models as trees.

A model is a tree whose leaves are tensors. Its nodes are `Layer` objects (their children are
their public attributes), other objects with a ``__dict__``, lists, tuples and dicts. This module
walks such trees: collecting leaves (`leaves`), rebuilding them (`fmap`) and mirroring them with
gradients in place of tensors (`mirror`), as Functors.jl does for Flux, and printing them as
Flux does (`show`, which is how a `Layer` prints).

>>> import fluxrs as fx
>>> m = fx.Chain(fx.Dense(2, 3), fx.Dense(3, 1))
>>> [tuple(p.shape) for p in fx.functor.leaves(m)]
[(3, 2), (3,), (1, 3), (1,)]
"""

from __future__ import annotations

import copy
import itertools
import reprlib
import types
from typing import Any, Callable, Iterator

import numpy as np

from fluxrs._core import Tensor
from fluxrs._checks import warn_caller
from fluxrs._registry import register_layer

# np.ufunc too: numpy functions used as activations (np.cbrt) carry a __dict__ but are no layers
_ATOMS = (str, bytes, int, float, complex, bool, type(None), types.FunctionType, types.BuiltinFunctionType,
          types.MethodType, types.ModuleType, type, np.ufunc)


def as_attribute(node: Any, name: str, value: Any) -> Any:
    """`value` as it is stored in the public attribute `name` of a layer: a float numpy array
    becomes a tensor, so that it is a parameter as any array field is in Flux (params, setup
    and gradient see tensors only). It keeps the dtype of the tensor it replaces; a new one
    is float32 (numpy's float64 default is a habit, not a request). Underscore names keep
    their arrays: constants."""
    if type(value) is not np.ndarray or value.dtype.kind != "f" or name.startswith("_"):
        return value
    old = getattr(node, name, None)
    return Tensor(value, dtype=old.dtype.name if isinstance(old, Tensor) else "float32")


class Layer:
    """Base class for layers and custom models.

    Children are the public attributes (tensors, layers, lists, tuples, dicts). Override
    `trainable` to return the names of the children an optimiser should see, as
    ``Flux.trainable`` does; the others (running statistics, say) stay model state.

    A float numpy array assigned to a public attribute is stored as a tensor (float32, or
    the dtype of the tensor it replaces), so it trains as any parameter; keep a constant
    array under a name starting with ``_``.

    A layer prints as its class name and children, tensors by their shape, with its
    parameter count (`show`); a class may print itself otherwise by defining
    ``__repr__``, or ``_repr_inner`` for the one-line form used inside other models.

    >>> import fluxrs as fx
    >>> class Affine(fx.Layer):
    ...     def __init__(self, n):
    ...         self.scale = fx.ones(n)
    ...         self.shift = fx.zeros(n)
    ...     def __call__(self, x):
    ...         return x * self.scale + self.shift
    >>> len(fx.params(Affine(3)))
    2
    >>> fx.Chain(Affine(3), fx.relu)
    Chain(Affine(scale=Tensor(shape=(3,)), shift=Tensor(shape=(3,))), relu)  # 6 parameters
    """

    def children(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def trainable(self) -> tuple[str, ...] | None:
        """Names of trainable children; None means all of them."""
        return None

    # Any change of a layer's attributes may change the tree, so it outdates the cached walks
    # (`plan`); setting attributes is rare next to reading the tree, which happens every step.
    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, as_attribute(self, name, value))
        _edited()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        _edited()

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles leave the kept walks behind
        return {k: v for k, v in self.__dict__.items() if k not in _PLAN_ATTRS.values()}

    def __repr__(self) -> str:
        return show(self)

    def _repr_parts(self) -> tuple[str, list[tuple[str, Any]], str]:
        """How the layer prints: an opening, its children as ``(prefix, child)``, a closing.
        The one-line form joins them; a model too wide for one line puts each on its own."""
        return f"{type(self).__name__}(", [(f"{k}=", v) for k, v in self.children().items()], ")"

    @reprlib.recursive_repr("...")  # a layer among its own descendants prints as ...
    def _repr_inner(self) -> str:
        """The one-line form, as the layer reads inside another's repr."""
        if type(self).__repr__ is not Layer.__repr__:  # a class that prints itself
            return repr(self)
        return one_line(self._repr_parts())


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
    if cls.__setattr__ is object.__setattr__:  # numpy attributes become parameters, as in a Layer
        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, as_attribute(self, name, value))
        cls.__setattr__ = __setattr__
    if not hasattr(cls, "children"):
        cls.children = Layer.children
    if not hasattr(cls, "trainable"):
        cls.trainable = Layer.trainable
    if cls.__repr__ is object.__repr__:  # printed as a Layer is, unless it prints itself
        cls.__repr__ = Layer.__repr__
    for name in ("_repr_parts", "_repr_inner"):
        if not hasattr(cls, name):
            setattr(cls, name, getattr(Layer, name))
    register_layer(cls.__name__, cls)
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
    return list(plan(x, trainable_only).leaves)


def named_modules(x: Any, root: str = "model") -> list[tuple[str, Any]]:
    """`modules` with the path of each node from `root`: ``model.layers[0]``, attributes after
    a dot, container entries in brackets."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(node, path):
        if isinstance(node, (Tensor, np.ndarray) + _ATOMS) or id(node) in seen:
            return
        container = isinstance(node, (list, tuple, dict))
        if not container and not is_node(node):
            return
        seen.add(id(node))
        if not container:
            out.append((path, node))
        for k, v in children(node).items():
            walk(v, f"{path}.{k}" if not container and isinstance(k, str) else f"{path}[{k!r}]")

    walk(x, root)
    return out


def modules(x: Any) -> list[Any]:
    """Every node of the model tree (layers and other objects with children), root first,
    depth first, each once; containers (lists, tuples, dicts), tensors and functions are
    walked through but not listed, as Flux's ``modules``. Useful to apply something to some
    kinds of layer, e.g. a penalty on the weights of every `Dense`.

    >>> import fluxrs as fx
    >>> m1 = fx.Chain(fx.Dense(784, 64), fx.BatchNorm(64, fx.relu))
    >>> m2 = fx.Chain(m1, fx.Dense(64, 10))
    >>> [type(l).__name__ for l in fx.modules(m2)]
    ['Chain', 'Chain', 'Dense', 'BatchNorm', 'Dense']
    >>> fx.modules(m2)[1] is m1
    True
    >>> penalty = sum((l.weight ** 2).sum() for l in fx.modules(m2) if isinstance(l, fx.Dense))
    """
    return [n for _, n in named_modules(x)]


class Struct(types.SimpleNamespace):
    """The gradient of an object node: one field per child, ``None`` where nothing is
    differentiable (Zygote's NamedTuple). Fields are read as attributes or by name."""

    def __setattr__(self, name: str, value: Any) -> None:  # an optimiser state tree is cached as a Layer is
        object.__setattr__(self, name, value)
        _edited()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        _edited()

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else list(vars(self).values())[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(vars(self).values())

    def __len__(self) -> int:
        return len(vars(self))


def mirror(x: Any, at_leaf: Callable[[Tensor], Any], trainable_only: bool = False) -> Any:
    """Rebuild the shape of `x` with `at_leaf(t)` for each tensor and None elsewhere;
    a subtree that is all None collapses to None. `at_leaf` is called once per tensor (a
    shared tensor's result appears wherever the tensor does)."""
    p = plan(x, trainable_only)
    return p.build([at_leaf(t) for t in p.leaves])


# ---------------------------------------------------------------- cached walks

# Walking a model (children() per node, isinstance per child) costs more Python than a small
# model's whole step in Rust, and gradient/update_ walk on every step. So a walk is done once
# and kept (`plan`), for as long as the tree cannot have changed: every attribute change of a
# Layer or a Struct counts as an edit (`_edited`); containers and objects that are not Layers
# are compared with a snapshot of their children instead.
_edit_counter = itertools.count(1)
_generation = 0


def _edited() -> None:
    global _generation
    _generation = next(_edit_counter)  # next() on a count is atomic: no edit is lost between threads


def _own_tree_methods(node: Any) -> bool:
    """A fluxrs Layer whose children and trainable set follow from its attributes alone, so
    `_edited` sees every change of them; a user's override might read anything."""
    cls = type(node)
    return isinstance(node, Layer) and cls.__setattr__ is Layer.__setattr__ and \
        cls.children.__module__.startswith("fluxrs") and cls.trainable.__module__.startswith("fluxrs")


def snapshot(node: Any, trainable_only: bool) -> tuple[Any, bool, dict[Any, Any]]:
    """`node` with its children now, for `unchanged`: a node whose edits `_edited` does not see."""
    return node, trainable_only, children(node, trainable_only)


def unchanged(checks: list[tuple[Any, bool, dict[Any, Any]]]) -> bool:
    """Whether every snapshot's node still has the same children (the same objects)."""
    for node, trainable_only, ch in checks:
        now = children(node, trainable_only)
        if len(now) != len(ch) or any(k not in now or now[k] is not v for k, v in ch.items()):
            return False
    return True


class Plan:
    """One walk of a tree, kept: its tensors (`leaves`, each once, in order) and its shape,
    from which `build` makes the tree's mirror. `checks` are the snapshots that `valid`
    compares for the nodes whose edits `_edited` does not see."""

    __slots__ = ("leaves", "shape", "checks", "generation", "owner", "_build")

    def __init__(self, x: Any, trainable_only: bool):
        self.generation = _generation  # read first: an edit during the walk outdates the plan
        self.owner: int | None = None  # id of the layer that keeps it
        self._build: Callable[[list[Any]], Any] | None = None
        self.leaves: list[Tensor] = []
        self.checks: list[tuple[Any, Any]] = []
        index: dict[int, int] = {}
        visiting: set[int] = set()

        def walk(node, parent=None, key=None):
            if isinstance(node, Tensor):
                i = index.get(id(node))
                if i is None:
                    i = index[id(node)] = len(self.leaves)
                    self.leaves.append(node)
                return i
            if isinstance(node, _ATOMS) or id(node) in visiting:  # an atom, or a cycle: walk each node once
                return None
            if type(node) is np.ndarray:
                if node.dtype.kind == "f":
                    _warn_array(parent, key)
                return None
            snap = snapshot(node, trainable_only)
            ch = snap[2]
            if not isinstance(node, tuple) and not _own_tree_methods(node):
                self.checks.append(snap)
            if not ch and not isinstance(node, (list, tuple, dict)):
                return None
            visiting.add(id(node))
            subs = [walk(v, node, k) for k, v in ch.items()]
            visiting.discard(id(node))
            if all(v is None for v in subs):
                return None
            if isinstance(node, list):
                return (list, None, subs)
            if isinstance(node, tuple):
                return (type(node) if hasattr(node, "_fields") else tuple, None, subs)
            if isinstance(node, dict):
                return (dict, list(ch), subs)
            return (Struct, [str(k) for k in ch], subs)

        self.shape = walk(x)

    def valid(self) -> bool:
        return self.generation == _generation and unchanged(self.checks)

    def build(self, values: list[Any]) -> Any:
        """The tree's mirror with ``values[i]`` for ``leaves[i]``, None elsewhere; a subtree
        that is all None collapses to None."""
        if self._build is None:
            self._build = _compile_build(self.shape)
        return self._build(values)


def _compile_build(shape: Any) -> Callable[[list[Any]], Any]:
    """`Plan.build` for one tree shape, as straight-line Python (one expression per node):
    gradient builds its result this way on every step, and a recursive walk cost more than
    the rest of a small model's step in Python."""
    consts: dict[str, Any] = {"_S": Struct}
    lines: list[str] = []

    def emit(sh) -> str:
        if sh is None:
            return "None"
        if type(sh) is int:
            return f"v[{sh}]"
        kind, keys, subs = sh
        parts = [emit(s) for s in subs]
        j = len(lines)
        if kind is Struct:
            made = "_S(**{" + ", ".join(f"{k!r}: {p}" for k, p in zip(keys, parts)) + "})"
        elif kind is dict:
            consts[f"_k{j}"] = keys
            made = f"dict(zip(_k{j}, ({', '.join(parts)},)))"
        elif kind is list:
            made = "[" + ", ".join(parts) + "]"
        elif kind is tuple:
            made = "(" + ", ".join(parts) + ",)"
        else:  # a namedtuple
            consts[f"_t{j}"] = kind
            made = f"_t{j}({', '.join(parts)})"
        tests = [f"{p} is None" for p in parts if p != "None"]
        lines.append(f"    n{j} = None if {' and '.join(tests)} else {made}")
        return f"n{j}"

    root = emit(shape)
    src = "def build(v):\n" + "\n".join(lines + [f"    return {root}"]) + "\n"
    exec(compile(src, "<fluxrs.functor.Plan.build>", "exec"), consts)
    return consts["build"]


_warned_arrays: set[tuple[str, str]] = set()


def _warn_array(parent: Any, key: Any) -> None:
    """Say (once per place) that a float numpy array in a model tree is not a parameter: only
    tensors are differentiated and updated, and a silently frozen weight costs hours."""
    where = (type(parent).__name__, str(key))
    if where in _warned_arrays:
        return
    _warned_arrays.add(where)
    warn_caller(f"a float numpy array at {where[0]}[{key!r}] is not a parameter: gradient, params and setup "
                f"see tensors only, so it will not train; store it as fx.tensor(array) to train it (a Layer "
                f"attribute is converted when assigned), or keep it under a name starting with '_' as a constant")


_PLAN_ATTRS = {False: "_fx_plan", True: "_fx_plan_trainable"}


def plan(x: Any, trainable_only: bool = False) -> Plan:
    """The walk of `x` (see `Plan`), kept on `x` while the tree is unchanged when `x` is a
    Layer (in an attribute, so it lives and dies with the model; a copy of the layer has
    another id and walks afresh); other trees are walked on every call."""
    if not isinstance(x, Layer):
        return Plan(x, trainable_only)
    attr = _PLAN_ATTRS[trainable_only]
    p = getattr(x, attr, None)
    if p is not None and p.owner == id(x) and p.valid():
        return p
    p = Plan(x, trainable_only)
    p.owner = id(x)
    try:
        object.__setattr__(x, attr, p)  # not an edit of the tree (underscore names are not children)
    except AttributeError:  # __slots__ without room for it
        pass
    return p


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


# ---------------------------------------------------------------- printing
# Flux-style printing of models (`Layer.__repr__`): the layer as you would write it, then the
# parameter count; a model wider than `WIDTH` prints as a tree (see `show`). A layer prints
# through `_repr_inner` (its one-line form; a leaf of the tree) or, by default, through
# `_repr_parts` (an opening, its children, a closing: a node of the tree, one child a line when
# it does not fit on one).

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
    else the tree, one layer a line with its parameter count, closed by the totals, as Flux
    prints a big model.

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
    """
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
