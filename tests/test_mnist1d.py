"""The README's main job, reduced: an MLP on MNIST-1D (generated offline) reaches >= 60%
test accuracy in 20 epochs (the full example, 100 epochs, reaches the paper's ~67%)."""

import pathlib
import sys

import pytest

pytest.importorskip("mnist1d")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import mnist1d_mlp  # noqa: E402


def test_mlp_on_mnist1d_reaches_60_percent():
    data = mnist1d_mlp.load_mnist1d()
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    model, acc = mnist1d_mlp.train(epochs=20, seed=0, progress=False, data=data, verbose=False)
    assert acc >= 0.60, acc
    assert repr(model) == "Chain(Dense(40 => 100, relu), Dense(100 => 100, relu), Dense(100 => 10))  # 15_210 parameters"
