"""Every public name has a place in the API reference, so a new one without docs fails here.

The reference pages (docs/reference) document objects with mkdocstrings directives:
``::: fluxrs.io.save`` for one object, or ``::: fluxrs.io`` with ``options: members: [...]``
for a module's members (an explicit list: mkdocstrings renders each listed member, with or
without a docstring). This reads the Markdown and resolves the names by import; it needs
neither mkdocs nor a docs build (``mkdocs build --strict`` in .ci/run checks the rendering).

The guides' examples run here too: the ```python blocks of a page in order, in one
namespace, as a reader would run them; ```py blocks (those needing a GPU or mpiexec) are
shown, not run.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re
import types
import warnings

import pytest

import fluxrs

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
REFERENCE = DOCS / "reference"

# a directive and the indented option lines under it
DIRECTIVE = re.compile(r"^::: *(\S+)[ \t]*\n((?:(?:[ \t]+\S.*)?\n)*)", re.M)


def _members(options: str) -> list[str] | None:
    m = re.search(r"^[ \t]*members:[ \t]*(.*)$", options, re.M)
    if m is None:
        return None
    value, rest = m.group(1).strip(), options[m.end():]
    if value.startswith("["):  # a flow list, possibly over several lines
        text = (value + rest)[1:]
        return [s.strip().strip("'\"") for s in text[:text.index("]")].split(",") if s.strip()]
    if not value:  # a block list: the "- name" lines that follow
        items = re.match(r"(?:\n[ \t]*-[ \t]*\S+)*", rest).group(0)
        return [s.strip().lstrip("-").strip().strip("'\"") for s in items.split("\n") if s.strip()]
    return []  # members: false (the module's docstring only); true is not counted either


def _resolve(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _documented() -> dict[str, list]:
    """Every documented name, with the objects it is documented as (``ADAM`` is Adam's alias,
    so both names are listed for the same class)."""
    seen: dict[str, list] = {}
    for page in sorted(REFERENCE.rglob("*.md")):
        for m in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            path, members = m.group(1), _members(m.group(2))
            try:
                obj = _resolve(path)
                if members is not None:
                    pairs = [(name, getattr(obj, name)) for name in members]
                else:
                    pairs = [(path.rsplit(".", 1)[-1], obj)]
            except (ImportError, AttributeError) as e:
                pytest.fail(f"{page.relative_to(REFERENCE)}: `::: {path}` does not resolve: {e}")
            for name, o in pairs:
                seen.setdefault(name, []).append(o)
    return seen


@pytest.fixture(scope="module")
def documented():
    return _documented()


def _missing(module, names, documented):
    return [n for n in names if not any(o is getattr(module, n) for o in documented.get(n, []))]


def test_every_public_name_of_fluxrs_is_in_the_reference(documented):
    names = [n for n in dir(fluxrs)
             if not n.startswith("_") and not isinstance(getattr(fluxrs, n), types.ModuleType)]
    assert len(names) > 200
    missing = _missing(fluxrs, names, documented)
    assert not missing, f"add these to a page under docs/reference (a `:::` directive or its members): {missing}"


PUBLIC_MODULES = [m.name for m in pkgutil.walk_packages(fluxrs.__path__, "fluxrs.")
                  if not any(part.startswith("_") for part in m.name.split("."))]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_a_submodules_all_is_in_the_reference(name, documented):
    # the submodules users reach (fx.losses.huber_loss, fx.callbacks.EarlyStopping, ...)
    module = importlib.import_module(name)
    names = [n for n in getattr(module, "__all__", [])
             if not isinstance(getattr(module, n), types.ModuleType)]
    missing = _missing(module, names, documented)
    assert not missing, f"{name}.__all__ has names no page under docs/reference documents: {missing}"


def test_the_directive_parser_reads_both_list_forms():
    flow = "    options:\n      members: [\n        a, b,\n        c\n      ]\n"
    block = "    options:\n      members:\n        - a\n        - b\n"
    assert _members(flow) == ["a", "b", "c"]
    assert _members(block) == ["a", "b"]
    assert _members("    options:\n      members: false\n") == []
    assert _members("    options:\n      heading_level: 3\n") is None


PAGES = [DOCS / "index.md"] + sorted((DOCS / "guides").glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_guide_examples_run(page, tmp_path, monkeypatch):
    blocks = PYTHON_BLOCK.findall(page.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    fluxrs.seed_(0)
    namespace: dict = {"__name__": "__guide__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning means the example teaches a wrong habit
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.relative_to(DOCS)}, block {i + 1}", "exec"), namespace)
