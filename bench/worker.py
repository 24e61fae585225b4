"""One benchmark worker: one library, one workload, in its own process (so its peak RSS is its own).

The driver (run.py) talks to it over stdin/stdout, one JSON object per line:
  {"cmd": "check", "steps": 5, "params_out": path}  -> {"losses": [...]} (+ params saved as .npz)
  {"cmd": "warmup", "seconds": s, "min_steps": k}    -> {"step_time": t, "steps": n}
  {"cmd": "chunk", "steps": n}                       -> {"elapsed": s, "steps": n, "rss_mb": current}
  {"cmd": "info"}                                    -> {"peak_rss_mb": ..., "import_rss_mb": ..., ...}
  {"cmd": "quit"}
Anything a library prints goes to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback

THREADS = 2


def pin_threads(n: int = THREADS) -> None:
    """Every library gets the same two threads: environment for their pools, and the process
    pinned to two CPUs (so a bigger machine does not quietly give anyone more)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > n:
            os.sched_setaffinity(0, cpus[:n])
    except (AttributeError, OSError):
        pass


def rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()

    pin_threads()
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (and C-level output) go to stderr
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np

    import adapters
    import workloads

    spec = workloads.specs(args.smoke)[args.workload]
    try:
        if args.lib == "torch":
            import torch
            torch.set_num_threads(THREADS)
        lib_version = adapters.version(args.lib)
        import_rss = rss_now_mb()
        if spec["kind"] == "sgemm":
            a, b = workloads.make_matrices(spec)
            runner = adapters.make(args.lib, spec, mats=(a, b))
        else:
            data, init = workloads.make_data(spec), workloads.make_init(spec)
            runner = adapters.make(args.lib, spec, data=data, init=init)
            del data
        setup_rss = rss_now_mb()
    except Exception as e:  # noqa: BLE001 - reported to the driver
        reply({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        return
    reply({"ok": True, "version": lib_version, "pid": os.getpid()})

    first_chunk_rss = None
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "check":
                if spec["kind"] == "sgemm":
                    c = np.asarray(runner.result(), dtype=np.float64)
                    ref = a.astype(np.float64) @ b.astype(np.float64)
                    reply({"ok": True, "rel_err": float(np.abs(c - ref).max() / np.abs(ref).max())})
                else:
                    losses = runner.trajectory(int(msg["steps"]))
                    if msg.get("params_out"):
                        np.savez(msg["params_out"], *runner.params())
                    runner.reset()
                    reply({"ok": True, "losses": losses})
            elif cmd == "warmup":
                min_steps, seconds = int(msg.get("min_steps", 3)), float(msg["seconds"])
                # the first step alone: compilation (jit) and first-touch allocation stay out of the estimate
                runner.run(1)
                # Then calls of doubling length, as a timed chunk makes them: a call's fixed costs
                # (a compiled train_ records its first step; (f) starts and joins its threads)
                # weigh on one step as much as they do in a chunk, not once per step, which
                # sized those rows' chunks at 0.1-0.35 s instead of ~1 s.
                n, t0 = max(1, min_steps), time.perf_counter()
                while True:
                    t = time.perf_counter()
                    runner.run(n)
                    took = time.perf_counter() - t
                    if took >= seconds / 4 or time.perf_counter() - t0 >= seconds:
                        break
                    n *= 2
                reply({"ok": True, "steps": n, "step_time": took / n})
            elif cmd == "chunk":
                n = int(msg["steps"])
                t0, c0 = time.perf_counter(), time.process_time()
                runner.run(n)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
                rss = rss_now_mb()
                if first_chunk_rss is None:
                    first_chunk_rss = rss
                reply({"ok": True, "steps": n, "elapsed": elapsed, "cpu_s": cpu, "rss_mb": rss})
            elif cmd == "info":
                reply({"ok": True, "peak_rss_mb": peak_rss_mb(), "import_rss_mb": import_rss,
                       "setup_rss_mb": setup_rss, "rss_mb": rss_now_mb(),
                       "rss_growth_mb": (rss_now_mb() - first_chunk_rss) if first_chunk_rss is not None else None,
                       "streams": getattr(runner, "streams", 1)})
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 - reported to the driver
            reply({"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
