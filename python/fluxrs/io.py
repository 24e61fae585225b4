"""Model state and checkpoints: `state`, `loadmodel_`, `save`, `load`, `load_checkpoint`.

`state(model)` is every tensor of a model (trainable parameters and non-trainable state
such as BatchNorm's running statistics) as numpy arrays, in a nested dict that mirrors the
model (lists for positional children), like ``Flux.state``. `loadmodel_(model, src)` writes
such a state, or a checkpoint file, back into a model of the same architecture, in place.

`save(path, model, opt_state=None, **meta)` writes a safetensors file: the model's tensors
under dotted names (``layers.0.weight``), the optimiser state from `fx.setup` under
``opt.`` (``opt.layers.0.weight.arrays.0.1``), and string metadata: the format and its
version, a SHA-256 of the tensors, the optimiser's structure and rules, and `meta` as JSON
(a step counter, ``rng=fx.random.get_state()``, anything JSON can hold). The file is
written atomically: to a temporary file in the same directory, flushed to disk, then
renamed over the old one, so a crash mid-save leaves the previous checkpoint intact.

>>> import fluxrs as fx, tempfile, os
>>> m = fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3))
>>> sorted(fx.state(m)["layers"][1])
['bias', 'running_mean', 'running_var', 'scale']
>>> opt = fx.setup(fx.Adam(0.01), m)
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> fx.save(path, m, opt, step=100)
>>> m2 = fx.Chain(fx.Dense(2, 3), fx.BatchNorm(3)); opt2 = fx.setup(fx.Adam(0.01), m2)
>>> ckpt = fx.load(path)
>>> fx.loadmodel_(m2, ckpt, opt_state=opt2) is m2
True
>>> ckpt.meta["step"], m2[0].weight.tolist() == m[0].weight.tolist()
(100, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from typing import Any, Iterator

import numpy as np

from fluxrs import _core
from fluxrs._core import Tensor
from fluxrs._version import __version__
from fluxrs.functor import _ATOMS, Struct, children, is_node

__all__ = ["state", "loadmodel_", "load_checkpoint", "save", "load", "Checkpoint", "CheckpointError",
           "FORMAT_VERSION"]

FORMAT = "fluxrs"
FORMAT_VERSION = 1
OPT_PREFIX = "opt."


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or a state that does not fit the model."""


# ---------------------------------------------------------------- walking models

def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _model_entries(model: Any, filter: Any = None, absent: set[str] | None = None) -> dict[str, Tensor]:
    """Every tensor of `model` (trainable or not) by dotted name, in tree order. A tensor
    shared between two places appears under both names. With `filter`, only the children for
    which ``filter(child)`` is true are walked, and the kept entries of a list or tuple are
    numbered afresh (``Flux.loadmodel!``'s `filter`). `absent` collects the names where a
    layer holds None instead of a tensor (``bias=False``)."""
    out: dict[str, Tensor] = {}
    visiting: set[int] = set()

    def walk(node, name):
        if isinstance(node, Tensor):
            out[name] = node
            return
        if isinstance(node, _ATOMS) or id(node) in visiting:
            return
        visiting.add(id(node))
        ch = children(node)
        if filter is not None:
            kept = [(k, v) for k, v in ch.items() if filter(v)]
            ch = dict(enumerate(v for _, v in kept)) if isinstance(node, (list, tuple)) else dict(kept)
        for k, v in ch.items():
            if v is None and absent is not None and is_node(node):
                absent.add(_join(name, k))
            walk(v, _join(name, k))
        visiting.discard(id(node))

    walk(model, "")
    return out


def _is_model(src: Any) -> bool:
    """Whether `src` holds a layer (a model to load from) rather than being a state."""
    if isinstance(src, (Tensor, np.ndarray, Struct) + _ATOMS):
        return False
    if isinstance(src, dict):
        return any(_is_model(v) for v in src.values())
    if isinstance(src, (list, tuple)):
        return any(_is_model(v) for v in src)
    return is_node(src)


def _copy(t: Tensor) -> np.ndarray:
    return np.array(t.numpy(), copy=True, order="C")  # .numpy() may share the tensor's memory


