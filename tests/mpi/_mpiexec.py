"""A working ``mpiexec`` for the tests that launch MPI jobs, or why there is none (their skip reason)."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys


@functools.lru_cache(maxsize=None)
def find() -> tuple[str | None, str, bool]:
    """(mpiexec, why not, is MPICH's hydra): skip reasons when MPI is unusable here."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install 'fluxrs[mpi]')", False
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        return None, "no mpiexec next to this Python or on PATH (pip install mpich)", False
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'size={c.Get_size()}') if c.Get_rank() == 0 else None"
    try:
        r = subprocess.run([exe, "-n", "2", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, f"{exe} -n 2 did not start two processes within 60 s", False
    if r.returncode != 0 or r.stdout.split() != ["size=2"]:
        return None, (f"{exe} -n 2 does not run a 2-process mpi4py job (mpiexec from another MPI than mpi4py "
                      f"loads?): rc={r.returncode} out={r.stdout.strip()!r} err={r.stderr.strip()[-300:]!r}"), False
    v = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return exe, "", "HYDRA" in v.upper()
