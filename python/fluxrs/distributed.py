"""Data-parallel training over MPI (mpi4py): one process per worker, each training on its
shard of the data, gradients averaged by one allreduce per step.

Launch one process per worker with the MPI launcher; the script is an ordinary training
script with three additions:

    # mpiexec -n 4 python train.py         (pip install 'fluxrs[mpi]' brings mpi4py and MPICH)
    import fluxrs as fx
    fx.distributed.init()                                  # rank and world size from MPI
    model = build_model()
    opt = fx.setup(fx.Adam(1e-3), model)
    loader = fx.distributed.shard(fx.DataLoader((x, y), batchsize=64, shuffle=True))
    for epoch in fx.distributed.epochs(10):                # fx.epochs, loggers on rank 0 only
        fx.distributed.train_(loss, model, loader, opt)    # = fx.train_ + gradient averaging
    fx.distributed.save("model.safetensors", model, opt)   # written by rank 0 only

What each piece does:

* `init` joins the MPI job (``rank()``, ``size()``, ``is_root()``). On ranks other than 0
  the "fluxrs" logger shows warnings and errors only. An uncaught exception on any rank
  prints its traceback and aborts the whole job (``MPI_Abort``), so the other ranks do not
  wait for it. Every collective has a deadline (``timeout``, default 300 s, or
  ``FLUXRS_DIST_TIMEOUT``): a rank that died or hangs makes the others raise `CommTimeout`
  naming the rank, the operation and the step, and the job is aborted, instead of hanging.
  With MPICH, ``mpiexec -disable-auto-cleanup`` lets the survivors report a dead rank at
  once (`PeerFailure`); by default MPICH's launcher kills them when one rank exits.
* `shard` gives each rank its part of a `DataLoader`, as PyTorch's DistributedSampler: a
  new order each epoch from a seed shared by all ranks (drawn on rank 0), padded by
  repeating the first observations so that every rank has the same number of batches (or
  trimmed with ``drop_last``). The loader's `batchsize` is the batch of one rank; a step
  trains on ``size()`` times as many observations.
* `train_` is ``fx.train_`` with, the first time it sees a model or optimiser state, the
  parameters (every tensor of the model) and the optimiser state broadcast from rank 0, and
  on every step the gradients and the loss averaged over ranks by `GradAverager`: packed,
  in reverse parameter order, into flat buckets of about ``bucket_mb`` MiB, each summed by
  an ``MPI_Iallreduce`` started during the backward pass as soon as the bucket's gradients
  are final (so communication overlaps the rest of the backward pass, as in PyTorch DDP),
  polled against the deadline, then divided by the number of ranks. With the mean loss over equal
  shards this is the gradient of the whole batch, so every rank applies the same update and
  the replicas stay identical. The averaged loss is what progress bars, NaN checks and
  plugins see, so `EarlyStopping` and friends decide alike on every rank. Progress bars and
  the logging, checkpointing callbacks (`ProgressBar`, `CSVLogger`, `ModelCheckpoint`, any
  plugin with ``root_only = True``) run on rank 0 only.

**Resuming, also with another number of ranks.** ``save(path, model, opt, loader=sharded,
epoch=epoch)`` records, beside the model and the optimiser state (moments, step counts), the
shuffling seed, the passes done and the global batch. A job of any size resumes with
``start = load_checkpoint(path, model, opt, loader=sharded)`` and ``epochs(n, start=start)``.
What "the same data order" means across sizes: each pass's order is a permutation drawn
from (seed, pass) alone, and step j of a pass trains on its observations j*B..(j+1)*B-1,
B = ranks x per-rank batch, split among the ranks. So a job of P ranks with per-rank batch
B/P takes the same global batches in the same order as the saved run and as one process
with batches of B, provided P divides both B and the number of observations (otherwise the
padding or the split changes the batches, and `load_checkpoint` warns when B differs). The
update is then the gradient of the mean loss over the same global batch: identical to the
single-process continuation for P = 1, and equal to it up to float rounding for other P
(the mean over ranks of per-rank means sums in another order). Random layers (Dropout) draw
from each rank's own generator; only rank 0's is saved, so they do not carry over.

**Swapping the engine.** The communication is a `Backend` (``allreduce_``, ``broadcast_``,
``abort``); `MPIBackend` is the default, `LocalBackend` a single process. A plugin can
``register_backend("name", factory)`` and users ``init("name")`` (or set
``FLUXRS_DIST_BACKEND``), or pass an instance, ``init(MyBackend())``. Below that, the hook in
the training loop is ``fx.train.grad_reducer(fn)``: any ``fn(params, grads, loss) -> (grads,
loss)`` can replace `GradAverager` entirely.

A single process works too (``init()`` without ``mpiexec`` is a world of one), so the same
script runs on a laptop.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import sys
import time
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fluxrs._core import Tensor

__all__ = ["init", "is_initialized", "shutdown", "rank", "size", "is_root", "backend", "barrier", "broadcast_",
           "broadcast_object", "allreduce", "shard", "ShardedLoader", "train_", "epochs", "root_only", "save",
           "load_checkpoint", "GradAverager", "Backend", "MPIBackend", "LocalBackend", "register_backend", "CommError",
           "CommTimeout", "PeerFailure", "DesyncError", "DEFAULT_TIMEOUT", "DEFAULT_BUCKET_MB"]

log = logging.getLogger("fluxrs.distributed")

#: Seconds a rank waits in one collective before raising `CommTimeout` (``FLUXRS_DIST_TIMEOUT``
#: overrides it; ``init(timeout=None)`` waits forever, with blocking MPI calls).
DEFAULT_TIMEOUT = 300.0

#: MiB of gradients per bucket: each bucket's allreduce starts during the backward pass as
#: soon as its gradients are final (bench/README.md, "Data parallelism: overlapping the allreduce").
DEFAULT_BUCKET_MB = 1.0


# ---------------------------------------------------------------- errors

class CommError(RuntimeError):
    """A collective could not complete; the job cannot go on (the communicator is unusable)."""


class CommTimeout(CommError):
    """A collective did not complete within the deadline: another rank died, hangs, or is at
    a different point of the program. `rank`, `size`, `what` (the operation and step) and
    `timeout` (seconds) say where."""

    def __init__(self, rank: int, size: int, what: str, timeout: float):
        self.rank, self.size, self.what, self.timeout = rank, size, what, timeout
        super().__init__(
            f"rank {rank} of {size} waited {timeout:g} s for the {what}, and not every rank joined it: another rank "
            "has died or hangs, or the ranks are at different points of the program (different numbers of batches "
            "or train_ calls, or a skip/stop taken on one rank only). The job cannot go on. (The limit is "
            "fx.distributed.init(timeout=...) or FLUXRS_DIST_TIMEOUT.)")


class PeerFailure(CommError):
    """The MPI launcher reported (SIGUSR1, as MPICH's ``mpiexec -disable-auto-cleanup``
    does) that another process of the job failed."""

    def __init__(self, rank: int, size: int, what: str):
        self.rank, self.size, self.what = rank, size, what
        super().__init__(f"rank {rank} of {size}: the MPI launcher reports that another process of the job died "
                         f"(SIGUSR1 from mpiexec) while this rank was at the {what}; the job cannot go on")


class DesyncError(CommError):
    """The ranks' collectives paired up calls from different steps."""


