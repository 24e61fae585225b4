"""Every module's docstring examples run and give what they show (fx.distributed's run in
tests/test_distributed.py, with MPI)."""

import doctest
import importlib
import pkgutil

import pytest

import fluxrs

# "fluxrs" itself too: its docstring, and fx.Tensor's (a Rust class whose module is "fluxrs")
MODULES = ["fluxrs"] + [m.name for m in pkgutil.walk_packages(fluxrs.__path__, "fluxrs.")
                        if m.name != "fluxrs.distributed"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0
