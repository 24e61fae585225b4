"""What two cores of this machine give two independent trainers: the ceiling for workload (f).

Workload (f) of bench/run.py asks for two threads training two seed models at >= 1.8x one
thread. Two threads share one interpreter (and its GIL); two *processes* share nothing but the
hardware. So the two-process ratio is the most any threading design could reach here; on a
2-vCPU VM it is often well below 2x (the vCPUs share a physical core's caches and execution
units with each other or with neighbours). This script measures, in interleaved rounds:

    1 process, 1 thread        samples/s of one trainer alone
    2 processes, 1 thread each samples/s of both together (the hardware's ceiling)
    1 process, 2 threads       samples/s of both together (what fluxrs's threading reaches)

    python bench/scaling_ceiling.py [--rounds 5] [--seconds 2] [--workload seed_adam] [--compile]
                                    [--feed tensors|numpy|loader] [--loop train|custom|jit]

Every trainer runs single-threaded kernels (RAYON_NUM_THREADS=1), as the threads workload
does in effect: two trainers on two cores, nothing else.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _trainer(workload: str, compile: bool, feed: str, loop: str):
    sys.path.insert(0, HERE)
    import adapters
    import workloads as W

    spec = W.FULL[workload]
    return adapters.FluxrsTrain(spec, W.make_data(spec), W.make_init(spec), compile, feed, loop), spec["batch"]


def _run_for(trainer, seconds: float) -> int:
    """Steps done in `seconds` (chunks of 50 steps)."""
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainer.run(50)
        steps += 50
    return steps


def worker(workload: str, nthreads: int, seconds: float, compile: bool, feed: str, loop: str) -> None:
    """One process: warm up, then print the samples/s of `nthreads` trainers run together."""
    trainers = [_trainer(workload, compile, feed, loop) for _ in range(nthreads)]
    for t, _ in trainers:
        t.run(200)
    counts = [0] * nthreads

    def body(i):
        counts[i] = _run_for(trainers[i][0], seconds)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=body, args=(i,)) for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(sum(counts) * trainers[0][1] / (time.perf_counter() - t0), flush=True)


def _spawn(a: argparse.Namespace, nthreads: int) -> subprocess.Popen:
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, __file__, "--worker", a.workload, str(nthreads), str(a.seconds),
                             "--feed", a.feed, "--loop", a.loop] + (["--compile"] if a.compile else []),
                            stdout=subprocess.PIPE, text=True, env=env)


def _rate(procs: list[subprocess.Popen]) -> float:
    total = 0.0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a worker failed with exit code {p.returncode}")
        total += float(out.strip().splitlines()[-1])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    ap.add_argument("--workload", default="seed_adam", help="a train workload of bench/workloads.py")
    ap.add_argument("--compile", action="store_true", help="train with train_(..., compile=True)")
    ap.add_argument("--feed", default="tensors", choices=["tensors", "numpy", "loader"],
                    help="batches as fx tensors, numpy arrays, or a DataLoader over numpy arrays")
    ap.add_argument("--loop", default="train", choices=["train", "custom", "jit"],
                    help="train_, or the explicit Training page's gradient + update_ loop (jit: its loss in fx.jit)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), float(a.worker[2]), a.compile, a.feed, a.loop)
        return
    rows = {"1 process": [], "2 processes": [], "2 threads": []}
    for _ in range(a.rounds):  # interleaved, so drifting load hits every row alike
        rows["1 process"].append(_rate([_spawn(a, 1)]))
        rows["2 processes"].append(_rate([_spawn(a, 1) for _ in range(2)]))
        rows["2 threads"].append(_rate([_spawn(a, 2)]))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{a.workload}{', compiled' if a.compile else ''}, {a.loop} loop on {a.feed}, median of {a.rounds} interleaved rounds of {a.seconds:g} s, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    for k, v in med.items():
        print(f"  {k:<12} {v:>10.0f} samples/s   {v / med['1 process']:.2f}x one process")
    print(f"  2 threads reach {med['2 threads'] / med['2 processes']:.0%} of the two-process ceiling")


if __name__ == "__main__":
    main()