# ---------------------------------------------------------------- backends

class Backend:
    """The communication engine: a world of `size` processes, this one being `rank`.

    A backend implements ``allreduce_(buf, what)`` (sum a contiguous numpy array over all
    ranks, in place), ``broadcast_(buf, root, what)`` (copy root's array into everyone's, in
    place) and ``abort(code)`` (end every process of the job); `what` names the operation
    for error messages. Both collectives must raise `CommError` (`CommTimeout`) rather than
    block forever when a rank is missing. The rest is built on those.
    """

    name = "backend"
    rank: int = 0
    size: int = 1
    timeout: float | None = DEFAULT_TIMEOUT

    def allreduce_(self, buf: np.ndarray, what: str = "allreduce") -> None:
        raise NotImplementedError

    def iallreduce_(self, buf: np.ndarray, what: str = "allreduce") -> Any:
        """Start summing `buf` over ranks and return a handle for `wait_`; `buf` must stay
        untouched until then. Every rank must start the same sums in the same order. This
        default sums at once (no overlap)."""
        self.allreduce_(buf, what)
        return None

    def wait_(self, handles: Sequence[Any], what: str = "allreduce") -> None:
        """Complete the sums `iallreduce_` started (with the deadline)."""

    def progress_(self, handles: Sequence[Any]) -> bool:
        """Let started sums advance without waiting for them (an MPI without a progress
        thread moves a message along only inside its calls); whether all are complete."""
        return True

    def allreduce_many_(self, bufs: Sequence[np.ndarray], what: str = "allreduce") -> None:
        """Sum several buffers (a backend may overlap them)."""
        self.wait_([self.iallreduce_(b, what) for b in bufs], what)

    def broadcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def local_size(self) -> int:
        """Processes of this job on this machine."""
        return self.size

    # built on the above

    def barrier(self, what: str = "barrier") -> None:
        self.allreduce_(np.zeros(1, np.float32), what)

    def broadcast_object(self, obj: Any, root: int = 0, what: str = "broadcast") -> Any:
        if self.size == 1:
            return obj
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        n = np.array([len(data)], np.int64)
        self.broadcast_(n, root, what)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self.broadcast_(buf, root, what)
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def all_agree(self, ok: bool, what: str = "check") -> bool:
        """Whether `ok` holds on every rank (every rank gets the same answer)."""
        flag = np.array([0.0 if ok else 1.0], np.float32)
        self.allreduce_(flag, what)
        return flag[0] == 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, timeout={self.timeout})"


class LocalBackend(Backend):
    """A world of one process: every collective is a no-op. For tests and laptops, and a
    template for writing backends."""

    name = "local"

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT):
        self.rank, self.size, self.timeout = 0, 1, timeout

    def allreduce_(self, buf: np.ndarray, what: str = "allreduce") -> None:
        pass

    def broadcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> None:
        if root != 0:
            raise ValueError(f"broadcast from rank {root} in a world of one process")


class MPIBackend(Backend):
    """MPI through mpi4py, on `comm` (default ``MPI.COMM_WORLD``).

    With a `timeout`, collectives are non-blocking (``Iallreduce``, ``Ibcast``) and polled:
    ``MPI_Test`` then ``sched_yield`` for the first 50 ms (driving MPI's progress as fast as a
    blocking call, while letting a rank that shares the core run), then sleeping in growing
    steps up to 1 ms; past the deadline, or when the launcher signals a dead process, they
    raise. ``timeout=None`` uses the blocking calls.
    """

    name = "mpi"

    def __init__(self, comm: Any = None, timeout: float | None = DEFAULT_TIMEOUT):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("fluxrs.distributed needs mpi4py and an MPI library: pip install 'fluxrs[mpi]' (mpi4py "
                              "and MPICH as wheels from PyPI), or mpi4py against your cluster's MPI") from e
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout
        self.peer_failed = False  # set by the SIGUSR1 handler `init` installs
        self._local: int | None = None

    def local_size(self) -> int:
        if self._local is None:
            try:
                node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
                self._local = node.Get_size()
                node.Free()
            except Exception:  # an MPI without MPI-3 shared-memory splitting
                self._local = self.size
        return self._local

    def _wait(self, req: Any, what: str) -> None:
        start = time.monotonic()
        deadline = start + self.timeout
        spin_until = start + 0.05
        delay = 5e-5
        while not req.Test():
            if self.peer_failed:
                raise PeerFailure(self.rank, self.size, what)
            now = time.monotonic()
            if now > deadline:
                raise CommTimeout(self.rank, self.size, what, self.timeout)
            if now < spin_until:
                _yield()  # drive progress, but let a rank sharing this core run
            else:  # a long wait (a rank evaluating, saving): free the core
                time.sleep(delay)
                delay = min(2 * delay, 1e-3)


    def allreduce_(self, buf: np.ndarray, what: str = "allreduce") -> None:
        if self.size == 1:
            return
        MPI = self.MPI
        if self.timeout is None:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)

    def iallreduce_(self, buf: np.ndarray, what: str = "allreduce") -> Any:
        if self.size == 1:
            return None
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def wait_(self, handles: Sequence[Any], what: str = "allreduce") -> None:
        reqs = [h for h in handles if h is not None]
        if self.timeout is None:
            self.MPI.Request.Waitall(reqs)
        else:
            for r in reqs:
                self._wait(r, what)

    def progress_(self, handles: Sequence[Any]) -> bool:
        reqs = [h for h in handles if h is not None]
        return not reqs or bool(self.MPI.Request.Testall(reqs))

    def broadcast_(self, buf: np.ndarray, root: int = 0, what: str = "broadcast") -> None:
        if self.size == 1:
            return
        if self.timeout is None:
            self.comm.Bcast(buf, root=root)
        else:
            self._wait(self.comm.Ibcast(buf, root=root), what)

    def abort(self, code: int = 1) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            time.sleep(0.5)  # let the launcher forward what this rank just wrote before it kills everyone
            self.comm.Abort(code)
        finally:  # MPI_Abort may return in this process (MPICH under -disable-auto-cleanup does)
            os._exit(code)