def state(model: Any) -> Any:
    """The model's tensors as numpy arrays (copies) in a nested dict mirroring the model:
    layers and dicts become dicts, lists and tuples become lists (None where a position holds
    no tensor); children without tensors (activations, flags) are left out. Trainable and
    non-trainable tensors alike, as ``Flux.state``.

    >>> import fluxrs as fx
    >>> s = fx.state(fx.Chain(fx.Dense(2, 3, fx.relu), fx.softmax))
    >>> list(s["layers"][0]), s["layers"][1], s["layers"][0]["weight"].shape
    (['weight', 'bias'], None, (3, 2))
    """
    visiting: set[int] = set()

    def walk(node):
        if isinstance(node, Tensor):
            return _copy(node)
        if isinstance(node, _ATOMS) or id(node) in visiting:
            return None
        ch = children(node)
        if not ch and not isinstance(node, (list, tuple, dict)):
            return None
        visiting.add(id(node))
        got = {k: walk(v) for k, v in ch.items()}
        visiting.discard(id(node))
        if isinstance(node, (list, tuple)):
            vals = [got[i] for i in range(len(node))]
            return vals if any(v is not None for v in vals) else None
        kept = {k: v for k, v in got.items() if v is not None}
        return kept if kept or isinstance(node, dict) else None

    return walk(model)


def _flatten_state(st: Any) -> dict[str, np.ndarray]:
    """A nested state (from `state` or `Checkpoint.model`), or an already flat dict with
    dotted keys, as ``{dotted name: array}``."""
    out: dict[str, np.ndarray] = {}

    def walk(node, name):
        if node is None:
            return
        if isinstance(node, Tensor):
            out[name] = _copy(node)
        elif isinstance(node, np.ndarray) or isinstance(node, (np.generic, float, int)) and not isinstance(node, bool):
            out[name] = np.asarray(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, _join(name, k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, _join(name, i))
        elif isinstance(node, Struct):
            for k, v in vars(node).items():
                walk(v, _join(name, k))
        else:
            raise TypeError(f"loadmodel_: the state holds a {type(node).__name__} at {name or 'the root'!r}; "
                            "a state is made of dicts, lists and arrays (as fx.state returns)")

    walk(st, "")
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> Any:
    """Dotted names back to nested dicts; a level whose keys are all integers becomes a list."""
    if list(flat) == [""]:
        return flat[""]
    root: dict = {}
    for name, arr in flat.items():
        parts = name.split(".")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"checkpoint names clash at {name!r}")
        node[parts[-1]] = arr

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            out = [None] * (max(int(k) for k in node) + 1)
            for k, v in node.items():
                out[int(k)] = v
            return out
        return node

    return listify(root)


def _plan_model_load(model: Any, flat: dict[str, np.ndarray], strict: bool, who: str, filter: Any = None,
                     src_absent: frozenset[str] = frozenset(), what: str = "state") -> list[tuple[Tensor, np.ndarray]]:
    """Check every tensor of `model` against `flat` and return the writes to make (nothing is
    written here, so a mismatch leaves the model untouched). As ``Flux.loadmodel!``: a tensor
    whose source is absent (`src_absent`, a layer built with ``bias=False``) is zeroed, a
    source tensor where the model holds none (its ``bias=False``) is ignored, and a tensor
    tied to several places must get the same values at all of them."""
    dst_absent: set[str] = set()
    entries = _model_entries(model, filter, dst_absent)
    writes = []
    missing = []
    first: dict[int, tuple[str, np.ndarray]] = {}  # a tied tensor's first write, to compare the others with
    for name, t in entries.items():
        if name in flat:
            a = flat[name]
            if tuple(a.shape) != tuple(t.shape):
                raise CheckpointError(f"{who}: shape mismatch at {name!r}: the model has {tuple(t.shape)}, the "
                                      f"{what} has {tuple(a.shape)}")
            if a.dtype.kind not in "fiub":
                raise CheckpointError(f"{who}: the {what}'s {name!r} has dtype {a.dtype}, not a number")
        elif name in src_absent:
            a = np.zeros(t.shape)
        else:
            missing.append((name, t))
            continue
        a = np.ascontiguousarray(a, dtype=t.dtype)
        if id(t) in first:
            other, b = first[id(t)]
            if not np.array_equal(a, b):
                raise CheckpointError(f"{who}: {other!r} and {name!r} are the same (tied) tensor in the model, but "
                                      f"the {what} has different values for them")
            continue
        first[id(t)] = (name, a)
        writes.append((t, a))
    if missing and strict:
        name, t = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{who}: the {what} has no entry {name!r}{more}; the model has a tensor of shape "
                              f"{tuple(t.shape)} there. Is the {what} for this model? (strict=False skips it)")
    extra = [k for k in flat if k not in entries and k not in dst_absent]
    if extra and strict:
        shown = ", ".join(repr(k) for k in extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise CheckpointError(f"{who}: the {what} has entries the model lacks: {shown}. Is the {what} for this "
                              "model? (strict=False ignores them)")
    return writes


def _apply_writes(writes: list[tuple[Tensor, np.ndarray]]) -> None:
    for t, a in writes:
        t.assign_(a)


# ---------------------------------------------------------------- optimiser state

def _opt_leaves(tree: Any) -> Iterator[tuple[str, Any]]:
    """(dotted path, Leaf) for every Leaf of a `setup` tree, in order (shared Leafs at each path)."""
    from fluxrs.optimise.interface import Leaf

    def walk(node, name):
        if node is None or isinstance(node, _ATOMS):
            return
        if isinstance(node, Leaf):
            yield name, node
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                yield from walk(v, _join(name, i))
        elif isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, _join(name, k))
        elif isinstance(node, Struct):
            for k, v in vars(node).items():
                yield from walk(v, _join(name, k))
        else:
            raise TypeError(f"save: opt_state must be the tree returned by fx.setup(rule, model); found a "
                            f"{type(node).__name__} at {name or 'the root'!r}")

    yield from walk(tree, "")


