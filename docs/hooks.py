"""MkDocs hook: docstring examples (doctest `>>>` blocks, not fenced) render as Python code.

The docstrings are Markdown with doctest examples in plain text, which tests/test_docstrings.py
runs; without this, Markdown reads `>>>` as three nested block quotes.
"""

import re

from markdown import Extension
from markdown.preprocessors import Preprocessor

_PROMPT = re.compile(r"^(\s*)>>>( |$)")
_FENCE = re.compile(r"^\s*(```|~~~)")


class _DoctestBlocks(Preprocessor):
    def run(self, lines):
        out, fenced, i = [], False, 0
        while i < len(lines):
            line = lines[i]
            if _FENCE.match(line):
                fenced = not fenced
            m = None if fenced else _PROMPT.match(line)
            if not m:
                out.append(line)
                i += 1
                continue
            # a doctest example runs to the next blank line (doctest's own rule)
            indent = m.group(1)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [indent + "```pycon"] + [indent + b for b in block] + [indent + "```", ""]
        return out


class DoctestBlocks(Extension):
    def extendMarkdown(self, md):
        # after pymdownx.snippets (32), before pymdownx.superfences stashes fenced blocks (31.05)
        md.preprocessors.register(_DoctestBlocks(md), "fluxrs_doctest_blocks", 31.5)


def on_config(config):
    # mkdocstrings builds its docstring renderer from this same list when it first renders
    config.markdown_extensions.append(DoctestBlocks())
    return config