_yield: Callable[[], Any] = getattr(os, "sched_yield", lambda: time.sleep(0))

_factories: dict[str, Callable[..., Backend]] = {"mpi": MPIBackend, "local": LocalBackend}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``init(name)`` build a backend with ``factory(timeout=...)``: how a plugin offers
    another communication engine (NCCL, Gloo, a test double)."""
    _factories[str(name)] = factory


# ---------------------------------------------------------------- the process-wide world

_backend: Backend | None = None
_saved: dict[str, Any] = {}
_averager: "GradAverager | None" = None
_seen: dict[int, Any] = {}  # id -> weak (or, if it cannot be, strong) reference of models train_ broadcast


def _env_timeout() -> float | None:
    v = os.environ.get("FLUXRS_DIST_TIMEOUT")
    if v is None or v == "":
        return DEFAULT_TIMEOUT
    if v.lower() in ("none", "inf", "0"):
        return None
    return float(v)


_UNSET: Any = object()


def init(backend: str | Backend | None = None, *, timeout: float | None = _UNSET, abort_on_exception: bool = True,
         quiet: bool = True, threads: bool = True) -> Backend:
    """Join the job and return its `Backend` (calling it again returns the same one).

    `backend`: ``"mpi"`` (default, or ``FLUXRS_DIST_BACKEND``), ``"local"``, a name a plugin
    registered, or a `Backend` instance. `timeout`: seconds any rank waits in a collective
    before raising `CommTimeout` (None: forever). `abort_on_exception`: an uncaught exception
    on a rank aborts the whole job after its traceback is printed. `quiet`: ranks other than
    0 log warnings and errors only. `threads`: when several ranks share a machine and
    ``RAYON_NUM_THREADS`` is unset, each rank's kernels use cores/ranks threads (effective
    when `init` comes before the first large computation).
    """
    global _backend
    if _backend is not None:
        if backend is not None and backend is not _backend and backend != _backend.name:
            raise RuntimeError(f"fx.distributed is already initialised with {_backend!r}; call "
                               "fx.distributed.shutdown() first to change backends")
        return _backend
    t = _env_timeout() if timeout is _UNSET else timeout
    if t is not None and not t > 0:
        raise ValueError(f"init: timeout must be a positive number of seconds or None, got {t!r}")
    if backend is None:
        backend = os.environ.get("FLUXRS_DIST_BACKEND", "mpi")
    if isinstance(backend, str):
        if backend not in _factories:
            raise ValueError(f"init: no distributed backend named {backend!r}; known: {sorted(_factories)} "
                             "(plugins add more with fx.distributed.register_backend)")
        b = _factories[backend](timeout=t)
    elif isinstance(backend, Backend):
        b = backend
        if timeout is not _UNSET:
            b.timeout = t
    else:
        raise TypeError(f"init: backend must be a name or a fx.distributed.Backend, got {type(backend).__name__}")
    _backend = b
    if threads and b.size > 1 and "RAYON_NUM_THREADS" not in os.environ:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        os.environ["RAYON_NUM_THREADS"] = str(max(1, cores // max(1, b.local_size())))
    if quiet and b.rank != 0:
        lg = logging.getLogger("fluxrs")
        _saved["level"] = lg.level
        if lg.level < logging.WARNING:  # also NOTSET, which would follow a later basicConfig(level=INFO)
            lg.setLevel(logging.WARNING)
    if abort_on_exception and b.size > 1:
        _saved["excepthook"] = sys.excepthook
        sys.excepthook = _abort_hook
    if isinstance(b, MPIBackend) and b.size > 1:
        _watch_sigusr1(b)
    log.debug("fx.distributed: %r", b)
    return b


def _abort_hook(etype, value, tb) -> None:
    prev = _saved.get("excepthook") or sys.__excepthook__
    try:
        prev(etype, value, tb)
    finally:
        b = _backend
        if b is not None and b.size > 1:
            sys.stderr.write(f"[fluxrs.distributed] rank {b.rank} of {b.size}: uncaught {etype.__name__}; aborting the "
                             "job so that the other ranks do not wait for this one\n")
            b.abort(1)


def _watch_sigusr1(b: MPIBackend) -> None:
    """MPICH's mpiexec, run with -disable-auto-cleanup, sends SIGUSR1 to the survivors when a
    process fails; by default that signal kills them silently. Turn it into `PeerFailure` at
    the next (or current) collective instead, so the job ends with a message."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return
    if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
        return

    def on_usr1(signum, frame):
        b.peer_failed = True

    signal.signal(signal.SIGUSR1, on_usr1)
    _saved["sigusr1"] = signal.SIG_DFL


def shutdown() -> None:
    """Forget the backend (the MPI library stays initialised until the process exits) and
    undo what `init` changed in this process: the exception hook, logging, signals."""
    global _backend, _averager
    if "excepthook" in _saved:
        sys.excepthook = _saved.pop("excepthook")
    if "level" in _saved:
        logging.getLogger("fluxrs").setLevel(_saved.pop("level"))
    if "sigusr1" in _saved:
        import signal
        signal.signal(signal.SIGUSR1, _saved.pop("sigusr1"))
    _backend, _averager = None, None
    _seen.clear()


def is_initialized() -> bool:
    """Whether `init` was called (and not undone by `shutdown`)."""
    return _backend is not None


def backend() -> Backend:
    """The backend `init` made."""
    if _backend is None:
        raise RuntimeError("fx.distributed is not initialised: call fx.distributed.init() first (under mpiexec for "
                           "more than one process)")
    return _backend