def _rule_desc(rule: Any) -> dict:
    from fluxrs.optimise.rules import OptimiserChain
    if isinstance(rule, OptimiserChain):
        return {"type": "OptimiserChain", "rules": [_rule_desc(r) for r in rule.rules]}
    fields = {}
    for k in getattr(rule, "fields", ()):
        v = getattr(rule, k)
        fields[k] = list(v) if isinstance(v, tuple) else v
    return {"type": type(rule).__name__, "fields": fields}


def _restore_rule(rule: Any, desc: dict, where: str) -> Any:
    """`rule` with the saved hyperparameters (adjust_ may have changed them), after checking
    that it is the same kind of rule."""
    from fluxrs.optimise.rules import _REQUIRED, OptimiserChain
    if type(rule).__name__ != desc.get("type"):
        raise CheckpointError(f"loadmodel_: the checkpoint's optimiser at {where!r} is {desc.get('type')}, the "
                              f"opt_state given uses {rule!r}; set it up with the same rule")
    if isinstance(rule, OptimiserChain):
        subs = desc.get("rules", [])
        if len(subs) != len(rule.rules):
            raise CheckpointError(f"loadmodel_: the checkpoint's OptimiserChain at {where!r} has {len(subs)} rules, "
                                  f"the opt_state given has {len(rule.rules)}")
        new = [_restore_rule(r, d, where) for r, d in zip(rule.rules, subs)]
        if all(a is b for a, b in zip(new, rule.rules)):
            return rule
        out = OptimiserChain(*new)
        out.params = rule.params
        return out
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in desc.get("fields", {}).items()}
    current = {k: getattr(rule, k) for k in getattr(rule, "fields", ())}
    # a hyperparameter added to the rule since the file was written (Scheduler's eta_scale)
    # takes its default, which is how that file's rule behaved
    defaults = dict(zip(type(rule).fields, type(rule).defaults))
    saved.update({k: defaults[k] for k in set(current) - set(saved)
                  if defaults.get(k, _REQUIRED) is not _REQUIRED})
    if set(saved) != set(current):
        raise CheckpointError(f"loadmodel_: the checkpoint's {desc.get('type')} at {where!r} has hyperparameters "
                              f"{sorted(saved)}, the opt_state's has {sorted(current)}")
    if saved == current:
        return rule
    return rule.adjust(**saved)


class _Tensors:
    """Collects the tensors of an encoded optimiser state under fresh names."""

    def __init__(self, prefix: str):
        self.prefix, self.out = prefix, {}

    def add(self, name: str, a: np.ndarray) -> str:
        key = self.prefix + name
        self.out[key] = a
        return key


