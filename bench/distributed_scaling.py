"""Scaling of fx.distributed on this machine.

    python bench/distributed_scaling.py [--rounds 5] [--models mnist1d,wide] [--bucket-mb none,1]
        samples/s of 1 process (plain fx.train_, all cores) vs P processes under mpiexec
        (fx.distributed.train_, one core each), per-rank batch fixed (weak scaling) and
        global batch fixed (strong scaling), for each gradient bucket size (train_'s
        bucket_mb; none: one allreduce after the backward pass); configurations interleaved,
        medians reported. "comm exposed" is the share of a step spent in the gradient
        allreduce's calls (starting, polling and waiting): the communication the backward
        pass did not hide.
    python bench/distributed_scaling.py --overlap [--models wide] [--bucket-mb none,1] [--rounds 12]
        the share of a step each bucket size leaves exposed, the sizes alternated every few
        steps within one 2-rank job (robust to load from elsewhere; medians over rounds).
    mpiexec -n 2 python bench/distributed_scaling.py --allreduce
        time of one allreduce of a flat float32 buffer: blocking MPI_Allreduce, the polled
        Iallreduce fx.distributed uses, and the same split into 1 MiB / 4 MiB buckets.

Each training measurement is a fresh `mpiexec` of tests/mpi/_train_worker.py (mode bench).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "mpi", "_train_worker.py")


def mpiexec() -> str:
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        raise SystemExit("no mpiexec: pip install 'fluxrs[mpi]'")
    return exe


def one(ranks: int, model: str, batch: int, steps: int, plain: bool = False, bucket_mb: str = "") -> dict:
    env = dict(os.environ, BENCH_MODEL=model, BENCH_BATCH=str(batch), BENCH_STEPS=str(steps), BENCH_BUCKET_MB=bucket_mb)
    if plain:
        env["BENCH_PLAIN"] = "1"
    cmd = [sys.executable, WORKER, "bench", "-"]
    if ranks > 1 or not plain:
        cmd = [mpiexec(), "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def scaling(rounds: int, models: list[str], ranks: int, buckets: list[str]) -> None:
    cfgs = []
    for model in models:
        B, steps = (100, 2000) if model == "mnist1d" else (256, 60)
        cfgs.append((model, "1 process, fx.train_", 1, B, steps, True, ""))
        for mb in buckets:
            how = "one allreduce" if mb == "none" else f"{mb} MiB buckets"
            cfgs += [(model, f"{ranks} ranks, batch {B}/rank (weak), {how}", ranks, B, steps, False, mb),
                     (model, f"{ranks} ranks, batch {B // ranks}/rank (strong), {how}", ranks, B // ranks, steps,
                      False, mb)]
    res = {c: [] for c in cfgs}
    waits = {c: [] for c in cfgs}
    for _ in range(rounds):
        for c in cfgs:  # interleaved, so that load from elsewhere hits all alike
            r = one(c[2], c[0], c[3], c[4], c[5], c[6])
            res[c].append(r["samples_per_s"])
            waits[c].append(r["allreduce_ms"] / r["step_ms"])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {rounds} rounds, medians (min..max)")
    base = {}
    for c in cfgs:
        med = statistics.median(res[c])
        if c[2] == 1:
            base[c[0]] = med
        eff = med / (c[2] * base[c[0]]) if c[2] > 1 else 1.0
        speed = med / base[c[0]]
        print(f"{c[0]:8s} {c[1]:56s} {med:10.0f} samples/s ({min(res[c]):.0f}..{max(res[c]):.0f})  "
              f"speed-up {speed:4.2f}  efficiency {100 * eff:5.1f}%  comm exposed "
              f"{100 * statistics.median(waits[c]):4.1f}% ({100 * min(waits[c]):.1f}..{100 * max(waits[c]):.1f})")


def overlap(rounds: int, models: list[str], ranks: int, buckets: list[str]) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {ranks} ranks; medians of {rounds} "
          "alternations")
    for model in models:
        B = 100 if model == "mnist1d" else 256
        env = dict(os.environ, BENCH_MODEL=model, BENCH_BATCH=str(B), BENCH_BUCKETS=",".join(buckets),
                   BENCH_ROUNDS=str(rounds))
        out = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, WORKER, "overlap", "-"], capture_output=True,
                             text=True, env=env, check=True).stdout
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                how = "one allreduce" if r["bucket_mb"] == "none" else f"{r['bucket_mb']} MiB buckets"
                print(f"{model:8s} batch {B}/rank, {how:18s} step {r['step_ms']:8.2f} ms  comm exposed "
                      f"{r['exposed_ms']:7.3f} ms = {100 * r['exposed_share']:4.1f}% "
                      f"({100 * r['exposed_share_min']:.1f}..{100 * r['exposed_share_max']:.1f})")


def allreduce_bench() -> None:
    import fluxrs as fx
    b = fx.distributed.init()
    MPI, comm = b.MPI, b.comm
    for n in (2, 15_210 + 8, 1_000_000, 25_000_000):
        buf = np.ones(n, np.float32)
        rows = []
        for label, fn in [
            ("blocking Allreduce", lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)),
            ("polled Iallreduce", lambda: b.allreduce_(buf, "bench")),
            ("4 MiB buckets", lambda: b.allreduce_many_([buf[i:i + 2 ** 20] for i in range(0, n, 2 ** 20)], "bench")),
            ("1 MiB buckets", lambda: b.allreduce_many_([buf[i:i + 2 ** 18] for i in range(0, n, 2 ** 18)], "bench")),
        ]:
            reps = max(5, min(2000, int(2e8 // n)))
            fn()
            b.barrier()
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                t.append((time.perf_counter() - t0) / reps)
            rows.append((label, min(t)))
        if b.rank == 0:
            for label, sec in rows:
                print(f"{n:>11,d} floats ({4 * n / 2**20:7.2f} MiB)  {label:20s} {1e6 * sec:10.1f} us  "
                      f"{4 * n / sec / 1e9:6.2f} GB/s (buffer bytes / time)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--models", default="mnist1d,wide")
    p.add_argument("--bucket-mb", default="none,1", help="bucket sizes in MiB to compare; none: one allreduce; "
                   "with --overlap, a size ending in 'late' (1late) updates only after the last bucket is summed")
    p.add_argument("--allreduce", action="store_true")
    p.add_argument("--overlap", action="store_true")
    a = p.parse_args()
    if a.allreduce:
        allreduce_bench()
    elif a.overlap:
        overlap(a.rounds, a.models.split(","), a.ranks, a.bucket_mb.split(","))
    else:
        scaling(a.rounds, a.models.split(","), a.ranks, a.bucket_mb.split(","))


if __name__ == "__main__":
    main()