def rank() -> int:
    """This process's rank, 0 .. size()-1."""
    return backend().rank


def size() -> int:
    """The number of processes in the job."""
    return backend().size


def is_root() -> bool:
    """Whether this is rank 0, the one that logs, shows progress and writes checkpoints."""
    return backend().rank == 0


def barrier() -> None:
    """Wait until every rank got here (with the deadline)."""
    backend().barrier("barrier")


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """`obj` from rank `root` on every rank (pickled)."""
    return backend().broadcast_object(obj, root, "broadcast of an object")


def allreduce(value: Any, op: str = "mean") -> Any:
    """Sum or mean (`op`) over ranks of a number or numpy array (a validation metric, say).

    >>> import fluxrs as fx
    >>> _ = fx.distributed.init("local")
    >>> fx.distributed.allreduce(0.75), fx.distributed.allreduce([1, 2], op="sum").tolist()
    (0.75, [1.0, 2.0])
    >>> fx.distributed.shutdown()
    """
    if op not in ("mean", "sum"):
        raise ValueError(f"allreduce: op must be 'mean' or 'sum', got {op!r}")
    b = backend()
    scalar = np.ndim(value) == 0
    a = np.array(value.numpy() if isinstance(value, Tensor) else value, dtype=np.float64, ndmin=1)
    b.allreduce_(a, "allreduce of a value")
    if op == "mean":
        a /= b.size
    return float(a[0]) if scalar else a


# ---------------------------------------------------------------- broadcasting models and optimiser state

def _tensors_of(obj: Any) -> dict[str, Tensor]:
    """Every distinct tensor of a model, Params, list of tensors or tensor, by name."""
    from fluxrs.autodiff import Params
    from fluxrs.io import _model_entries
    if isinstance(obj, Tensor):
        return {"": obj}
    if isinstance(obj, Params) or (isinstance(obj, (list, tuple)) and obj and all(isinstance(t, Tensor) for t in obj)):
        entries = {f"[{i}]": t for i, t in enumerate(obj)}
    else:
        entries = _model_entries(obj)
    out, seen = {}, set()
    for k, t in entries.items():
        if id(t) not in seen:
            seen.add(id(t))
            out[k] = t
    return out


def _broadcast_arrays(b: Backend, layout: list[tuple[str, tuple, str]], arrays: dict[str, np.ndarray] | None,
                      root: int, what: str) -> dict[str, np.ndarray]:
    """Broadcast arrays of a known layout (name, shape, dtype), one flat buffer per dtype."""
    out: dict[str, np.ndarray] = {}
    for dt in sorted({d for _, _, d in layout}):
        items = [(n, s) for n, s, d in layout if d == dt]
        total = sum(int(np.prod(s, dtype=np.int64)) for _, s in items)
        buf = np.empty(total, dtype=dt)
        if b.rank == root:
            o = 0
            for n, s in items:
                k = int(np.prod(s, dtype=np.int64))
                buf[o:o + k] = np.asarray(arrays[n], dtype=dt).reshape(-1)
                o += k
        b.broadcast_(buf, root, what)
        o = 0
        for n, s in items:
            k = int(np.prod(s, dtype=np.int64))
            out[n] = buf[o:o + k].reshape(s)
            o += k
    return out


def broadcast_(model: Any, opt_state: Any = None, *, root: int = 0) -> Any:
    """Overwrite, on every rank, the model's tensors (parameters and non-trainable state such
    as BatchNorm's statistics) and the optimiser state from `fx.setup` (moments, step
    counts, rules, frozen flags) with rank `root`'s. `model` may also be `Params`, a list of
    tensors or a tensor. All ranks must call it; a model or state of another layout on some
    rank raises ValueError on every rank. Returns `model`. `fx.distributed.train_` calls it
    the first time it sees a model."""
    b = backend()
    tensors = _tensors_of(model)
    mine = [(k, tuple(t.shape), t.dtype.name) for k, t in tensors.items()]
    theirs = b.broadcast_object(mine, root, "broadcast of the model's layout")
    same = mine == theirs
    if not b.all_agree(same, "check of the model's layout"):
        if same:
            raise ValueError(f"broadcast_: the model on another rank differs from rank {root}'s; all ranks must build "
                             "the same architecture")
        diff = next(((m, t) for m, t in zip(mine, theirs) if m != t), None)
        detail = (f"rank {b.rank} has {diff[0][0] or 'tensor'} {diff[0][1]} {diff[0][2]} where rank {root} has "
                  f"{diff[1][0] or 'tensor'} {diff[1][1]} {diff[1][2]}" if diff else
                  f"rank {b.rank} has {len(mine)} tensors, rank {root} {len(theirs)}")
        raise ValueError(f"broadcast_: the model differs between ranks: {detail}; all ranks must build the same "
                         "architecture")
    if b.size > 1:
        arrays = {k: t.numpy() for k, t in tensors.items()} if b.rank == root else None
        got = _broadcast_arrays(b, mine, arrays, root, "broadcast of the parameters")
        if b.rank != root:
            for k, t in tensors.items():
                t.assign_(got[k])
    if opt_state is not None:
        _broadcast_opt(b, opt_state, root)
    return model


def _broadcast_opt(b: Backend, opt_state: Any, root: int) -> None:
    from fluxrs.io import _encode_opt, _plan_opt_load
    if b.size == 1:
        return
    if b.rank == root:
        manifest, arrays = _encode_opt(opt_state)
        layout = [(k, tuple(a.shape), a.dtype.name) for k, a in arrays.items()]
        b.broadcast_object((manifest, layout), root, "broadcast of the optimiser state's layout")
    else:
        manifest, layout = b.broadcast_object(None, root, "broadcast of the optimiser state's layout")
        arrays = None
    got = _broadcast_arrays(b, layout, arrays, root, "broadcast of the optimiser state")
    err = None
    if b.rank != root:
        try:
            actions = _plan_opt_load(opt_state, manifest, {k: np.array(v) for k, v in got.items()})
        except Exception as e:  # checked on every rank before anyone writes
            err, actions = e, []
    if not b.all_agree(err is None, "check of the optimiser state's layout"):
        if err is not None:
            raise ValueError(f"broadcast_: the optimiser state on rank {b.rank} does not fit rank {root}'s: {err}") \
                from err
        raise ValueError(f"broadcast_: the optimiser state on another rank does not fit rank {root}'s")
    if b.rank != root:
        for act in actions:
            act()


