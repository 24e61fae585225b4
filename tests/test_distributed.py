"""fx.distributed: sharding, the gradient-reducer hook, and (under mpiexec -n 2) data-parallel
training equal to full-batch training, and jobs that fail, not hang, when a rank dies."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fluxrs as fx
from fluxrs import distributed as dist

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "mpi" / "_train_worker.py"
sys.path.insert(0, str(HERE / "mpi"))
import _train_worker as worker  # noqa: E402
from _mpiexec import find as _mpi  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_world():
    dist.shutdown()
    yield
    dist.shutdown()


# ---------------------------------------------------------------- without MPI

def test_import_does_not_load_mpi4py():
    code = "import sys, fluxrs as fx; fx.distributed.shard; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _loader(n=10, bs=2, shuffle=False):
    return fx.DataLoader(np.arange(float(n)), batchsize=bs, shuffle=shuffle)


@pytest.mark.parametrize("n,size,drop_last", [(10, 4, False), (10, 4, True), (12, 3, False), (3, 4, False),
                                              (7, 2, True)])
def test_shard_partitions_each_epoch(n, size, drop_last):
    base = _loader(n, bs=2, shuffle=True)
    shards = [dist.shard(base, rank=r, size=size, seed=5, drop_last=drop_last) for r in range(size)]
    assert len({len(s) for s in shards}) == 1  # every rank makes the same number of steps
    orders = []
    for epoch in range(3):
        idx = [s.indices(epoch) for s in shards]
        assert len({len(i) for i in idx}) == 1
        got = np.concatenate(idx)
        if drop_last:
            assert len(got) == (n // size) * size and len(set(got.tolist())) == len(got)
        else:
            assert set(got.tolist()) == set(range(n)) and len(got) == -(-n // size) * size
        orders.append(np.stack(idx, 1).reshape(-1).tolist())  # the epoch's order, rank-interleaved
    assert orders[0] != orders[1]  # reshuffled per epoch...
    again = dist.shard(base, rank=0, size=size, seed=5, drop_last=drop_last)
    assert again.indices(1).tolist() == shards[0].indices(1).tolist()  # ...from the shared seed


def test_shard_steps_together_make_the_global_batch():
    # at step j the ranks' batches are observations j*B..(j+1)*B-1 of the epoch's order (B = size * batchsize)
    X = np.arange(24.0)
    full = dist.shard(fx.DataLoader(X, batchsize=6, shuffle=True), rank=0, size=1, seed=3)
    parts = [dist.shard(fx.DataLoader(X, batchsize=2, shuffle=True), rank=r, size=3, seed=3) for r in range(3)]
    for _ in range(2):  # two epochs: iterating advances the epoch on every loader alike
        for big, *small in zip(full, *parts):
            assert sorted(big.tolist()) == sorted(sum((s.tolist() for s in small), []))


def test_shard_without_shuffle_strides_and_pads():
    got = [[b.tolist() for b in dist.shard(_loader(10, 2), rank=r, size=4, seed=0)] for r in range(4)]
    assert got == [[[0.0, 4.0], [8.0]], [[1.0, 5.0], [9.0]], [[2.0, 6.0], [0.0]], [[3.0, 7.0], [1.0]]]
    s = dist.shard(_loader(10, 2), rank=1, size=4, seed=0)
    assert len(s) == 2 and "rank 1 of 4" in repr(s)
    s.set_epoch(4)
    assert s.epoch == 4


def test_shard_needs_a_seed_or_a_world():
    with pytest.raises(ValueError, match="seed"):
        dist.shard(_loader(), rank=0, size=2)
    with pytest.raises(RuntimeError, match="init"):
        dist.shard(_loader(), seed=1)
    with pytest.raises(ValueError, match="rank"):
        dist.shard(_loader(), rank=2, size=2, seed=1)
    with pytest.raises(TypeError, match="DataLoader"):
        dist.shard([1, 2, 3], rank=0, size=1, seed=1)
    dist.init("local")
    s = dist.shard(_loader())  # rank 0 of 1, a drawn seed
    assert s.size == 1 and len(s) == 5


def test_grad_reducer_hook_sees_params_grads_loss():
    fx.seed_(0)
    m = fx.Dense(3, 1)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32)
    seen = []

    def halve(xs, gs, loss):
        seen.append(([tuple(p.shape) for p in xs], [g is not None for g in gs], loss))
        return [None if g is None else g * 0.5 for g in gs], loss * 2

    w0 = m.weight.numpy().copy()
    ref = fx.Dense(3, 1)
    ref.weight.assign_(w0), ref.bias.assign_(m.bias.numpy())
    with fx.train.grad_reducer(halve):
        fx.train_(lambda m, x, y: fx.mse(m(x), y), m, [(x, y)], fx.setup(fx.Descent(0.2), m))
    fx.train_(lambda m, x, y: fx.mse(m(x), y), ref, [(x, y)], fx.setup(fx.Descent(0.1), ref))
    assert seen[0][0] == [(1, 3), (1,)] and seen[0][1] == [True, True]
    np.testing.assert_allclose(m.weight.numpy(), ref.weight.numpy(), rtol=1e-6)  # 0.2 * g/2 == 0.1 * g
    # outside the block: no reducer
    fx.train_(lambda m, x, y: fx.mse(m(x), y), m, [(x, y)], fx.setup(fx.Descent(0.2), m))
    assert len(seen) == 1


def test_grad_reducer_loss_is_the_one_checked():
    m = fx.Dense(2, 1)
    opt = fx.setup(fx.Descent(0.1), m)
    with fx.train.grad_reducer(lambda xs, gs, loss: (gs, float("nan"))):
        with pytest.raises(fx.NonFiniteLossError):
            fx.train_(lambda m, x: m(x).sum(), m, [np.ones((1, 2), np.float32)], opt)


def test_grad_reducer_called_when_loss_is_not_a_tensor():
    m = fx.Dense(2, 1)
    calls = []
    with fx.train.grad_reducer(lambda xs, gs, loss: (calls.append(gs) or gs, loss)):
        fx.train_(lambda m, x: 1.5, m, [0, 1], fx.setup(fx.Descent(0.1), m))
    assert calls == [[None, None], [None, None]]


def test_local_backend_training_equals_plain_training():
    X, Y = worker.problem()
    a, b = worker.build(1), worker.build(1)
    oa, ob = fx.setup(fx.Adam(0.01), a), fx.setup(fx.Adam(0.01), b)
    dist.init("local")
    assert (dist.rank(), dist.size(), dist.is_root()) == (0, 1, True)
    for _ in range(3):
        dist.train_(worker.loss, a, fx.DataLoader((X, Y), batchsize=16), oa)
        fx.train_(worker.loss, b, fx.DataLoader((X, Y), batchsize=16), ob)
    for p, q in zip(fx.params(a), fx.params(b)):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert dist.broadcast_(a, oa) is a
    assert dist.allreduce(2.5) == 2.5
    dist.barrier()


def test_checkpoint_records_the_data_order_and_warns_of_other_batches(tmp_path):
    dist.init("local")
    X, Y = worker.problem()
    m = worker.build(1)
    opt = fx.setup(fx.Adam(0.01), m)
    loader = dist.shard(fx.DataLoader((X, Y), batchsize=8, shuffle=True), seed=11)
    dist.train_(worker.loss, m, loader, opt)
    dist.save(tmp_path / "c.safetensors", m, opt, loader=loader, epoch=1, rng=fx.random.get_state())
    fresh = worker.build(2)
    other = dist.shard(fx.DataLoader((X, Y), batchsize=8, shuffle=True), seed=5)
    assert dist.load_checkpoint(tmp_path / "c.safetensors", fresh, fx.setup(fx.Adam(0.01), fresh), loader=other) == 1
    assert (other.seed, other.epoch) == (11, 1)
    assert fresh[0].weight.tolist() == m[0].weight.tolist()
    with pytest.warns(UserWarning, match="global batches of 8"):
        dist.load_checkpoint(tmp_path / "c.safetensors", fresh, fx.setup(fx.Adam(0.01), fresh),
                             loader=dist.shard(fx.DataLoader((X, Y), batchsize=6)))
    with pytest.raises(Exception, match="nope"):
        dist.load_checkpoint(tmp_path / "nope.safetensors", fresh)


class _TwinBackend(dist.Backend):
    """A pretend world of two ranks: the other rank's buffer is `twin(buf)`."""

    name = "twin"

    def __init__(self, twin, timeout=None):
        self.rank, self.size, self.timeout, self.twin = 0, 2, timeout, twin

    def allreduce_(self, buf, what="allreduce"):
        buf += self.twin(buf.copy())

    def broadcast_(self, buf, root=0, what="broadcast"):
        pass


