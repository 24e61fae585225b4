"""fluxrs benchmark driver: every workload, every library, same run, interleaved.

    python bench/run.py            # full run: fluxrs vs PyTorch (eager) vs JAX (jit), numpy BLAS for sgemm
    python bench/run.py --smoke    # tiny sizes, one round, fluxrs + numpy only (what the test suite runs)

Use bench/run.sh for the full run: it builds fluxrs (release) and installs the peers into bench/.venv.

For each workload the driver starts one worker process per library (bench/worker.py), so that peak
RSS is per library. Before anything is timed, every library trains the same few steps from the
same init on the same data and the loss trajectories and the parameter updates must agree with an
independent numpy reference (a mismatch aborts the run: a fluxrs regression cannot hide behind a
speed-up). Then each worker warms up (jit compilation, first-touch allocation) and the timed rounds
run interleaved: round r runs one chunk of ~--chunk-seconds on every library in turn. Reported:
median steps/s and samples/s over the rounds, peak RSS, RSS growth over the timed rounds, and the
fluxrs/peer ratios (samples/s), as a table on stdout and as JSON (bench/results/latest.json).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import workloads  # noqa: E402

ORDER = ["seed_descent", "seed_adam", "mlp", "lenet5", "gru", "cnn1d", "sgemm", "threads"]


class CheckFailed(SystemExit):
    pass


class Worker:
    def __init__(self, python, lib, workload, smoke):
        cmd = [python, os.path.join(HERE, "worker.py"), "--lib", lib, "--workload", workload]
        if smoke:
            cmd.append("--smoke")
        self.lib, self.workload = lib, workload
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True,
                                     bufsize=1)
        hello = self._read()
        self.version = hello.get("version")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            raise RuntimeError(f"worker {self.lib}/{self.workload} exited (rc={rc}) without answering")
        msg = json.loads(line)
        if not msg.get("ok"):
            raise RuntimeError(f"worker {self.lib}/{self.workload}: {msg.get('error')}\n{msg.get('traceback', '')}")
        return msg

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------ correctness check


def check_train(workers, ref, name, spec, steps, rtol, ptol, tmp):
    """Loss trajectories and parameter updates of every library vs the numpy reference."""
    results = {}
    for w in [ref] + workers:
        path = os.path.join(tmp, f"{name}-{w.lib}.npz")
        losses = w.ask(cmd="check", steps=steps, params_out=path)["losses"]
        with np.load(path) as z:
            params = [z[f"arr_{i}"] for i in range(len(z.files))]
        results[w.lib] = (losses, params)
    init = workloads.make_init(spec)
    ref_losses, ref_params = results["numpy"]
    ref_delta = np.concatenate([(p - p0).ravel() for p, p0 in zip(ref_params, init)]).astype(np.float64)
    report, bad = {"reference": "numpy (hand-written backprop, float32)", "steps": steps, "rtol": rtol,
                   "update_tol": ptol, "losses": {"numpy": ref_losses}}, []
    for w in workers:
        losses, params = results[w.lib]
        report["losses"][w.lib] = losses
        delta = np.concatenate([(p - p0).ravel() for p, p0 in zip(params, init)]).astype(np.float64)
        upd_err = float(np.linalg.norm(delta - ref_delta) / max(np.linalg.norm(ref_delta), 1e-30))
        loss_err = float(np.max(np.abs(np.array(losses) - np.array(ref_losses)) / np.abs(np.array(ref_losses))))
        report.setdefault("max_loss_rel_err", {})[w.lib] = loss_err
        report.setdefault("update_rel_err", {})[w.lib] = upd_err
        if not np.allclose(losses, ref_losses, rtol=rtol, atol=1e-7) or not upd_err <= ptol:
            bad.append(f"  {w.lib:>8}: losses {fmt_list(losses)} (max rel err {loss_err:.2e}), "
                       f"parameter-update rel err {upd_err:.2e}")
    if bad:
        raise CheckFailed(
            f"\nCORRECTNESS CHECK FAILED for workload {name!r}: after {steps} steps from the same init on the "
            f"same data, these libraries disagree with the numpy reference (rtol {rtol} on losses, "
            f"{ptol} on the parameter update):\n     numpy: losses {fmt_list(ref_losses)}\n" + "\n".join(bad) +
            "\nNo timings were taken: a wrong result is not a fast result.")
    return report


def check_threads(workers, name, steps, rtol):
    """Two threads training two identical models concurrently must each follow the one-thread trajectory."""
    traj = {w.lib: w.ask(cmd="check", steps=steps)["losses"] for w in workers}
    one = traj["fluxrs-1thread"][0]
    bad = [f"  {lib} thread {i}: {fmt_list(t)}" for lib in traj for i, t in enumerate(traj[lib])
           if not np.allclose(t, one, rtol=rtol, atol=1e-7)]
    if bad:
        raise CheckFailed(f"\nCORRECTNESS CHECK FAILED for workload {name!r}: models trained in two threads at "
                          f"once diverge from the same model trained alone:\n  alone:    {fmt_list(one)}\n" +
                          "\n".join(bad))
    return {"steps": steps, "rtol": rtol, "losses": traj}


def check_sgemm(workers, name, tol=1e-4):
    errs = {w.lib: w.ask(cmd="check")["rel_err"] for w in workers}
    bad = {k: v for k, v in errs.items() if not v <= tol}
    if bad:
        raise CheckFailed(f"\nCORRECTNESS CHECK FAILED for workload {name!r}: max |C - C64| / max |C64| above {tol}: "
                          f"{bad}")
    return {"max_rel_err_vs_float64": errs, "tol": tol}


def fmt_list(xs):
    return "[" + ", ".join(f"{x:.6g}" for x in xs) + "]"


# ------------------------------------------------------------------------------------- timing


def busy_seconds():
    """CPU seconds spent busy on the whole machine so far (all CPUs; /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_chunk(w, steps):
    """One timed chunk, and how much CPU the rest of the machine used meanwhile: busy CPU seconds
    of the whole machine minus the worker's own, as a share of the two CPUs the worker runs on."""
    b0 = busy_seconds()
    out = w.ask(cmd="chunk", steps=steps)
    b1 = busy_seconds()
    if b0 is not None and b1 is not None:
        out["others_cpu_share"] = max(0.0, (b1 - b0) - out["cpu_s"]) / (2 * out["elapsed"])
    return out



def bench_workload(name, spec, libs, args):
    smoke = args.smoke
    workers, ref = [], None
    tmp = tempfile.mkdtemp(prefix="fluxrs-bench-")
    try:
        for lib in libs:
            workers.append(Worker(args.python, lib, name, smoke))
        if spec["kind"] == "train":
            ref = next((w for w in workers if w.lib == "numpy"), None) or Worker(args.python, "numpy", name, smoke)
            ptol = args.update_tol if args.update_tol is not None else spec.get("update_tol", 5e-2)
            check = check_train([w for w in workers if w is not ref], ref, name, spec, args.check_steps, args.rtol,
                                ptol, tmp)
        elif spec["kind"] == "threads":
            check = check_threads(workers, name, args.check_steps, args.rtol)
        else:
            check = check_sgemm(workers, name)
        if ref is not None and ref not in workers:
            ref.close()

        est = {}
        for w in workers:
            est[w.lib] = w.ask(cmd="warmup", seconds=args.warmup_seconds, min_steps=2)["step_time"]
        nsteps = {lib: max(1, int(round(args.chunk_seconds / max(t, 1e-9)))) for lib, t in est.items()}
        rates = {w.lib: [] for w in workers}
        growth = {w.lib: [] for w in workers}
        others = {w.lib: [] for w in workers}
        for r in range(args.rounds):
            k = r % len(workers)
            for w in workers[k:] + workers[:k]:  # interleaved, starting lib rotated each round
                out = timed_chunk(w, nsteps[w.lib])
                rates[w.lib].append(out["steps"] / out["elapsed"])
                growth[w.lib].append(out["rss_mb"])
                if "others_cpu_share" in out:
                    others[w.lib].append(out["others_cpu_share"])
        soak = {}
        if args.soak_steps and spec["kind"] in ("train", "threads"):
            for w in workers:  # memory must stay flat: buffers reused, tapes freed
                per, rss = max(1, args.soak_steps // 10), []
                t0 = time.perf_counter()
                for _ in range(10):
                    rss.append(w.ask(cmd="chunk", steps=per)["rss_mb"])
                soak[w.lib] = {"steps": 10 * per, "rss_mb": rss, "growth_mb": rss[-1] - rss[0],
                               "seconds": time.perf_counter() - t0}
                print(f"[bench]   soak {w.lib}: {10 * per} steps, RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB", flush=True)
        infos = {w.lib: w.ask(cmd="info") for w in workers}
        versions = {w.lib: w.version for w in workers}
    finally:
        for w in workers + ([ref] if ref is not None else []):
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)

    per_step = workloads.samples_per_step(spec)
    res = {}
    for lib in libs:
        streams = infos[lib]["streams"]
        med = statistics.median(rates[lib])
        res[lib] = {
            "version": versions[lib],
            "steps_per_s": med * streams,  # every thread's steps count
            "samples_per_s": med * streams * per_step,
            "steps_per_s_rounds": [x * streams for x in rates[lib]],
            "steps_per_chunk": nsteps[lib],
            "warmup_step_time_s": est[lib],
            "peak_rss_mb": infos[lib]["peak_rss_mb"],
            "import_rss_mb": infos[lib]["import_rss_mb"],
            "rss_after_rounds_mb": growth[lib],
            "rss_growth_mb": infos[lib]["rss_growth_mb"],
            "threads_training": streams,
            # other processes' CPU use during the timed chunks (median share of two CPUs): above ~0.1
            # the numbers are disturbed, PyTorch's per-op OpenMP barriers most of all
            "others_cpu_share": statistics.median(others[lib]) if others[lib] else None,
        }
        if lib in soak:
            res[lib]["soak"] = soak[lib]
        if spec["kind"] == "sgemm":
            res[lib]["gflops"] = med * 2 * spec["n"] ** 3 / 1e9
    ours = [lib for lib in libs if lib.startswith("fluxrs")]
    ratios = {f"{base}/{lib}": res[base]["samples_per_s"] / res[lib]["samples_per_s"]
              for base in ours for lib in libs if not lib.startswith("fluxrs")}
    if spec["kind"] == "threads":
        ratios = {f"{lib[:-len('2threads')]}2threads/1thread": res[lib]["samples_per_s"] / res[lib.replace("2threads", "1thread")]["samples_per_s"]
                  for lib in libs if lib.endswith("2threads")}
    return {"title": workloads.title(spec), "status": "ok", "kind": spec["kind"], "spec": public_spec(spec),
            "libs": res, "ratios": ratios, "check": check}


def public_spec(spec):
    return {k: v for k, v in spec.items() if k not in ("title", "kind", "label")}


# ------------------------------------------------------------------------------------ reporting


def meta(args):
    def git(*a):
        try:
            return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    cpu, flags = None, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu is None:
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--verify", "-q", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(), "interpreter": args.python, "machine": platform.machine(),
        "cpu": cpu, "avx512f": " avx512f" in flags, "avx2": " avx2" in flags, "cpus": os.cpu_count(),
        "threads_per_library": 2, "smoke": args.smoke, "rounds": args.rounds, "chunk_seconds": args.chunk_seconds,
        "warmup_seconds": args.warmup_seconds, "check_steps": args.check_steps,
        "loadavg_at_start": loadavg(),
    }