def _encode_state(s: Any, sink: _Tensors, name: str) -> Any:
    """A JSON description of one Leaf's state; arrays go to `sink` (scalars of a native
    OptState as float64 arrays, other numbers inline)."""
    if isinstance(s, _core.OptState):
        arrays = [[sink.add(f"{name}.arrays.{i}.{j}", _copy(a)) for j, a in enumerate(per)]
                  for i, per in enumerate(s.arrays)]
        scalars = [sink.add(f"{name}.scalars.{i}", np.asarray(per, dtype=np.float64))
                   for i, per in enumerate(s.scalars)]
        return {"OptState": {"arrays": arrays, "scalars": scalars}}
    return _encode_value(s, sink, name + ".state", [0])


def _encode_value(v: Any, sink: _Tensors, name: str, counter: list[int]) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"value": v}
    if isinstance(v, Tensor):
        counter[0] += 1
        return {"tensor": sink.add(f"{name}.{counter[0] - 1}", _copy(v)), "dtype": v.dtype.name}
    if isinstance(v, np.ndarray):
        counter[0] += 1
        return {"array": sink.add(f"{name}.{counter[0] - 1}", np.ascontiguousarray(v))}
    if isinstance(v, np.generic):
        return {"value": v.item()}
    if isinstance(v, (tuple, list)):
        return {"tuple" if isinstance(v, tuple) else "list": [_encode_value(u, sink, name, counter) for u in v]}
    if isinstance(v, _core.OptState):
        raise TypeError(f"save: a nested OptState in the optimiser state at {name!r} is not supported")
    raise TypeError(f"save: cannot save optimiser state of type {type(v).__name__} at {name!r} (tensors, numbers, "
                    "tuples and lists are supported)")


def _decode_value(d: Any, tensors: dict[str, np.ndarray], where: str) -> Any:
    if not isinstance(d, dict) or len(d) not in (1, 2):
        raise CheckpointError(f"loadmodel_: malformed optimiser state at {where!r}")
    if "value" in d:
        return d["value"]
    if "tensor" in d:
        return Tensor(_need(tensors, d["tensor"]), dtype=d.get("dtype", "float32"))
    if "array" in d:
        return np.array(_need(tensors, d["array"]))
    if "tuple" in d:
        return tuple(_decode_value(u, tensors, where) for u in d["tuple"])
    if "list" in d:
        return [_decode_value(u, tensors, where) for u in d["list"]]
    raise CheckpointError(f"loadmodel_: malformed optimiser state at {where!r}")