@pytest.mark.parametrize("bucket_mb", [None, 1e-6])
def test_grad_averager_means_and_presence(bucket_mb):
    xs = [fx.zeros((2, 3)), fx.zeros((3,)), fx.zeros((1,))]
    mine = [fx.Tensor(np.full((2, 3), 4.0, np.float32)), None, None]
    theirs = [fx.Tensor(np.full((2, 3), 2.0, np.float32)), fx.Tensor(np.full((3,), 6.0, np.float32)), None]
    other = dist.GradAverager(dist.LocalBackend(), bucket_mb)
    other(xs, theirs, 3.0)  # the other rank's buffers, packed as this rank's will be
    bufs = iter([bk.buf.copy() for bk in other._layout(xs).buckets])
    assert len(other._layout(xs).buckets) == (1 if bucket_mb is None else 3)
    avg = dist.GradAverager(_TwinBackend(lambda buf: next(bufs)), bucket_mb)
    gs, loss = avg(xs, mine, 1.0)
    assert gs[0].tolist() == [[3.0] * 3] * 2 and gs[1].tolist() == [3.0] * 3 and gs[2] is None
    assert loss == 2.0


def test_grad_averager_starts_buckets_in_order_as_they_complete():
    xs = [fx.zeros((4,)) for _ in range(3)]
    gs = [fx.Tensor(np.full((4,), i + 1.0, np.float32)) for i in range(3)]
    started = []

    class Recording(_TwinBackend):
        def iallreduce_(self, buf, what="allreduce"):
            started.append(float(buf[0]))  # which gradient the bucket starts with
            return super().iallreduce_(buf, what)

    avg = dist.GradAverager(Recording(lambda b: b), bucket_mb=1e-6)  # a bucket per parameter, in reverse order
    on_final = avg.begin(xs, 0.5)
    on_final(1, gs[1])
    assert started == []  # bucket 1 is complete, but bucket 0 (the last parameter) goes first
    on_final(2, gs[2])
    assert started == [3.0, 2.0]
    on_final(0, gs[0])
    assert started == [3.0, 2.0]  # the last bucket also carries the loss: sent after the backward pass
    out, loss = avg(xs, gs, 0.5)
    assert started == [3.0, 2.0, 1.0] and loss == 0.5
    assert [g.tolist() for g in out] == [[i + 1.0] * 4 for i in range(3)]
    assert dist.GradAverager(Recording(lambda b: b), bucket_mb=None).begin(xs, 0.5) is None  # nothing to overlap
    with pytest.raises(ValueError, match="bucket_mb"):
        dist.GradAverager(Recording(lambda b: b), bucket_mb=0)


