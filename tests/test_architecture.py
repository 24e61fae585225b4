"""The package's layering: no import cycle, no import of a higher layer, each module importable
with only what it imports loaded. Imports inside functions count: a lazy import hides a cycle
from the interpreter, not from the reader."""

from __future__ import annotations

import ast
import graphlib
import pathlib
import subprocess
import sys
import textwrap

import fluxrs

ROOT = pathlib.Path(fluxrs.__path__[0])

# Lowest first: a module may import its own layer and those below, never one above. A
# package's name covers its submodules; "fluxrs" is the package root only. A new module
# goes here, or the test fails.
LAYERS = [
    ("leaf helpers", ["fluxrs._core", "fluxrs._checks", "fluxrs._signals", "fluxrs._registry", "fluxrs._version",
                      "fluxrs.control", "fluxrs.random"]),
    ("tensors", ["fluxrs.tensor", "fluxrs.ops"]),
    ("trees and gradients", ["fluxrs.functor", "fluxrs.autodiff"]),
    ("model parts", ["fluxrs.activations", "fluxrs.layers", "fluxrs.losses", "fluxrs.optimise", "fluxrs.data",
                     "fluxrs.device", "fluxrs.utils"]),
    ("training", ["fluxrs.compile", "fluxrs.train"]),
    ("around training", ["fluxrs.io", "fluxrs.callbacks", "fluxrs.plugins", "fluxrs.distributed"]),
    ("package root", ["fluxrs"]),
]


def _modules() -> dict[str, pathlib.Path]:
    """Module name -> source file, for every module of the package (packages by __init__.py)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("fluxrs",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    out["fluxrs._core"] = ROOT / "_core.pyi"  # the compiled extension
    return out


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _known(name: str) -> str | None:
    """`name`, or the module it is an attribute of (``fluxrs.functor.Layer`` -> ``fluxrs.functor``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its code."""
    path = MODULES[name]
    if path.suffix != ".py":
        return set()
    package = name if name in PACKAGES else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from a import b`: the module a.b if there is one, else a (b is an attribute)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(t for t in map(_known, targets) if t is not None and t != name)
    return out


GRAPH = {name: _imports(name) for name in MODULES}


def layer_of(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or p != "fluxrs" and name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in {__file__}")


def _cycles() -> list[list[str]]:
    """One cycle through each strongly connected component of GRAPH, as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:  # the shortest way from the smallest name back to itself, in the component
        start = min(comp)
        prev: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            v = todo.pop(0)
            if start in GRAPH[v]:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                out.append(path[::-1] + [start])
                break
            for w in sorted(GRAPH[v] & comp):
                if w not in prev:
                    prev[w] = v
                    todo.append(w)
    return out


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_import_cycle():
    cycles = _cycles()
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer():
    bad = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
           for a in sorted(GRAPH) for b in sorted(GRAPH[a]) if layer_of(b) > layer_of(a)]
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_imports_and_cycles(monkeypatch):
    # the graph counts an import inside a function, and a cycle is named
    assert "fluxrs.plugins._run" in GRAPH["fluxrs"]  # inside _plugin_hooks
    monkeypatch.setitem(GRAPH, "fluxrs.functor", GRAPH["fluxrs.functor"] | {"fluxrs.layers.basic"})
    (cycle,) = _cycles()
    assert cycle[0] == cycle[-1] and {"fluxrs.functor", "fluxrs.layers.basic"} <= set(cycle)
    assert layer_of("fluxrs.layers.basic") > layer_of("fluxrs.functor")


def test_no_silent_except():
    # a bare `except:`, or `except Exception: pass`, hides the errors nobody expected
    bad = []
    for name, path in MODULES.items():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ExceptHandler):
                continue
            broad = node.type is None or isinstance(node.type, ast.Name) and node.type.id in ("Exception",
                                                                                               "BaseException")
            silent = all(isinstance(s, ast.Pass) for s in node.body)
            if node.type is None or broad and silent:
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not bad, "bare or silent broad excepts: " + ", ".join(bad)


def test_each_module_imports_with_only_what_it_imports():
    # One fresh interpreter imports the modules in dependency order. Packages are empty shells
    # until their turn (their __init__ not run), so a module reaching for anything it does not
    # import, directly or through what it imports, fails here.
    order = [m for m in graphlib.TopologicalSorter(GRAPH).static_order() if m != "fluxrs._core"]
    script = textwrap.dedent(f"""
        import importlib, importlib.util, pathlib, sys
        root = pathlib.Path({str(ROOT)!r})
        shells = {{}}
        for name in sorted({sorted(PACKAGES)!r}, key=lambda n: n.count(".")):
            init = root.joinpath(*name.split(".")[1:], "__init__.py")
            spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
            module = sys.modules[name] = importlib.util.module_from_spec(spec)
            if "." in name:
                parent, _, child = name.rpartition(".")
                setattr(sys.modules[parent], child, module)
            shells[name] = spec, module
        for name in {order!r}:
            try:
                if name in shells:
                    spec, module = shells[name]
                    spec.loader.exec_module(module)
                else:
                    importlib.import_module(name)
            except Exception as e:
                sys.exit(f"importing {{name}} in dependency order failed: {{type(e).__name__}}: {{e}}")
        print("imported", len({order!r}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"imported {len(order)}"
