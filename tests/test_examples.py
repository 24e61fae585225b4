"""The model zoo in examples/: each script runs (its --smoke mode), and the digits CNN
reaches real accuracy in a short run. The full runs' stated results are in their docs."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.mark.parametrize("script", ["digits_cnn.py", "char_lstm.py", "transformer_sort.py"])
def test_example_runs_in_smoke_mode(script, tmp_path):
    if script == "digits_cnn.py":
        pytest.importorskip("sklearn")
    args = [sys.executable, str(EXAMPLES / script), "--smoke", "--no-progress"]
    if script == "digits_cnn.py":
        args += ["--curves", str(tmp_path / "curves.png")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout or "perplexity" in r.stdout
    if script == "digits_cnn.py":
        assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_cnn_learns_the_digits(tmp_path):
    pytest.importorskip("sklearn")
    import digits_cnn
    model, acc = digits_cnn.train(epochs=4, curves=str(tmp_path / "c.png"), progress=False, verbose=False)
    assert acc >= 0.95  # 360 held-out digits; chance is 0.10


def test_char_lstm_samples_from_its_vocabulary():
    import char_lstm
    model, ppl, chars = char_lstm.train(steps=4, hidden=16, progress=False, verbose=False, every=4)
    assert 1.0 < ppl < len(chars) * 1.5  # an untrained model is near uniform over the vocabulary
    text = char_lstm.sample(model, chars, "The ", 20, np.random.default_rng(0))
    assert text.startswith("The ") and len(text) == 24 and set(text) <= set(chars)


def test_transformer_sorter_output_shape_and_loss_gradient():
    import transformer_sort as ts
    import fluxrs as fx
    fx.seed_(0)
    model = ts.Sorter(dim=16, heads=2, depth=1)
    x, y = ts.make_batch(np.random.default_rng(0), 4)
    assert tuple(model(x).shape) == (4, ts.LENGTH, ts.DIGITS)
    g = fx.gradient(lambda m: ts.loss_fn(m, x, y), model)[0]
    assert g.position is not None and np.isfinite(g.position.numpy()).all()