def loadavg():
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def busy_warning():
    """Other processes on the CPUs spoil every number (OpenMP's 2-thread barriers most of all)."""
    la = loadavg()
    if la and la[0] > 0.5:
        return (f"WARNING: load average {la[0]:.2f} before the run: other processes are using the CPUs, "
                "the timings (and the ratios) are unreliable")
    return None


def print_table(report, out=sys.stdout):
    w = out.write
    w("\n" + "=" * 119 + "\n")
    w(f"fluxrs benchmark  {report['meta']['date']}  commit {str(report['meta']['git_commit'])[:10]}"
      f"{' (dirty)' if report['meta']['git_dirty'] else ''}  cpu: {report['meta']['cpu']}\n")
    w(f"2 threads per library; median of {report['meta']['rounds']} interleaved rounds of "
      f"~{report['meta']['chunk_seconds']} s; warm-up and jit compilation excluded\n")
    if report["meta"].get("warning"):
        w(report["meta"]["warning"] + "\n")
    w("others CPU: what other processes used of the two CPUs during the timed chunks (median); "
      "'!' above 10%: that row is disturbed\n")
    w("=" * 119 + "\n")
    hdr = (f"{'workload':<14}{'library':<26}{'steps/s':>12}{'samples/s':>14}{'peak RSS MB':>13}"
           f"{'import MB':>11}{'RSS growth':>12}{'others CPU':>12}\n")
    w(hdr)
    w("-" * 119 + "\n")
    for name in ORDER:
        r = report["workloads"].get(name)
        if r is None:
            continue
        if r["status"] != "ok":
            w(f"{name:<14}{r['status']}\n")
            continue
        first = True
        for lib, v in r["libs"].items():
            extra = f"  ({v['gflops']:.1f} GFLOP/s)" if "gflops" in v else ""
            g, o = v["rss_growth_mb"], v.get("others_cpu_share")
            busy = f"{100 * o:.0f}%{'!' if o > 0.1 else ''}" if o is not None else "-"
            w(f"{name if first else '':<14}{lib:<26}{v['steps_per_s']:>12.1f}{v['samples_per_s']:>14.0f}"
              f"{v['peak_rss_mb']:>13.0f}{v['import_rss_mb']:>11.0f}{(f'{g:+.1f}' if g is not None else '-'):>12}"
              f"{busy:>12}{extra}\n")
            first = False
        w(f"{'':<14}" + "   ".join(f"{k} = {v:.2f}x" for k, v in r["ratios"].items()) + "\n")
        for lib, v in r["libs"].items():
            if "soak" in v:
                s = v["soak"]
                w(f"{'':<14}soak {lib}: {s['steps']} steps, RSS {s['rss_mb'][0]:.0f} -> {s['rss_mb'][-1]:.0f} MB "
                  f"({s['growth_mb']:+.1f})\n")
        w("-" * 119 + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round, fluxrs + numpy only (no peers)")
    ap.add_argument("--workloads", default=",".join(ORDER), help=f"comma-separated subset of {ORDER}")
    ap.add_argument("--libs", default=None,
                    help="comma-separated libraries for the train workloads (default fluxrs,torch,jax; smoke: "
                         "fluxrs,numpy); fluxrs must come first")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 7; smoke 1)")
    ap.add_argument("--chunk-seconds", type=float, default=None, help="length of one timed chunk (default 1.0)")
    ap.add_argument("--warmup-seconds", type=float, default=None, help="warm-up per worker (default 1.0)")
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--rtol", type=float, default=1e-3, help="loss-trajectory tolerance of the correctness check")
    ap.add_argument("--update-tol", type=float, default=None,
                    help="relative tolerance on the parameter update, params after the check steps minus init "
                         "(default per workload: 5e-2 MLP, 1e-3 the others)")
    ap.add_argument("--soak-steps", type=int, default=0,
                    help="after timing, run this many more steps per library and report RSS growth "
                         "(the issue's flat-memory target uses 10000 on mlp)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--python", default=sys.executable, help="interpreter for the worker processes")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 7
    if args.chunk_seconds is None:
        args.chunk_seconds = 0.05 if args.smoke else 1.0
    if args.warmup_seconds is None:
        args.warmup_seconds = 0.02 if args.smoke else 1.0

    specs = workloads.specs(args.smoke)
    peers = dict(workloads.SMOKE_PEERS if args.smoke else workloads.PEERS)
    if args.libs:
        peers["train"] = args.libs.split(",")
        if peers["train"][0] != "fluxrs":
            ap.error("--libs: fluxrs must come first (ratios are fluxrs / peer)")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in specs]
    if unknown:
        ap.error(f"unknown workloads {unknown}; known: {ORDER}")

    report = {"meta": meta(args), "workloads": {}}
    warn = busy_warning()
    if warn:
        print(f"[bench] {warn}", flush=True)
        report["meta"]["warning"] = warn
    t_start = time.perf_counter()
    for name in [n for n in ORDER if n in names]:
        spec = specs[name]
        if spec["kind"] == "todo":
            print(f"[bench] {name}: {workloads.title(spec)}: not yet available ({spec['why']}) -- TODO", flush=True)
            report["workloads"][name] = {"title": workloads.title(spec), "status": f"not yet available: {spec['why']}"}
            continue
        libs = peers["train"] if args.libs and spec["kind"] == "train" else workloads.libs(spec, args.smoke)
        print(f"[bench] {name}: {workloads.title(spec)} -- {', '.join(libs)}", flush=True)
        t0 = time.perf_counter()
        try:
            report["workloads"][name] = bench_workload(name, spec, libs, args)
        except CheckFailed as e:
            print(e.code, file=sys.stderr, flush=True)
            report["workloads"][name] = {"title": workloads.title(spec), "status": "CHECK FAILED"}
            report["error"] = str(e.code)
            write_json(report, args.json)
            return 2
        print(f"[bench] {name}: done in {time.perf_counter() - t0:.1f} s "
              + "  ".join(f"{k} = {v:.2f}x" for k, v in report["workloads"][name]["ratios"].items()), flush=True)
    report["meta"]["total_seconds"] = time.perf_counter() - t_start
    print_table(report)
    write_json(report, args.json)
    print(f"[bench] JSON written to {args.json}")
    return 0


def write_json(report, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
