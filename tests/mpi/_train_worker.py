"""Worker for tests/test_distributed.py, run as ``mpiexec -n 2 python tests/mpi/_train_worker.py MODE OUTDIR``.

MODE
  equiv  train a small model (WORKER_HIDDEN units wide, default 16) in three ways (explicit
         Descent, explicit Adam, implicit Descent) with fx.distributed.train_ on shards; each
         rank writes its final parameters to OUTDIR/{kind}_rank{r}.npz, rank 0 the bytes of
         gradients it allreduced to OUTDIR/info.json. Ranks start from different parameters
         and optimiser state: only the broadcast from rank 0 makes them agree.
  buckets  train a deeper model twice from the same start, with one allreduce after the
         backward pass (bucket_mb=None) and with one bucket per parameter overlapping it;
         writes OUTDIR/buckets_rank{r}.npz and, on rank 0, OUTDIR/buckets_{bucket_mb}.json
         with how many allreduces each step started before its backward pass ended.
  save   train RESUME_AT epochs of Adam on global batches of GLOBAL_BATCH, and save a checkpoint
         with the data order (OUTDIR/ckpt.safetensors).
  resume  in a job of any size, load that checkpoint into a fresh model and train to epoch
         EPOCHS on the same global batches; each rank writes its parameters and optimiser
         state to OUTDIR/resumed{size}_rank{r}.npz.
  die    rank 1 exits abruptly (os._exit(1)) in its 3rd step; rank 0 keeps training (with
         train_(bucket_mb=WORKER_BUCKET_MB) when set, as hang).
  hang   rank 1 stops (sleeps) in its 3rd step; rank 0 keeps training.
  bench  (not a test) samples/s of the MNIST-1D-sized MLP: BENCH_BATCH per rank, BENCH_STEPS steps.
  overlap  (not a test) exposed communication per bucket size, alternated within one job.

The functions below are also imported by the test, to train the single-process reference.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

import numpy as np

import fluxrs as fx

N, D, K = 96, 6, 2
GLOBAL_BATCH = 24
EPOCHS = 5
SHUFFLE_SEED = 7
KINDS = ("descent", "adam", "implicit")


def problem():
    rng = np.random.default_rng(123)
    X = rng.normal(size=(N, D)).astype(np.float32)
    W = rng.normal(size=(D, K))
    Y = (np.tanh(X @ W) + 0.1 * rng.normal(size=(N, K))).astype(np.float32)
    return X, Y


def build(seed: int, hidden: int = 16):
    fx.seed_(seed)
    return fx.Chain(fx.Dense(D, hidden, fx.tanh), fx.Dense(hidden, K))


def loss(m, x, y):
    return fx.mse(m(x), y)


def rule(kind: str):
    return fx.Adam(0.01) if kind == "adam" else fx.Descent(0.1)


def train(kind: str, rank: int, size: int, distributed: bool, hidden: int = 16):
    """Train and return the model. With size 1 and distributed=False: the reference, on
    batches of GLOBAL_BATCH in the same order as the ranks' batches together."""
    X, Y = problem()
    model = build(seed=1 + rank, hidden=hidden)  # ranks start apart; the broadcast from rank 0 fixes that
    loader = fx.DataLoader((X, Y), batchsize=GLOBAL_BATCH // size, shuffle=True)
    sharded = fx.distributed.shard(loader, rank=rank, size=size, seed=SHUFFLE_SEED)
    step = fx.distributed.train_ if distributed else fx.train_
    if kind == "implicit":
        ps = fx.params(model)
        opt = rule(kind)
        for _ in range(EPOCHS):
            step(lambda x, y: loss(model, x, y), ps, sharded, opt)
        return model
    opt = fx.setup(rule(kind), model)
    if rank != 0:  # put this rank's optimiser state (moments, step count) out of line too
        fx.train_(loss, model, [(3 * X[:8], Y[:8])], opt)
    for _ in range(EPOCHS):
        step(loss, model, sharded, opt)
    return model


def params(model) -> list[np.ndarray]:
    return [np.array(p.numpy()) for p in fx.params(model)]


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    t = os.environ.get("WORKER_TIMEOUT", "20")
    timeout = None if t == "none" else float(t)
    b = fx.distributed.init(timeout=timeout)
    r, n = b.rank, b.size
    if mode == "equiv":
        hidden = int(os.environ.get("WORKER_HIDDEN", "16"))
        sent = [0]  # bytes of gradients summed over ranks
        for name in ("allreduce_", "iallreduce_"):
            def counting(buf, what="allreduce", f=getattr(b, name)):
                if what.startswith("gradient allreduce"):
                    sent[0] += buf.nbytes
                return f(buf, what)
            setattr(b, name, counting)
        for kind in KINDS:
            np.savez(os.path.join(out, f"{kind}_rank{r}.npz"), *params(train(kind, r, n, True, hidden)))
        if r == 0:
            with open(os.path.join(out, "info.json"), "w") as f:
                json.dump({"size": n, "rayon": os.environ.get("RAYON_NUM_THREADS"), "gradient_bytes": sent[0]}, f)
    elif mode in ("save", "resume"):
        elastic(mode, out, r, n)
    elif mode == "buckets":
        buckets(out, r, n)
    elif mode in ("die", "hang"):
        X, Y = problem()
        model = build(seed=1)
        opt = fx.setup(fx.Descent(0.01), model)
        calls = [0]

        def faulty(m, x, y):
            calls[0] += 1
            if r == 1 and calls[0] == 3:
                print(f"rank 1: {'exiting' if mode == 'die' else 'stopping'} at step 3", file=sys.stderr, flush=True)
                if mode == "die":
                    os._exit(1)
                time.sleep(3600)
            return loss(m, x, y)

        loader = fx.distributed.shard(fx.DataLoader((X, Y), batchsize=4, shuffle=True))
        mb = os.environ.get("WORKER_BUCKET_MB")  # e.g. 1e-6: a bucket per parameter, started during the backward pass
        kw = {"bucket_mb": float(mb)} if mb else {}
        for _ in range(10_000):
            fx.distributed.train_(faulty, model, loader, opt, **kw)
        print("rank", r, "finished training, which it should not have", flush=True)
    elif mode == "bench":
        bench(out, r, n)
    elif mode == "overlap":
        bench_overlap(r)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


RESUME_AT = 2


def opt_arrays(opt) -> dict[str, np.ndarray]:
    """The optimiser state's arrays (moments, and step counts as the powers of beta)."""
    from fluxrs.io import _encode_opt
    return _encode_opt(opt)[1]


def elastic(mode: str, out: str, r: int, n: int) -> None:
    X, Y = problem()
    model = build(seed=1 + r)  # a fresh model: what the checkpoint holds must replace it
    opt = fx.setup(fx.Adam(0.01), model)
    loader = fx.distributed.shard(fx.DataLoader((X, Y), batchsize=GLOBAL_BATCH // n, shuffle=True),
                                  seed=SHUFFLE_SEED if mode == "save" else None)
    path = os.path.join(out, "ckpt.safetensors")
    start = 0 if mode == "save" else fx.distributed.load_checkpoint(path, model, opt, loader=loader)
    for epoch in fx.distributed.epochs(RESUME_AT if mode == "save" else EPOCHS, start=start):
        fx.distributed.train_(loss, model, loader, opt)
    if mode == "save":
        fx.distributed.save(path, model, opt, loader=loader, epoch=RESUME_AT, rng=fx.random.get_state())
    else:
        np.savez(os.path.join(out, f"resumed{n}_rank{r}.npz"), *params(model), **opt_arrays(opt))


def buckets(out: str, r: int, n: int) -> None:
    X, Y = problem()
    b = fx.distributed.backend()
    log: list[str] = []
    plain_iallreduce, plain_call = b.iallreduce_, fx.distributed.GradAverager.__call__

    def iallreduce_(buf, what="allreduce"):
        log.append("start")
        return plain_iallreduce(buf, what)

    def call(self, xs, gs, loss, **kw):
        log.append("reduce")
        try:
            return plain_call(self, xs, gs, loss, **kw)
        finally:
            log.append("done")

    b.iallreduce_ = iallreduce_
    fx.distributed.GradAverager.__call__ = call
    got = {}
    for bucket_mb in (None, 1e-6):  # 1e-6 MiB: every parameter a bucket of its own
        fx.seed_(1 + r)
        model = fx.Chain(fx.Dense(D, 16, fx.tanh), fx.Dense(16, 16, fx.relu), fx.Dense(16, K))
        opt = fx.setup(fx.Adam(0.01), model)
        loader = fx.distributed.shard(fx.DataLoader((X, Y), batchsize=GLOBAL_BATCH // n, shuffle=True), seed=SHUFFLE_SEED)
        del log[:]
        for _ in range(EPOCHS):
            fx.distributed.train_(loss, model, loader, opt, bucket_mb=bucket_mb)
        for j, p in enumerate(params(model)):
            got[f"{bucket_mb}_{j}"] = p
        # allreduces started before each step's reduce call, i.e. during its backward pass
        early = [step.split("reduce")[0].split().count("start") for step in " ".join(log).split("done")[:-1]]
        if r == 0:
            with open(os.path.join(out, f"buckets_{bucket_mb}.json"), "w") as f:
                json.dump({"early": early, "starts": log.count("start")}, f)
    np.savez(os.path.join(out, f"buckets_rank{r}.npz"), **got)


def _time_communication(b) -> list[float]:
    """Wrap the backend's allreduce calls so that ``waited[0]`` adds up the time spent in them on
    the training thread (not the progress thread's polls, which run during the backward pass):
    the communication the backward pass did not hide."""
    waited = [0.0]

    def timed(f):
        def call(*a):
            t = time.perf_counter()
            try:
                return f(*a)
            finally:
                waited[0] += time.perf_counter() - t
        return call

    b.allreduce_, b.iallreduce_, b.wait_ = map(timed, (b.allreduce_, b.iallreduce_, b.wait_))
    return waited


def _bench_mlp(d_in: int, hidden: int):
    """The benchmarks' MLP (d_in-hidden-hidden-10, relu) with Adam(1e-3), the same on every rank."""
    fx.seed_(0)
    model = fx.Chain(fx.Dense(d_in, hidden, fx.relu), fx.Dense(hidden, hidden, fx.relu), fx.Dense(hidden, 10))
    return model, fx.setup(fx.Adam(1e-3), model)


def bench_overlap(r: int) -> None:
    """Exposed communication of each bucket size (BENCH_BUCKETS, e.g. "none,1"), alternating
    them every 5 steps within one job, so that load from elsewhere hits all alike (separate
    jobs minutes apart on a shared machine differ by more than what is measured). Model and
    batch as `bench`; BENCH_ROUNDS alternations. Used by bench/distributed_scaling.py --overlap."""
    import statistics
    bs = int(os.environ.get("BENCH_BATCH", "256"))
    wide = os.environ.get("BENCH_MODEL", "wide") == "wide"
    d_in, hidden = (784, 1024) if wide else (40, 100)
    rng = np.random.default_rng(r)
    X = rng.normal(size=(bs, d_in)).astype(np.float32)
    Y = fx.onehotbatch(rng.integers(0, 10, bs), range(10)).numpy()
    model, opt = _bench_mlp(d_in, hidden)
    lossf = lambda m, x, y: fx.logitcrossentropy(m(x), y)  # noqa: E731
    b = fx.distributed.backend()
    waited = _time_communication(b)
    names = os.environ.get("BENCH_BUCKETS", "none,1").split(",")
    avgs = {}
    for m in names:  # "1": 1 MiB buckets; "1late": the same, every update after the last bucket is in
        avgs[m] = fx.distributed.GradAverager(b, None if m == "none" else float(m.removesuffix("late")))
        avgs[m].updates_early = not m.endswith("late")
    got = {m: ([], []) for m in names}
    data = [(X, Y)] * (5 if wide else 200)
    for rnd in range(int(os.environ.get("BENCH_ROUNDS", "12")) + 1):
        for m, avg in avgs.items():
            fx.distributed.barrier()
            waited[0] = 0.0
            t = time.perf_counter()
            fx.distributed.train_(lossf, model, data, opt, reducer=avg)
            if rnd > 0:  # the first round warms up
                got[m][0].append((time.perf_counter() - t) / len(data))
                got[m][1].append(waited[0] / len(data))
    if r == 0:
        for m, (step, wait) in got.items():
            share = [w / s for w, s in zip(wait, step)]
            print(json.dumps({"model": "wide" if wide else "mnist1d", "batch_per_rank": bs, "bucket_mb": m,
                              "step_ms": 1e3 * statistics.median(step), "exposed_ms": 1e3 * statistics.median(wait),
                              "exposed_share": statistics.median(share), "exposed_share_min": min(share),
                              "exposed_share_max": max(share)}), flush=True)


def bench(out: str, r: int, n: int) -> None:
    """Throughput of the MNIST-1D MLP (40-100-100-10, Adam, logitcrossentropy; BENCH_MODEL=mnist1d)
    or of a wide MLP (784-1024-1024-10; BENCH_MODEL=wide) on random data; per-rank batch
    BENCH_BATCH, at least BENCH_STEPS steps; BENCH_BUCKET_MB sets train_(bucket_mb=...) ("none": None). Used
    by bench/distributed_scaling.py."""
    bs = int(os.environ.get("BENCH_BATCH", "100"))
    steps = int(os.environ.get("BENCH_STEPS", "2000"))
    wide = os.environ.get("BENCH_MODEL", "mnist1d") == "wide"
    d_in, hidden, nb = (784, 1024, 8) if wide else (40, 100, 40)
    rng = np.random.default_rng(r)
    X = rng.normal(size=(bs * nb, d_in)).astype(np.float32)
    Y = fx.onehotbatch(rng.integers(0, 10, bs * nb), range(10)).numpy()
    model, opt = _bench_mlp(d_in, hidden)
    loader = fx.distributed.shard(fx.DataLoader((X, Y), batchsize=bs, shuffle=True), rank=0, size=1, seed=0)
    lossf = lambda m, x, y: fx.logitcrossentropy(m(x), y)  # noqa: E731
    train = fx.distributed.train_ if os.environ.get("BENCH_PLAIN") != "1" else fx.train_
    waited = _time_communication(fx.distributed.backend())
    mb = os.environ.get("BENCH_BUCKET_MB", "")
    if train is not fx.train_ and mb:
        train = functools.partial(train, bucket_mb=None if mb == "none" else float(mb))
    train(lossf, model, loader, opt)  # warm up (and broadcast)
    fx.distributed.barrier()
    waited[0] = 0.0
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        train(lossf, model, loader, opt)
        done += len(loader)
    dt = time.perf_counter() - t0
    fx.distributed.barrier()
    if r == 0:
        res = {"model": "wide" if wide else "mnist1d", "ranks": n, "batch_per_rank": bs, "steps": done, "seconds": dt,
               "samples_per_s": n * bs * done / dt, "step_ms": 1e3 * dt / done,
               "rayon": os.environ.get("RAYON_NUM_THREADS"), "allreduce_ms": 1e3 * waited[0] / done, "bucket_mb": mb}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
