"""The model zoo in examples/: each script runs (its --smoke mode; the MPI one under
``mpiexec -n 2``), and the digits CNN and autoencoder learn in a short run. The full runs'
stated results are in their docs."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fluxrs as fx

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
sys.path.insert(0, str(HERE / "mpi"))
from _mpiexec import find as find_mpiexec  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


# the PNG each script draws, by the option that names it
PICTURES = {"digits_cnn.py": "--curves", "digits_autoencoder.py": "--grid"}


@pytest.mark.parametrize("script", ["digits_cnn.py", "digits_autoencoder.py", "char_lstm.py", "transformer_sort.py"])
def test_example_runs_in_smoke_mode(script, tmp_path):
    if script.startswith("digits"):
        pytest.importorskip("sklearn")
    args = [sys.executable, str(EXAMPLES / script), "--smoke", "--no-progress"]
    if script in PICTURES:
        args += [PICTURES[script], str(tmp_path / "picture.png")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout or "perplexity" in r.stdout or "MSE" in r.stdout
    if script in PICTURES:
        assert (tmp_path / "picture.png").read_bytes()[:8] == PNG


def test_mnist1d_mpi_runs_in_smoke_mode_on_two_ranks(tmp_path):
    pytest.importorskip("mnist1d")
    exe, why, _ = find_mpiexec()
    if exe is None:
        pytest.skip(why)
    r = subprocess.run([exe, "-n", "2", sys.executable, str(EXAMPLES / "mnist1d_mpi.py"), "--smoke", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ranks: 2," in r.stdout  # rank 0 prints, once
    assert r.stdout.count("test accuracy:") == 1


def test_autoencoder_without_matplotlib_names_the_extra_before_training(tmp_path):
    pytest.importorskip("sklearn")
    # None in sys.modules makes `import matplotlib` raise ImportError, as when it is not installed
    code = (f"import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = ['x', '--no-progress']; "
            f"runpy.run_path({str(EXAMPLES / 'digits_autoencoder.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0
    assert "ImportError: the digits autoencoder draws its picture with matplotlib" in r.stderr
    assert "pip install 'fluxrs[plot]'" in r.stderr
    assert "train MSE" not in r.stdout  # it failed at once, not after the run


def test_digits_autoencoder_beats_the_mean_image(tmp_path):
    pytest.importorskip("sklearn")
    import digits_autoencoder as ae
    x, x_test = ae.load_digits()
    assert x.shape == (1437, 64) and x_test.shape == (360, 64) and 0 <= x.min() and x.max() <= 1
    model, mse = ae.train(epochs=10, progress=False, verbose=False)
    assert tuple(model["encoder"](x_test).shape) == (360, ae.CODE)
    mean_image = float(((x_test - x.mean(0)) ** 2).mean())
    assert mse < 0.3 * mean_image, (mse, mean_image)  # 10 epochs: 0.016 against 0.074
    with fx.no_grad():
        ae.save_grid(str(tmp_path / "grid.png"), x_test, model(x_test).numpy())
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG


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
    fx.seed_(0)
    model = ts.Sorter(dim=16, heads=2, depth=1)
    x, y = ts.make_batch(np.random.default_rng(0), 4)
    assert tuple(model(x).shape) == (4, ts.LENGTH, ts.DIGITS)
    g = fx.gradient(lambda m: ts.loss_fn(m, x, y), model)[0]
    assert g.position is not None and np.isfinite(g.position.numpy()).all()
