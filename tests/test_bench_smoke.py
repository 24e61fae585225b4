"""The benchmark harness (bench/) in smoke mode, so it cannot rot: tiny sizes, one round, fluxrs and
numpy only, run with the current interpreter. Timings are never asserted; the JSON's shape and the
correctness check are."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")
TIMED = ["seed_descent", "seed_adam", "mlp", "lenet5", "gru", "cnn1d", "sgemm", "threads"]


def _run(args, env=None, timeout=600):
    return subprocess.run([sys.executable, RUN, "--smoke", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "smoke.json"
    p = _run(["--json", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out.read_text())

    meta = report["meta"]
    assert meta["smoke"] is True and meta["rounds"] == 1 and meta["threads_per_library"] == 2
    assert set(report["workloads"]) == set(TIMED)
    for name in TIMED:
        w = report["workloads"][name]
        assert w["status"] == "ok", (name, w)
        assert w["title"] and w["check"]
        assert len(w["libs"]) == {"sgemm": 2, "threads": 10, "seed_descent": 7, "seed_adam": 7}.get(name, 3)
        for lib, r in w["libs"].items():
            for key in ("steps_per_s", "samples_per_s", "peak_rss_mb", "import_rss_mb"):
                assert _positive(r[key]), (name, lib, key, r[key])
            assert len(r["steps_per_s_rounds"]) == 1
            assert r["rss_growth_mb"] is not None
        assert w["ratios"] and all(_positive(v) for v in w["ratios"].values()), w["ratios"]

    seed_rows = ["fluxrs", "fluxrs-compiled", "fluxrs-numpy", "fluxrs-loader", "fluxrs-numpy-custom", "fluxrs-numpy-jit"]
    for name in ("seed_descent", "seed_adam", "mlp", "lenet5", "gru", "cnn1d"):
        w = report["workloads"][name]
        ours = seed_rows if name.startswith("seed") else ["fluxrs", "fluxrs-compiled"]
        assert list(w["libs"]) == ours + ["numpy"]
        assert set(w["ratios"]) == {f"{lib}/numpy" for lib in ours}
        losses = w["check"]["losses"]
        assert all(len(losses[lib]) == 5 for lib in ours + ["numpy"])
    assert "gflops" in report["workloads"]["sgemm"]["libs"]["fluxrs"]
    assert set(report["workloads"]["threads"]["ratios"]) == {
        f"fluxrs{way}-2threads/1thread" for way in ("", "-compiled", "-numpy", "-loader", "-numpy-custom")}
    assert report["workloads"]["threads"]["libs"]["fluxrs-2threads"]["threads_training"] == 2


def test_correctness_check_aborts_on_a_wrong_loss(tmp_path):
    """A fluxrs regression (here: mse off by 1%) aborts the run before anything is timed."""
    (tmp_path / "sitecustomize.py").write_text(
        "import fluxrs\n"
        "_mse = fluxrs.mse\n"
        "fluxrs.mse = lambda yhat, y: _mse(yhat, y) * 1.01\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = tmp_path / "bad.json"
    p = _run(["--workloads", "seed_descent", "--json", str(out)], env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "CORRECTNESS CHECK FAILED" in p.stderr
    report = json.loads(out.read_text())
    assert report["workloads"]["seed_descent"]["status"] == "CHECK FAILED"
    assert "steps_per_s" not in json.dumps(report)
