"""A reduced run of examples/mnist1d_table.py: the paper's CNN and GRU really learn MNIST-1D
(real data, generated offline by the `mnist1d` package). The full 8000-step table is the
example itself; here 400 steps each must clear bounds far above chance (10%)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("mnist1d")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import mnist1d_table  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return mnist1d_table.load_mnist1d()


@pytest.mark.parametrize("name,bound", [("cnn", 80.0), ("gru", 50.0), ("logistic", 25.0)])
def test_paper_architectures_learn(data, name, bound):
    row = mnist1d_table.train(name, data, steps=400, seed=0, progress=False)
    assert row["test"] >= bound, row
    assert row["params"] == {"cnn": 5210, "gru": 5098, "logistic": 410}[name]