class _DeferredTwin(_TwinBackend):
    """`_TwinBackend` whose sums complete only when waited for, recording the waits."""

    def __init__(self, twin, log):
        super().__init__(twin)
        self.log = log

    def iallreduce_(self, buf, what="allreduce"):
        return buf

    def wait_(self, handles, what="allreduce"):
        for buf in handles:  # a handle waited for twice would be summed twice
            self.log.append(("summed", float(buf[0])))  # which gradient the bucket starts with
            self.allreduce_(buf, what)


def _early_world(twin):
    """Three parameters in three buckets (reverse order: 2, 1, 0), a deferred twin rank, and
    an averager whose early updates are logged."""
    xs = [fx.zeros((4,)) for _ in range(3)]
    gs = [fx.Tensor(np.full((4,), i + 1.0, np.float32)) for i in range(3)]
    log: list = []
    backend = _DeferredTwin(twin, log)
    avg = dist.GradAverager(backend, bucket_mb=1e-6)
    return xs, gs, log, avg


def test_grad_averager_updates_earlier_buckets_while_the_last_is_in_flight():
    xs, gs, log, avg = _early_world(lambda b: b)  # the twin rank has the same gradients
    on_final = avg.begin(xs, 0.5)
    for i in (2, 1, 0):
        on_final(i, gs[i])

    def update(idx, grads):
        log.append(("update", idx, [g.tolist() for g in grads]))

    out, loss = avg(xs, gs, 0.5, update=update)
    # the first two buckets (parameters 2 and 1) are applied as soon as each is summed, before
    # the last one (parameter 0, with the presence flags) is waited for
    assert log == [("summed", 3.0), ("update", [2], [[3.0] * 4]), ("summed", 2.0), ("update", [1], [[2.0] * 4]),
                   ("summed", 1.0)]
    assert out[0].tolist() == [1.0] * 4 and out[1] is None and out[2] is None and loss == 0.5