def _first_sight(obj: Any) -> bool:
    """True the first time `obj` is seen by `train_` in this job (by identity)."""
    ref = _seen.get(id(obj))
    if ref is not None and (ref() if isinstance(ref, weakref.ref) else ref) is obj:
        return False
    try:
        ref = weakref.ref(obj, lambda _, k=id(obj): _seen.pop(k, None))
    except TypeError:  # a dict, list or Leaf of optimiser state: kept alive
        ref = obj
    _seen[id(obj)] = ref
    return True


# ---------------------------------------------------------------- sharding data

class ShardedLoader:
    """Rank `rank`'s part of a `DataLoader` (see `shard`). Iterating it starts the next epoch;
    ``set_epoch(k)`` sets the epoch the next pass uses."""

    def __init__(self, loader: Any, rank: int, size: int, seed: int, drop_last: bool = False):
        if not (0 <= rank < size):
            raise ValueError(f"shard: rank must be in 0..{size - 1}, got {rank}")
        self.loader, self.rank, self.size, self.seed, self.drop_last = loader, int(rank), int(size), int(seed), \
            bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state(self) -> dict:
        """What fixes the data order from here on, as `save` records it: the seed, the passes
        done, the global batch (ranks x batchsize) and the number of observations."""
        return {"seed": self.seed, "epoch": self.epoch, "global_batch": self.size * self.loader.batchsize,
                "nobs": self.loader.nobs}

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """The observations (positions in the loader's data) this rank gets in `epoch`."""
        epoch = self.epoch if epoch is None else epoch
        n = self.loader.nobs
        if self.loader.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            total = (n // self.size) * self.size
            order = order[:total]
        else:
            total = -(-n // self.size) * self.size
            if total > n and n > 0:
                order = np.concatenate([order, np.resize(order, total - n)])
        return order[self.rank:total:self.size]

    def _per_rank(self) -> int:
        n = self.loader.nobs
        return n // self.size if self.drop_last else -(-n // self.size)

    def __len__(self) -> int:
        m, bs = self._per_rank(), self.loader.batchsize
        return -(-m // bs) if self.loader.partial else m // bs

    def __iter__(self) -> Iterator[Any]:
        idx = self.indices(self.epoch)
        self.epoch += 1
        bs, loader = self.loader.batchsize, self.loader
        for j in range(len(self)):
            batch = loader._batch(idx[j * bs:(j + 1) * bs])
            if callable(loader.collate):
                batch = loader.collate(batch)
            yield batch

    def __repr__(self) -> str:
        return (f"ShardedLoader(rank {self.rank} of {self.size}, epoch {self.epoch}, seed {self.seed})  # {len(self)} "
                f"batches of {self.loader.batchsize} of the {self.loader.nobs} observations")


def shard(loader: Any, *, rank: int | None = None, size: int | None = None, seed: int | None = None,
          drop_last: bool = False) -> ShardedLoader:
    """This rank's part of `loader` (a `fx.DataLoader`), as PyTorch's DistributedSampler.

    Each pass takes a fresh order of all observations (a permutation seeded by
    ``(seed, epoch)``, the same on every rank, when the loader shuffles; the data's order
    otherwise), pads it by repeating its start to a multiple of `size` (or, with `drop_last`,
    trims it), and gives rank r the observations at positions ``r, r+size, r+2*size, ...``, cut
    into batches of the loader's `batchsize`. Every rank thus has the same number of
    batches, and at step j the ranks' batches together are observations ``j*B .. (j+1)*B-1`` of the
    epoch's order, ``B = size * batchsize``. `rank` and `size` default to the job's; `seed`
    to one drawn on rank 0 (from the loader's `rng` or fluxrs's generator) and broadcast.

    >>> import fluxrs as fx, numpy as np
    >>> loader = fx.DataLoader(np.arange(10.0), batchsize=2)
    >>> [b.tolist() for b in fx.distributed.shard(loader, rank=1, size=4, seed=0)]
    [[1.0, 5.0], [9.0]]
    """
    if rank is None or size is None:
        b = backend()
        rank = b.rank if rank is None else rank
        size = b.size if size is None else size
    if seed is None:
        if _backend is None:
            raise ValueError("shard: give a seed (the same on every rank), or call fx.distributed.init() first so that "
                             "rank 0 can choose one")
        from fluxrs.random import default_rng
        mine = int((loader.rng or default_rng()).integers(2 ** 62)) if _backend.rank == 0 else None
        seed = _backend.broadcast_object(mine, 0, "broadcast of the shuffling seed")
    for attr in ("nobs", "batchsize", "shuffle", "partial", "_batch"):
        if not hasattr(loader, attr):
            raise TypeError(f"shard: expected a fx.DataLoader, got {type(loader).__name__}")
    return ShardedLoader(loader, rank, size, seed, drop_last)


# ---------------------------------------------------------------- gradient averaging

class _Bucket:
    """Consecutive gradients (in reverse parameter order) of one dtype in one flat buffer,
    summed by one allreduce."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.items: list[tuple[int, int, int]] = []  # (parameter index, offset, size)
        self.size = 0
        self.flat: Tensor | None = None
        self.buf: np.ndarray | None = None


class _Layout:
    """Where each gradient lives in the flat buffers, and tensors viewing those places.

    Parameters are walked in reverse order (the order the backward pass finishes them) and
    packed, per dtype, into buckets of at most `bucket_bytes` (one larger parameter makes a
    bucket alone); None: one bucket per dtype. The last bucket ends with a presence flag per
    gradient (known after the backward pass); the first one, started first, with the loss and
    a step tag (known before it), so that a step can be checked before the last bucket is in."""

    def __init__(self, xs: list[Tensor], bucket_bytes: int | None):
        n = self.n = len(xs)
        buckets: list[_Bucket] = []
        open_: dict[str, _Bucket] = {}
        for i in reversed(range(n)):
            dt, k = xs[i].dtype.name, int(xs[i].size)
            bk = open_.get(dt)
            if bk is None or (bucket_bytes is not None and bk.items and
                              (bk.size + k) * np.dtype(dt).itemsize > bucket_bytes):
                bk = open_[dt] = _Bucket(dt)
                buckets.append(bk)
            bk.items.append((i, bk.size, k))
            bk.size += k
        if not buckets:
            buckets.append(_Bucket("float32"))
        self.buckets = buckets
        self.bucket_of = [0] * n      # parameter -> its bucket's index
        self.dsts: list[np.ndarray | None] = [None] * n  # numpy view of gradient i's place
        self.views: list[Tensor | None] = [None] * n     # tensors viewing the same places, handed to the update
        self.grads: list[np.ndarray] = []  # the gradient part of each buffer (scaled after the sum)
        for bi, bk in enumerate(buckets):
            extra = (n if bi == len(buckets) - 1 else 0) + (2 if bi == 0 else 0)
            bk.flat = Tensor(np.zeros(bk.size + extra, dtype=bk.dtype))
            bk.buf = bk.flat.numpy()
            if not (bk.buf.flags["C_CONTIGUOUS"] and bk.buf.flags["WRITEABLE"]
                    and np.shares_memory(bk.buf, bk.flat.numpy())):
                raise RuntimeError("GradAverager: Tensor.numpy() did not give a writeable view of the tensor")
            for i, off, k in bk.items:
                shape = tuple(xs[i].shape)
                self.bucket_of[i] = bi
                self.views[i] = bk.flat[off:off + k].reshape(shape)
                self.dsts[i] = bk.buf[off:off + k].reshape(shape)
            self.grads.append(bk.buf[:bk.size])
        self.meta = buckets[-1].buf[buckets[-1].size:buckets[-1].size + n]  # presence flags
        self.head = buckets[0].buf[-2:]  # the loss and the step tag


class GradAverager:
    """The gradient reducer of `fx.distributed.train_` (a ``fx.train.grad_reducer``).

    Per step: copies every gradient into flat buffers (buckets, see `bucket_mb`) whose last
    one ends with a presence flag per gradient and whose first one with the loss and a step
    counter; sums them over ranks, one allreduce per bucket; divides by the number of ranks. The returned gradients
    are views of those buffers (valid until the next step, as DDP's
    ``gradient_as_bucket_view``); a gradient no rank had stays None. The step counters are
    checked, so ranks that fell out of step (one skipped a batch) raise `DesyncError` on
    every rank instead of mixing steps.

    `bucket_mb`: with a size, parameters are grouped in reverse order into buckets of about
    that many MiB (as PyTorch DDP's ``bucket_cap_mb``), and each bucket's allreduce starts
    during the backward pass, as soon as its last gradient is final (`begin` hands `train_`
    the callback), so that communication overlaps the rest of the backward pass. None: one
    buffer per dtype, summed after the backward pass. Either way each element is the same
    sum over ranks, so results are identical.

    Called with ``update=`` (as `train_` does), it also hides the last bucket's allreduce,
    which can only start when the backward pass ends: once the first bucket is summed (the
    step counters checked, the mean loss finite), each earlier bucket's parameters are
    updated, ``update(indices, gradients)``, while the later buckets are still in flight. The
    gradients it applied come back as None. Each parameter's update is the same, so results
    are identical to updating after the last bucket.
    """

    updates_early = True  # train_ passes `update` (see above)

    def __init__(self, backend: Backend, bucket_mb: float | None = DEFAULT_BUCKET_MB):
        self.backend = backend
        self.bucket_mb = bucket_mb
        self.step = 0
        self._layouts: dict[tuple, _Layout] = {}
        self._open: _Step | None = None
        self._progress: _Progress | None = None

    def _layout(self, xs: list[Tensor]) -> _Layout:
        nbytes = None if self.bucket_mb is None else max(1, int(self.bucket_mb * 2 ** 20))
        key = (nbytes,) + tuple(map(id, xs))
        lay = self._layouts.get(key)
        if lay is None:
            if len(self._layouts) >= 8:
                self._layouts.clear()
            lay = self._layouts[key] = _Layout(xs, nbytes)
        return lay

    @property
    def bucket_mb(self) -> float | None:
        return self._bucket_mb

    @bucket_mb.setter
    def bucket_mb(self, mb: float | None) -> None:
        if mb is not None and (isinstance(mb, bool) or not (isinstance(mb, (int, float)) and mb > 0)):
            raise ValueError(f"GradAverager: bucket_mb must be a positive number of MiB or None, got {mb!r}")
        self._bucket_mb = mb

    def _driver(self) -> "_Progress | None":
        """The thread that moves started allreduces along during the backward pass, for
        backends that need it (`Backend.progress_`)."""
        if type(self.backend).progress_ is Backend.progress_:
            return None
        if self._progress is None:
            self._progress = _Progress(self.backend)
        return self._progress

    def begin(self, xs: list[Tensor], loss: float) -> Callable[[int, Tensor], None] | None:
        """Called by `train_` before the backward pass, with the step's loss: the callback
        for ``_core.grad``'s `on_final`, which packs each final gradient and starts its
        bucket's allreduce when the bucket is complete; None when there is nothing to overlap."""
        self._open = None
        if self.bucket_mb is None or self.backend.size == 1:
            return None
        lay = self._layout(xs)
        if len(lay.buckets) == 1:
            return None
        self.step += 1
        st = self._open = _Step(self, lay, xs, self._driver())
        st.head(loss)
        return st.on_final

    def __call__(self, xs: list[Tensor], grads: list[Tensor | None], loss: float,
                 update: Callable[[list[int], list[Tensor]], None] | None = None) -> tuple[list, float]:
        b = self.backend
        st, self._open = self._open, None
        if st is None or st.xs is not xs:  # no overlap this step: everything is packed now
            self.step += 1
            st = _Step(self, self._layout(xs), xs)
            st.head(loss)
        lay, n = st.lay, st.lay.n
        meta = lay.meta
        copyto = np.copyto
        for i in range(n):
            if st.done[i]:
                continue
            g = grads[i]
            if g is None:
                lay.dsts[i].fill(0)
                meta[i] = 0
            else:
                copyto(lay.dsts[i], g.numpy())
                meta[i] = 1
        applied: set[int] = set()
        if b.size > 1:
            st.launch(len(lay.buckets))
            inv = 1.0 / b.size
            scaled = 0  # buckets summed and divided
            if update is not None and len(lay.buckets) > 1:
                st.wait(1)
                self._check(st)
                if math.isfinite(float(lay.head[0]) * inv):  # else train_ raises before any update
                    for k in range(len(lay.buckets) - 1):
                        st.wait(k + 1)
                        lay.grads[k] *= inv
                        scaled = k + 1
                        done = [i for i, _, _ in lay.buckets[k].items if st.done[i]]  # present here: in the mean
                        update(done, [lay.views[i] for i in done])
                        applied.update(done)
            if st.progress is not None:
                st.progress.stop()
            st.wait(len(lay.buckets))
            self._check(st)
            for part in lay.grads[scaled:]:
                part *= inv
            loss = float(lay.head[0]) * inv
        have = meta.tolist()
        views = lay.views
        return [views[i] if have[i] > 0 and i not in applied else None for i in range(n)], loss

    def _check(self, st: "_Step") -> None:
        """Raise `DesyncError` when the summed step counters say the ranks are out of step."""
        b, got = self.backend, float(st.lay.head[1])
        if got != st.tag * b.size:
            raise DesyncError(f"rank {b.rank} of {b.size}: the ranks are out of step at the {st.what}: the step "
                              f"counters sum to {got:g}, not {b.size} x {st.tag:g}. A rank skipped a batch, "
                              "or ran a different number of batches or train_ calls; skips (fx.skip, hooks) "
                              "must be taken on every rank alike.")


class _Step:
    """One step's gradients on their way into the buckets: which are packed, which buckets
    are complete, and the allreduces started so far (always in bucket order, the same on
    every rank, as MPI requires)."""

    def __init__(self, avg: GradAverager, lay: _Layout, xs: list[Tensor], progress: "_Progress | None" = None):
        self.backend, self.lay, self.xs, self.progress = avg.backend, lay, xs, progress
        self.what = f"gradient allreduce of step {avg.step}"
        self.tag = float(avg.step % 4096)
        self.done = [False] * lay.n
        self.left = [len(bk.items) for bk in lay.buckets]
        self.left[-1] += 1  # the last bucket also waits for the metadata, written after the backward pass
        self.started = 0
        self.waited = 0  # buckets whose allreduce is complete (in order)
        self.handles: list[Any] = []

    def on_final(self, i: int, g: Tensor) -> None:
        lay = self.lay
        np.copyto(lay.dsts[i], g.numpy())
        lay.meta[i] = 1
        self.done[i] = True
        bi = lay.bucket_of[i]
        self.left[bi] -= 1
        if bi == self.started and self.left[bi] == 0:
            ready = self.started + 1
            while ready < len(self.left) and self.left[ready] == 0:
                ready += 1
            self.launch(ready)

    def head(self, loss: float) -> None:
        """Write the loss and the step tag into the first bucket, before it starts."""
        self.lay.head[0] = loss
        self.lay.head[1] = self.tag

    def wait(self, upto: int) -> None:
        """Complete the allreduces of the buckets before `upto` (started) not completed yet,
        each once, the polling thread kept out meanwhile."""
        todo = self.handles[self.waited:upto]
        if todo:
            if self.progress is None:
                self.backend.wait_(todo, self.what)
            else:
                with self.progress.lock:
                    self.backend.wait_(todo, self.what)
        self.waited = max(self.waited, upto)

    def launch(self, upto: int) -> None:
        """Start the allreduces of buckets started..upto-1."""
        b, p = self.backend, self.progress
        while self.started < upto:
            buf = self.lay.buckets[self.started].buf
            if p is None:
                self.handles.append(b.iallreduce_(buf, self.what))
            else:
                with p.lock:
                    self.handles.append(b.iallreduce_(buf, self.what))
                    p.pending.append(self.handles[-1])
                    p.active.set()
            self.started += 1


class _Progress:
    """A thread calling ``backend.progress_`` every `INTERVAL` seconds while allreduces
    started during the backward pass are unfinished. MPICH moves a message between processes
    only inside MPI calls, and the backward pass makes none: without this thread a bucket
    would not advance until the wait after the backward pass. The backward pass runs without
    the GIL, so the thread gets it at once; it sleeps between polls, and waits on an event
    while nothing is in flight."""

    INTERVAL = 200e-6  # a poll costs a few µs: a few % of a core, and only while a bucket is in flight

    def __init__(self, backend: Backend):
        import threading
        self.backend = backend
        self.lock = threading.Lock()  # one thread in the backend at a time
        self.pending: list = []       # started, not yet seen complete
        self.active = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fluxrs-allreduce-progress", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """The backward pass is over: the caller waits for the rest itself."""
        with self.lock:
            self.pending.clear()
            self.active.clear()

    def _run(self) -> None:
        sleep, interval = time.sleep, self.INTERVAL
        while True:
            self.active.wait()
            with self.lock:
                if self.pending:
                    try:
                        done = self.backend.progress_(list(self.pending))
                    except Exception:  # the wait after the backward pass reports it
                        done = True
                    if done:
                        self.pending.clear()
                        self.active.clear()
            sleep(interval)


def _reducer(bucket_mb: float | None) -> GradAverager:
    global _averager
    if _averager is None or _averager.backend is not _backend:
        _averager = GradAverager(backend(), bucket_mb)
    elif _averager.bucket_mb != bucket_mb:
        _averager.bucket_mb = bucket_mb  # the same averager: its step count and progress thread go on
    return _averager


# ---------------------------------------------------------------- training

_ROOT_ONLY = ("ProgressBar", "CSVLogger", "ModelCheckpoint", "TensorBoardLogger")


def _root_only(plugin: Any) -> bool:
    flag = getattr(plugin, "root_only", None)
    if flag is not None:
        return bool(flag)
    return type(plugin).__name__ in _ROOT_ONLY


def root_only(callbacks: Any) -> list:
    """`callbacks` (a plugin or a list of them) as this rank should run them: all on rank 0;
    on the others, without the loggers and checkpoint writers (`ProgressBar`, `CSVLogger`,
    `ModelCheckpoint`, ``TensorBoardLogger``, and any plugin with ``root_only = True``)."""
    if callbacks is None:
        return []
    cbs = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if backend().rank == 0:
        return cbs
    return [c for c in cbs if not _root_only(c)]


def epochs(n: int, callbacks: Any = None, *, start: int = 0) -> Iterator[int]:
    """``fx.epochs(n, callbacks, start=start)`` with `root_only` applied to `callbacks`: the
    epoch loop of a distributed run (its "Epoch k" log lines show on rank 0 only, as all of
    fluxrs's INFO logging after `init`)."""
    from fluxrs.train import epochs as plain_epochs
    return plain_epochs(n, root_only(callbacks) if callbacks is not None else None, start=start)


def train_(loss: Callable, *args: Any, progress: Any = False, callbacks: Any = None, reducer: Callable | None = None,
           bucket_mb: float | None = DEFAULT_BUCKET_MB, **kwargs: Any) -> None:
    """``fx.train_`` across the job's processes: same arguments, same three styles.

    The first time a model (or `Params`) and an optimiser state are seen, rank 0's are
    broadcast to every rank (`broadcast_`). Each step's gradients and loss are averaged over
    ranks (`GradAverager`, or `reducer`) before the update. `progress` and the root-only
    `callbacks` (loggers, checkpoints: `ProgressBar`, `CSVLogger`, `ModelCheckpoint`, or any
    with ``root_only = True``) take effect on rank 0 only; the others run everywhere, and
    see the averaged loss. Initialises the job (`init`) if needed. `bucket_mb`: the size of
    the gradient buckets whose allreduce starts during the backward pass (`GradAverager`;
    None: one allreduce after it).

    Every rank must make the same calls with data of the same number of batches (use
    `shard`). A `CommError` (a rank died, hangs, or fell out of step) aborts the job after
    printing which rank, operation and step.
    """
    from fluxrs.autodiff import Params
    from fluxrs.optimise.rules import Rule
    from fluxrs.train import grad_reducer, train_ as plain_train_
    b = init() if _backend is None else _backend
    try:
        if b.size > 1:
            if len(args) == 3:
                target, _, opt = args
                if _first_sight(target):
                    broadcast_(target)
                if not isinstance(target, Params) and opt is not None and not isinstance(opt, Rule) \
                        and _first_sight(opt):
                    _broadcast_opt(b, opt, 0)
            elif len(args) == 2 and isinstance(args[1], Rule) and args[1].params is not None \
                    and _first_sight(args[1].params):
                broadcast_(args[1].params)
        if b.rank != 0:
            progress = False
        if callbacks is not None:
            kwargs["callbacks"] = root_only(callbacks)
        with grad_reducer(reducer if reducer is not None else _reducer(bucket_mb)):
            return plain_train_(loss, *args, progress=progress, **kwargs)
    except CommError as e:
        if b.size > 1:
            sys.stderr.write(f"[fluxrs.distributed] {type(e).__name__}: {e}\n[fluxrs.distributed] rank {b.rank}: "
                             "aborting the job\n")
            b.abort(1)
        raise


def save(path: Any, model: Any, opt_state: Any = None, *, loader: ShardedLoader | None = None, **meta: Any) -> None:
    """``fx.save`` on rank 0 only, then a barrier, so that no rank reads the file early.

    With `loader` (the `ShardedLoader` trained on), the file also records what fixes the
    data order, for `load_checkpoint`: the shuffling seed, the passes done and the global
    batch. Save ``epoch=`` too (and ``rng=fx.random.get_state()``) to resume exactly.
    """
    from fluxrs.io import save as plain_save
    b = backend()
    if loader is not None:
        meta["shard"] = loader.state()
    if b.rank == 0:
        plain_save(path, model, opt_state, **meta)
    b.barrier(f"barrier after saving {os.fspath(path)!r}")


def load_checkpoint(path: Any, model: Any, opt_state: Any = None, *, loader: ShardedLoader | None = None,
                    strict: bool = True) -> int:
    """``fx.load_checkpoint`` for a job of any number of ranks, including another number than
    the job that saved it: rank 0 reads the file (model, optimiser state, its random
    generator) and broadcasts the model and optimiser state to every rank; every rank gets
    the epoch to continue from, which it returns (for ``epochs(n, start=...)``). With
    `loader` (this job's `ShardedLoader`), its seed and epoch are set from the file, so the
    next pass continues the saved run's data order (see "Resuming" in the module's
    documentation); a loader whose global batch differs from the saved run's gets a warning.
    A file that cannot be loaded raises `fx.io.CheckpointError` on every rank.
    """
    import warnings

    from fluxrs.io import CheckpointError, load as plain_load, load_checkpoint as plain_load_checkpoint
    b = backend()
    err, epoch, shard_state = None, 0, None
    if b.rank == 0:
        try:
            ckpt = plain_load(path)
            epoch = plain_load_checkpoint(ckpt, model, opt_state, strict=strict)
            shard_state = ckpt.meta.get("shard")
        except Exception as e:  # every rank must learn of it, or the others would wait for rank 0
            err = e
    why, epoch, shard_state = b.broadcast_object((None if err is None else f"{type(err).__name__}: {err}", epoch,
                                                  shard_state), 0, "broadcast of the checkpoint's epoch")
    if err is not None:
        raise err
    if why is not None:
        raise CheckpointError(f"load_checkpoint({os.fspath(path)!r}) failed on rank 0: {why}")
    broadcast_(model, opt_state)
    _first_sight(model)  # train_ need not broadcast them again
    if opt_state is not None:
        _first_sight(opt_state)
    if loader is not None:
        if shard_state is None:
            warnings.warn(f"load_checkpoint: {os.fspath(path)!r} records no data order (save it with "
                          "fx.distributed.save(..., loader=sharded)): the loader keeps its own seed and epoch",
                          UserWarning, stacklevel=2)
        else:
            loader.seed, loader.epoch = int(shard_state["seed"]), int(shard_state["epoch"])
            mine = loader.size * loader.loader.batchsize
            if shard_state.get("global_batch") != mine or shard_state.get("nobs") != loader.loader.nobs:
                warnings.warn(f"load_checkpoint: the saved run trained on global batches of "
                              f"{shard_state.get('global_batch')} of {shard_state.get('nobs')} observations, this "
                              f"job on {mine} ({loader.size} ranks x {loader.loader.batchsize}) of "
                              f"{loader.loader.nobs}: the steps will see other batches than the saved run would have",
                              UserWarning, stacklevel=2)
    return int(epoch)