def _need(tensors: dict[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return tensors[key]
    except KeyError:
        raise CheckpointError(f"the checkpoint has no tensor {key!r}, which its optimiser state refers to; the file "
                              "is damaged or was not written by fluxrs") from None


def _encode_opt(opt_state: Any) -> tuple[dict, dict[str, np.ndarray]]:
    sink = _Tensors(OPT_PREFIX)
    leaves, seen = [], {}
    for path, leaf in _opt_leaves(opt_state):
        if id(leaf) in seen:
            leaves.append({"path": path, "same_as": seen[id(leaf)]})
            continue
        seen[id(leaf)] = path
        leaves.append({"path": path, "rule": _rule_desc(leaf.rule), "frozen": bool(leaf.frozen),
                       "shape": list(leaf.shape), "state": _encode_state(leaf.state, sink, path)})
    return {"version": FORMAT_VERSION, "leaves": leaves}, sink.out


def _plan_opt_load(opt_state: Any, manifest: dict, tensors: dict[str, np.ndarray]) -> list:
    """Check the checkpoint's optimiser state against `opt_state` (a `setup` tree for the same
    model and rule) and return the changes to make, as closures."""
    targets: dict[str, Any] = {}
    for path, leaf in _opt_leaves(opt_state):
        targets[path] = leaf
    saved_paths = {d["path"] for d in manifest.get("leaves", [])}
    for path in targets:
        if path not in saved_paths:
            raise CheckpointError(f"loadmodel_: the checkpoint has no optimiser state for {path!r}, which the "
                                  "opt_state given has; was it saved from a different model?")
    actions = []
    rules: dict[tuple[int, str], Any] = {}
    done: set[int] = set()
    for d in manifest.get("leaves", []):
        path = d["path"]
        if path not in targets:
            raise CheckpointError(f"loadmodel_: the checkpoint has optimiser state for {path!r}, which the opt_state "
                                  "given lacks; was it set up for this model?")
        leaf = targets[path]
        if "same_as" in d:
            if targets.get(d["same_as"]) is not leaf:
                raise CheckpointError(f"loadmodel_: in the checkpoint {path!r} shares its optimiser state with "
                                      f"{d['same_as']!r}; in the opt_state given they are separate")
            continue
        if id(leaf) in done:
            continue
        done.add(id(leaf))
        if tuple(d.get("shape", ())) != tuple(leaf.shape):
            raise CheckpointError(f"loadmodel_: optimiser state shape mismatch at {path!r}: the opt_state has "
                                  f"{tuple(leaf.shape)}, the checkpoint has {tuple(d.get('shape', ()))}")
        key = (id(leaf.rule), json.dumps(d["rule"], sort_keys=True))
        if key not in rules:
            rules[key] = _restore_rule(leaf.rule, d["rule"], path)
        rule = rules[key]
        enc = d["state"]
        if "OptState" in enc:
            st = leaf.state
            if not isinstance(st, _core.OptState):
                raise CheckpointError(f"loadmodel_: the checkpoint's optimiser state at {path!r} is a native OptState, "
                                      f"the opt_state's is {type(st).__name__}")
            arrays = [[_need(tensors, k) for k in per] for per in enc["OptState"]["arrays"]]
            scalars = [[float(v) for v in _need(tensors, k)] for k in enc["OptState"]["scalars"]]
            cur = st.arrays
            if [len(p) for p in cur] != [len(p) for p in arrays] or len(st.scalars) != len(scalars):
                raise CheckpointError(f"loadmodel_: the optimiser state at {path!r} has a different layout in the "
                                      "checkpoint; was it made with the same rule?")
            for per_c, per_a in zip(cur, arrays):
                for c, a in zip(per_c, per_a):
                    if tuple(c.shape) != tuple(a.shape):
                        raise CheckpointError(f"loadmodel_: optimiser state shape mismatch at {path!r}: "
                                              f"{tuple(c.shape)} in the opt_state, {tuple(a.shape)} in the checkpoint")
            writes = [(c, np.ascontiguousarray(a, dtype=c.dtype)) for per_c, per_a in zip(cur, arrays)
                      for c, a in zip(per_c, per_a)]

            def act(leaf=leaf, st=st, writes=writes, scalars=scalars, rule=rule, frozen=d.get("frozen", False)):
                _apply_writes(writes)
                st.scalars = scalars
                leaf.state, leaf.rule, leaf.frozen = st, rule, bool(frozen)
        else:
            value = _decode_value(enc, tensors, path)

            def act(leaf=leaf, value=value, rule=rule, frozen=d.get("frozen", False)):
                leaf.state, leaf.rule, leaf.frozen = value, rule, bool(frozen)
        actions.append(act)
    return actions


# ---------------------------------------------------------------- the file

def _meta_json(meta: dict) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"save: metadata value of type {type(o).__name__} is not JSON-serialisable")
    try:
        return json.dumps(meta, default=default)
    except TypeError as e:
        raise TypeError(f"{e}; metadata (keyword arguments of save) must be numbers, strings, lists, dicts "
                        "or None") from None


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        a = tensors[k]
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync and rename: a
    reader sees the old file or the new one, never a partial one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: cannot write {path!r}: the directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path: str | os.PathLike, model: Any, opt_state: Any = None, **meta: Any) -> None:
    """Save `model` (all its tensors), the optimiser state `opt_state` (from `fx.setup`) if
    given, and `meta` (JSON-serialisable values) to a safetensors file at `path`, atomically.

    Exact resumption: ``fx.save(path, model, opt, epoch=epoch, rng=fx.random.get_state())``
    (what `fx.callbacks.ModelCheckpoint` writes), then
    ``epoch = fx.load_checkpoint(path, model, opt)``.
    """
    from safetensors.numpy import save as st_save

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"save(path, model, ...): path must be a file name, got {type(path).__name__}")
    if isinstance(model, (str, bytes, int, float, complex, bool, type(None))):
        raise TypeError(f"save(path, model, ...): model must be a layer, a container of layers or tensors, or a "
                        f"tensor, got {type(model).__name__}")
    if opt_state is not None and isinstance(opt_state, _ATOMS + (_core.Tensor, np.ndarray)):
        raise TypeError(f"save(path, model, opt_state): opt_state must be the state fx.setup(rule, model) "
                        f"returned, got {type(opt_state).__name__}")
    tensors = {name: _copy(t) for name, t in _model_entries(model).items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "fluxrs_version": __version__,
                "meta": _meta_json(meta)}
    if opt_state is not None:
        manifest, opt_tensors = _encode_opt(opt_state)
        clash = set(opt_tensors) & set(tensors)
        if clash:
            raise ValueError(f"save: the model has tensors named like optimiser state: {sorted(clash)[:3]}")
        tensors.update(opt_tensors)
        metadata["opt"] = json.dumps(manifest)
    metadata["sha256"] = _digest(tensors)
    _write_atomic(path, st_save(tensors, metadata=metadata))