def test_grad_averager_updates_nothing_early_when_out_of_step_or_not_finite():
    def behind(buf):
        other = buf.copy()
        if buf[0] == 3.0:  # the first bucket (parameter 2), with the loss and the step tag
            other[-1] -= 1
        return other

    def nan_loss(buf):
        other = buf.copy()
        if buf[0] == 3.0:
            other[-2] = np.nan
        return other

    xs, gs, log, avg = _early_world(behind)
    with pytest.raises(dist.DesyncError, match="out of step"):
        avg(xs, gs, 0.5, update=lambda idx, g: log.append("update"))
    assert "update" not in log
    xs, gs, log, avg = _early_world(nan_loss)
    out, loss = avg(xs, gs, 0.5, update=lambda idx, g: log.append("update"))
    assert "update" not in log and np.isnan(loss) and all(g is not None for g in out)  # train_ raises on the loss


def test_grad_averager_detects_ranks_out_of_step():
    def behind(buf):
        other = buf.copy()
        other[-1] -= 1  # the other rank is one step behind
        return other

    avg = dist.GradAverager(_TwinBackend(behind))
    with pytest.raises(dist.DesyncError, match="out of step"):
        avg([fx.zeros((2,))], [fx.ones((2,))], 0.5)


def test_backends_by_name_and_errors():
    with pytest.raises(ValueError, match="no distributed backend named 'nope'"):
        dist.init("nope")
    dist.register_backend("twin", lambda timeout=None: _TwinBackend(lambda b: b, timeout))
    b = dist.init("twin", timeout=7)
    assert isinstance(b, _TwinBackend) and b.timeout == 7 and dist.size() == 2
    assert dist.init() is b
    with pytest.raises(RuntimeError, match="already initialised"):
        dist.init("local")
    dist.shutdown()
    with pytest.raises(RuntimeError, match="init"):
        dist.rank()
    with pytest.raises(ValueError, match="timeout"):
        dist.init("local", timeout=-1)


def test_root_only_callbacks():
    class Logger:
        root_only = True

    class Monitor:
        pass

    assert dist._root_only(Logger()) and not dist._root_only(Monitor())
    assert dist._root_only(fx.callbacks.CSVLogger("x.csv")) and not dist._root_only(fx.callbacks.EarlyStopping())


# ---------------------------------------------------------------- under mpiexec