class Checkpoint:
    """What `load` returns: ``.model`` (the model's state, nested as `state` returns it),
    ``.meta`` (the keyword arguments given to `save`), ``.opt`` (the optimiser's arrays by
    dotted name, without the ``opt.`` prefix; None when none was saved), ``.format_version``
    and ``.path``. Pass it (or the path) to `loadmodel_`. ``ckpt["model"]``,
    ``ckpt["meta"]``, ``ckpt["opt"]`` also work."""

    def __init__(self, path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]):
        self.path = path
        self.format_version = int(metadata.get("format_version", "0"))
        self.fluxrs_version = metadata.get("fluxrs_version")
        try:
            self.meta = json.loads(metadata.get("meta", "{}"))
            self._opt_manifest = json.loads(metadata["opt"]) if "opt" in metadata else None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not a fluxrs checkpoint: its metadata is not valid JSON ({e})") from None
        opt_keys = _manifest_keys(self._opt_manifest) if self._opt_manifest is not None else set()
        self._tensors = tensors
        self._model_flat = {k: tensors[k] for k in sorted(tensors, key=_natural) if k not in opt_keys}
        self.model = _unflatten(self._model_flat) if self._model_flat else {}
        self.opt = None if self._opt_manifest is None else \
            {k[len(OPT_PREFIX):]: tensors[k] for k in sorted(opt_keys, key=_natural)}

    def __getitem__(self, key: str) -> Any:
        if key in ("model", "meta", "opt"):
            return getattr(self, key)
        raise KeyError(f"a Checkpoint has 'model', 'meta' and 'opt'; for saved metadata use ckpt.meta[{key!r}]")

    def __repr__(self) -> str:
        n = len(self._model_flat)
        opt = ", with optimiser state" if self._opt_manifest is not None else ""
        return f"Checkpoint({self.path!r}: {n} model tensors{opt}, meta={self.meta!r})"


def _manifest_keys(manifest: Any) -> set[str]:
    """The tensor names an optimiser manifest refers to."""
    out: set[str] = set()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in ("tensor", "array") and isinstance(v, str):
                    out.add(v)
                elif k in ("arrays", "scalars") and isinstance(v, list):  # an OptState's names
                    for u in v:
                        out.update(u if isinstance(u, list) else [u])
                else:
                    walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)

    walk(manifest)
    return out


def _natural(name: str) -> tuple:
    """Sort key putting ``layers.10`` after ``layers.9``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _not_ours(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a fluxrs checkpoint: {why}")


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by `save`. Raises `CheckpointError` (a ValueError) saying
    "... is not a fluxrs checkpoint" for a truncated, damaged or foreign file."""
    from safetensors.numpy import load as st_load

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"load(path): path must be a file name, got {type(path).__name__}")
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise _not_ours(path, f"the file is {len(data)} bytes long, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise _not_ours(path, f"the header claims {n} bytes but the file has only {len(data) - 8} after the length "
                              "field (truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_ours(path, "its header is not valid JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise _not_ours(path, "its header is not a JSON object (not a safetensors file)")
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise _not_ours(path, f"it is a safetensors file without fluxrs metadata (format={metadata.get('format')!r})")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise _not_ours(path, f"bad format_version {metadata.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written in checkpoint format {version} by fluxrs "
                              f"{metadata.get('fluxrs_version')}; this fluxrs reads up to format {FORMAT_VERSION}")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + (max(ends) if ends else 0)
    if len(data) < need:
        raise _not_ours(path, f"the file is truncated: {len(data)} bytes, its header describes {need}")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type
        raise _not_ours(path, f"the safetensors data cannot be read ({e})") from None
    want = metadata.get("sha256")
    if want is not None and _digest(tensors) != want:
        raise _not_ours(path, "its contents do not match the SHA-256 recorded when it was saved (the file is damaged)")
    return Checkpoint(path, tensors, metadata)


def _plan_load(model: Any, src: Any, opt_state: Any, strict: bool,
               caller: str = "loadmodel_", filter: Any = None) -> tuple[Checkpoint | None, list, list]:
    """Check `src` (and `opt_state`) against `model`: the checkpoint (None for a plain state
    or a model), the model writes and the optimiser-state actions. Nothing is changed here."""
    if filter is not None and not callable(filter):
        raise TypeError(f"{caller}: filter must be a function of a child (True to load it), got {filter!r}")
    ckpt = None
    src_absent: set[str] = set()
    what = "state"
    if isinstance(src, (str, os.PathLike)):
        ckpt = load(src)
    elif isinstance(src, Checkpoint):
        ckpt = src
    if ckpt is not None:
        flat = ckpt._model_flat
        who = f"{caller}({ckpt.path!r})"
    else:
        if opt_state is not None:
            raise TypeError("loadmodel_: opt_state can be restored from a checkpoint (a path or fx.load's result), "
                            "not from a model state or a model")
        who = "loadmodel_"
        if _is_model(src):
            flat = {k: _copy(t) for k, t in _model_entries(src, filter, src_absent).items()}
            what = "source model"
        else:
            flat = _flatten_state(src)
    writes = _plan_model_load(model, flat, strict, who, filter, frozenset(src_absent), what)
    actions = []
    if opt_state is not None:
        if ckpt._opt_manifest is None:
            raise CheckpointError(f"{who}: the checkpoint holds no optimiser state (save it with "
                                  "fx.save(path, model, opt_state))")
        actions = _plan_opt_load(opt_state, ckpt._opt_manifest, ckpt._tensors)
    return ckpt, writes, actions


def _commit(writes: list, actions: list) -> None:
    _apply_writes(writes)
    for act in actions:
        act()


def _warn_opt_left(ckpt: Checkpoint, who: str) -> None:
    """A checkpoint's optimiser state that the caller did not ask for: say so (as Python does
    by default, once per calling line), since resuming without it restarts the moments."""
    import warnings
    warnings.warn(f"{who}: {ckpt.path} holds optimiser state, which was not restored (no opt_state given). To "
                  f"resume training, pass it: fx.load_checkpoint(path, model, opt_state) or "
                  f"fx.loadmodel_(model, path, opt_state=opt_state) with opt_state from fx.setup; to load only the "
                  f"weights, pass fx.load(path).model", UserWarning, stacklevel=3)


def loadmodel_(model: Any, src: Any, *, opt_state: Any = None, strict: bool = True, filter: Any = None) -> Any:
    """Write the tensors of `src` into `model` in place (``Flux.loadmodel!(model, src)``).

    `src` is another model of the same architecture, a state (from `state`: nested dicts
    and lists of arrays, or a flat dict with dotted names), a `Checkpoint`, or the path of a
    checkpoint file. Every tensor of the model must have an entry of the same shape (values
    are converted to the model's dtype) and, with `strict`, the source no others; otherwise
    `CheckpointError` names the key and the shapes, and nothing is changed. Only tensors are
    copied: activations, Dropout rates and train/test modes stay. As in Flux, a source
    layer without a bias (``bias=False``) zeroes the model's bias, a source bias is ignored
    where the model has none, and a tensor tied to several places in the model must get
    equal values at all of them (else the error names both places). ``filter(child)``
    false leaves a child out on both sides, e.g. ``filter=lambda c: not isinstance(c,
    fx.Dropout)`` to load a model with Dropout layers into one without. With a checkpoint,
    `opt_state` (from ``fx.setup`` for this model) is restored too: moments, step counts,
    frozen flags and hyperparameters. Returns `model`.

    >>> import fluxrs as fx
    >>> src = fx.Chain(fx.Dense(2, 3, bias=False), fx.Dropout(0.1), fx.Dense(3, 1))
    >>> dst = fx.Chain(fx.Dense(2, 3, bias=fx.ones(3)), fx.Dense(3, 1, fx.relu))
    >>> _ = fx.loadmodel_(dst, src, filter=lambda c: not isinstance(c, fx.Dropout))
    >>> dst[0].bias.tolist(), dst[1].weight.tolist() == src[2].weight.tolist(), dst[1].act is fx.relu
    ([0.0, 0.0, 0.0], True, True)

    A checkpoint that holds optimiser state loaded without `opt_state` loads the weights and
    warns (a UserWarning, once per calling line) that the optimiser state was left out: pass
    ``opt_state=`` to resume training, or the model part alone (``fx.load(path).model``) to
    say that the weights are all you want. The RNG state is not touched: for an exact resume
    use `load_checkpoint`.
    """
    ckpt, writes, actions = _plan_load(model, src, opt_state, strict, filter=filter)
    if ckpt is not None and opt_state is None and ckpt._opt_manifest is not None:
        _warn_opt_left(ckpt, "loadmodel_")
    _commit(writes, actions)
    return model


def load_checkpoint(path: str | os.PathLike | Checkpoint, model: Any, opt_state: Any = None, *,
                    strict: bool = True) -> int:
    """Resume training from a checkpoint in one call: restore `model`'s tensors, the
    optimiser state `opt_state` (from ``fx.setup`` for this model; it must be in the file),
    and this thread's random generator (`fx.random`), then return the epoch to continue
    from: the epoch the checkpoint was saved after (``fx.callbacks.ModelCheckpoint``
    records it; 0 when the file has none). Hand it to ``fx.epochs(n, start=...)``.

    `path` is a file or `fx.load`'s result. Everything is checked before anything changes,
    so an error (`CheckpointError`) leaves model, optimiser and generator as they were. A
    file without RNG state (a plain ``fx.save`` without ``rng=``) loads with a warning that
    the random stream (shuffling, Dropout) is not restored, so the run will not continue
    exactly as it would have; layers or loaders given their own generator (``rng=``) are
    not saved either.

    Build the model, optimiser state and data loader first (they may draw random numbers),
    then call it, as in PyTorch's ``model.load_state_dict(...); opt.load_state_dict(...)``
    or Keras' ``initial_epoch``:

    >>> import fluxrs as fx, tempfile
    >>> def fresh():
    ...     m = fx.Chain(fx.Dense(2, 8, fx.relu), fx.Dropout(0.5), fx.Dense(8, 1))
    ...     return m, fx.setup(fx.Adam(0.01), m)
    >>> data = [(fx.ones((4, 2)), fx.zeros((4, 1)))]
    >>> loss = lambda m, x, y: fx.mse(m(x), y)
    >>> fx.seed_(0); model, opt = fresh()
    >>> ckpt = fx.callbacks.ModelCheckpoint(tempfile.mkdtemp())
    >>> for epoch in fx.epochs(2, callbacks=[ckpt]):      # stopped after epoch 2 of 4
    ...     fx.train_(loss, model, data, opt)
    >>> model, opt = fresh()                               # later, in a new process
    >>> start = fx.load_checkpoint(ckpt.last_path, model, opt)
    >>> start
    2
    >>> for epoch in fx.epochs(4, start=start, callbacks=[ckpt]):
    ...     fx.train_(loss, model, data, opt)
    >>> epoch, fx.load(ckpt.last_path).meta["epoch"]
    (4, 4)
    """
    import warnings

    from fluxrs import random

    ckpt = path if isinstance(path, Checkpoint) else load(path)
    _, writes, actions = _plan_load(model, ckpt, opt_state, strict, "load_checkpoint")
    rng = ckpt.meta.get("rng")
    if rng is not None:
        try:
            random.check_state(rng)
        except ValueError as e:
            raise CheckpointError(f"load_checkpoint({ckpt.path!r}): its RNG state cannot be restored: {e}") from None
    epoch = ckpt.meta.get("epoch")
    epoch = 0 if epoch is None else epoch
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"load_checkpoint({ckpt.path!r}): its epoch {epoch!r} is not a whole number >= 0")
    if opt_state is None and ckpt._opt_manifest is not None:
        _warn_opt_left(ckpt, "load_checkpoint")
    if rng is None:
        warnings.warn(f"load_checkpoint: {ckpt.path} holds no RNG state, so the random stream (shuffling, Dropout) "
                      "is not restored and training will not continue exactly as it would have; save with "
                      "fx.callbacks.ModelCheckpoint, or fx.save(..., rng=fx.random.get_state())", UserWarning,
                      stacklevel=2)
    _commit(writes, actions)
    if rng is not None:
        random.set_state(rng)
    return epoch