def _launch(mode: str, out: pathlib.Path, extra=(), timeout_s=20, limit=120, env=None):
    exe, why, _ = _mpi()
    if exe is None:
        pytest.skip(why)
    env = dict(os.environ, WORKER_TIMEOUT=str(timeout_s), PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.monotonic()
    try:
        r = subprocess.run([exe, *extra, "-n", "2", sys.executable, str(WORKER), mode, str(out)], capture_output=True,
                           text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec {mode} did not finish within {limit} s (a hang): {e.stdout!r} {e.stderr!r}")
    return r, time.monotonic() - t0


def test_two_ranks_on_shards_equal_one_process_on_full_batches(tmp_path):
    r, _ = _launch("equiv", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "info.json").read_text())["size"] == 2
    for kind in worker.KINDS:
        ranks = [np.load(tmp_path / f"{kind}_rank{k}.npz") for k in (0, 1)]
        p0, p1 = ([z[f] for f in z.files] for z in ranks)
        for a, b in zip(p0, p1):
            np.testing.assert_array_equal(a, b, err_msg=f"{kind}: ranks differ")
        ref = worker.params(worker.train(kind, rank=0, size=1, distributed=False))
        start = worker.params(worker.build(1))
        assert len(ref) == len(p0) == 4
        for a, b, s in zip(p0, ref, start):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{kind}: 2 ranks != full batch")
            assert np.abs(a - s).max() > 1e-2  # it trained


# "1e-6": a bucket per parameter, most of them started during the backward pass
@pytest.mark.parametrize("bucket_mb", ["", "1e-6"])
def test_a_rank_that_exits_fails_the_job_fast(tmp_path, bucket_mb):
    # MPICH's launcher kills the survivors when a rank exits; -disable-auto-cleanup lets them
    # report it: the launcher signals them, and the one waiting in the allreduce says so.
    hydra = _mpi()[2]
    r, dt = _launch("die", tmp_path, extra=("-disable-auto-cleanup",) if hydra else (), timeout_s=10,
                    env={"WORKER_BUCKET_MB": bucket_mb})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert dt < 60, dt
    assert "finished training" not in out
    if hydra:
        assert "PeerFailure: rank 0 of 2" in out and "step 3" in out and "aborting the job" in out, out


def test_a_rank_that_exits_under_default_launcher_fails_the_job(tmp_path):
    r, dt = _launch("die", tmp_path, timeout_s=10)
    assert r.returncode != 0 and dt < 60, (r.returncode, dt, r.stdout + r.stderr)
    assert "finished training" not in r.stdout


@pytest.mark.parametrize("bucket_mb", ["", "1e-6"])
def test_a_hung_rank_times_out_with_a_clear_message(tmp_path, bucket_mb):
    r, dt = _launch("hang", tmp_path, timeout_s=5, env={"WORKER_BUCKET_MB": bucket_mb})
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert 5 <= dt < 60, dt
    assert "CommTimeout: rank 0 of 2 waited 5 s for the gradient allreduce of step 3" in out, out
    assert "aborting the job" in out


def test_docstring_examples():
    import doctest
    res = doctest.testmod(dist, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted >= 3


def test_overlapped_buckets_give_bit_identical_results(tmp_path):
    r, _ = _launch("buckets", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [np.load(tmp_path / f"buckets_rank{k}.npz") for k in (0, 1)]
    names = [f for f in ranks[0].files if f.startswith("None_")]
    assert len(names) == 6
    for f in names:
        tiny = f.replace("None_", "1e-06_")
        for z in ranks:
            np.testing.assert_array_equal(z[f], z[tiny], err_msg=f"{f}: overlapped buckets differ")
        np.testing.assert_array_equal(ranks[0][f], ranks[1][f], err_msg=f"{f}: ranks differ")
    one = json.loads((tmp_path / "buckets_None.json").read_text())
    many = json.loads((tmp_path / "buckets_1e-06.json").read_text())
    steps = worker.EPOCHS * worker.N // worker.GLOBAL_BATCH
    assert one["early"] == [0] * steps and one["starts"] == steps
    # six parameters, six buckets: five start during the backward pass, the last (with the
    # step's loss and tag) after it
    assert many["early"] == [5] * steps and many["starts"] == 6 * steps


# ---------------------------------------------------------------- two hosts: network namespaces

NETNS_PREFIX = "fxdist-"  # this test's namespaces are fxdist-<pid>-a and fxdist-<pid>-b
HOSTS = ("198.18.0.1", "198.18.0.2")  # the benchmarking range (RFC 2544): reachable only through the test's veth

# Hydra's ssh launcher runs `BOOT -x HOST COMMAND`; this starts COMMAND in HOST's namespace
# instead, and nowhere else.
BOOT = """#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done
case "$1" in
  %s) ns=%s ;;
  %s) ns=%s ;;
  *) echo "netns boot: unknown host $1" >&2; exit 1 ;;
esac
shift
exec ip netns exec "$ns" sh -c "$*"
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _delete_stale_namespaces() -> None:
    """Namespaces of this test left by a run that died (its pid is gone); a concurrent run's
    stay."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NETNS_PREFIX):
            pid = name[len(NETNS_PREFIX):].split("-")[0]
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                _ip("netns", "del", name, check=False)


def _operstate(ns: str, dev: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/operstate"], capture_output=True,
                          text=True, check=True).stdout.strip()


def _veth_bytes(ns: str, dev: str) -> tuple[int, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes",
                          f"/sys/class/net/{dev}/statistics/rx_bytes"], capture_output=True, text=True, check=True)
    tx, rx = map(int, out.stdout.split())
    return tx, rx


def test_two_ranks_in_two_network_namespaces_over_the_network(tmp_path):
    """One rank per network namespace (two "hosts" joined by a veth pair), MPICH's shared
    memory ruled out: the gradients must cross the veth, and training still equals one
    process."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None or _ip("netns", "list", check=False).returncode != 0:
        pytest.skip("no usable `ip netns` (iproute2)")
    exe, why, hydra = _mpi()
    if exe is None:
        pytest.skip(why)
    if not hydra:
        pytest.skip("launching a rank in another namespace uses MPICH's hydra launcher")
    _delete_stale_namespaces()
    pid = os.getpid()
    ns = (f"{NETNS_PREFIX}{pid}-a", f"{NETNS_PREFIX}{pid}-b")
    dev = (f"fxd{pid}a", f"fxd{pid}b")  # at most 15 characters
    made = []
    try:
        for n in ns:
            r = _ip("netns", "add", n, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
            made.append(n)
        _ip("link", "add", dev[0], "netns", ns[0], "type", "veth", "peer", "name", dev[1], "netns", ns[1])
        for n, d, host in zip(ns, dev, HOSTS):
            _ip("-n", n, "addr", "add", f"{host}/30", "dev", d)
            _ip("-n", n, "link", "set", d, "up")
            _ip("-n", n, "link", "set", "lo", "up")  # UCX's tcp transport is unavailable without it
        # The kernel marks a new link running up to a second later; UCX skips it until then.
        deadline = time.monotonic() + 10
        while not all(_operstate(n, d) == "up" for n, d in zip(ns, dev)):
            assert time.monotonic() < deadline, "the veth pair did not come up within 10 s"
            time.sleep(0.05)
        boot = tmp_path / "boot.sh"
        boot.write_text(BOOT % (HOSTS[0], ns[0], HOSTS[1], ns[1]))
        boot.chmod(0o755)
        before = [_veth_bytes(n, d) for n, d in zip(ns, dev)]
        env = dict(os.environ, WORKER_TIMEOUT="20", PYTHONUNBUFFERED="1", WORKER_HIDDEN="2048",
                   MPIR_CVAR_NOLOCAL="1",  # MPICH: no shared memory between the ranks...
                   UCX_TLS="tcp,self")  # ...nor UCX's own (/dev/shm is shared across network namespaces)
        cmd = ["ip", "netns", "exec", ns[0], exe, "-launcher", "ssh", "-launcher-exec", str(boot),
               "-hosts", ",".join(HOSTS), "-n", "2", sys.executable, str(WORKER), "equiv", str(tmp_path)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"the two-namespace job did not finish within 60 s: {e.stdout!r} {e.stderr!r}")
        assert r.returncode == 0, r.stdout + r.stderr
        after = [_veth_bytes(n, d) for n, d in zip(ns, dev)]
    finally:
        for n in made:
            _ip("netns", "del", n, check=False)
    assert not any(n in _ip("netns", "list").stdout for n in ns)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["size"] == 2 and info["gradient_bytes"] > 1_000_000
    for (tx0, rx0), (tx1, rx1) in zip(before, after):  # each rank sends and receives at least its whole buffer
        assert tx1 - tx0 >= info["gradient_bytes"] and rx1 - rx0 >= info["gradient_bytes"], (before, after, info)
    for kind in worker.KINDS:
        p0, p1 = ([z[f] for f in z.files] for z in (np.load(tmp_path / f"{kind}_rank{k}.npz") for k in (0, 1)))
        for a, b in zip(p0, p1):
            np.testing.assert_array_equal(a, b, err_msg=f"{kind}: ranks differ")
        ref = worker.params(worker.train(kind, rank=0, size=1, distributed=False, hidden=2048))
        for a, b in zip(p0, ref):
            # half batches and the full batch take products of other shapes, so other summation
            # orders (and kernels); Adam turns such float32 differences into steps of up to ~1e-6
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{kind}: 2 hosts != full batch")


def test_a_checkpoint_of_two_ranks_resumes_on_one_and_on_three(tmp_path):
    # The single-process continuation of the checkpoint: the same global batches, in the same order.
    exe, why, _ = _mpi()
    if exe is None:
        pytest.skip(why)
    r, _ = _launch("save", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    path = tmp_path / "ckpt.safetensors"
    X, Y = worker.problem()
    model = worker.build(seed=9)
    opt = fx.setup(fx.Adam(0.01), model)
    assert fx.load_checkpoint(path, model, opt) == worker.RESUME_AT
    loader = dist.shard(fx.DataLoader((X, Y), batchsize=worker.GLOBAL_BATCH, shuffle=True), rank=0, size=1,
                        seed=worker.SHUFFLE_SEED)
    loader.set_epoch(worker.RESUME_AT)
    saved = worker.opt_arrays(opt)
    for _ in fx.epochs(worker.EPOCHS, start=worker.RESUME_AT):
        fx.train_(worker.loss, model, loader, opt)
    want = {f"arr_{j}": p for j, p in enumerate(worker.params(model))} | worker.opt_arrays(opt)
    for size in (1, 3):
        env = dict(os.environ, WORKER_TIMEOUT="20", PYTHONUNBUFFERED="1")
        r = subprocess.run([exe, "-n", str(size), sys.executable, str(WORKER), "resume", str(tmp_path)],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        ranks = [np.load(tmp_path / f"resumed{size}_rank{k}.npz") for k in range(size)]
        assert sorted(ranks[0].files) == sorted(want) and len(want) == 4 + len(saved)
        for z in ranks[1:]:
            for f in z.files:
                np.testing.assert_array_equal(z[f], ranks[0][f], err_msg=f"{size} ranks: ranks differ")
        for name, b in want.items():
            a = ranks[0][name]
            if size == 1:  # the same computation as the single process's
                np.testing.assert_array_equal(a, b, err_msg=f"resumed on 1 rank: {name}")
            else:  # the same global batches, their mean gradient summed in another order
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=f"resumed on {size} ranks: {name}")
    # the step counts (powers of beta) went on from the checkpoint's, one per global batch
    steps = (worker.EPOCHS - worker.RESUME_AT) * worker.N // worker.GLOBAL_BATCH
    for k, v in saved.items():
        if "scalars" in k:
            np.testing.assert_allclose(ranks[0][k], v * np.array([0.9, 0.999]) ** steps, rtol=1e-12)
