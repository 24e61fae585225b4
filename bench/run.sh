#!/usr/bin/env bash
# fluxrs benchmark, one command:
#   bash bench/run.sh              build fluxrs (release) into bench/.venv, install the peers, run everything
#   bash bench/run.sh --smoke      tiny sizes, 1 round, fluxrs + numpy only
#   bash bench/run.sh --no-build   reuse the fluxrs already installed in bench/.venv
#   any other argument goes to bench/run.py (see `python bench/run.py --help`)
#
# The peers live in bench/.venv (git-ignored), never in the test environment. PyTorch from PyPI is
# the CUDA build: its wheel imports only with its nvidia-* dependencies present (about 2.6 GB of
# downloads, 5.9 GB installed, with jax); it runs on the CPU all the same.
# Environment: PYTHON (the interpreter that creates the venv, default python3),
# BENCH_VENV (default bench/.venv), BENCH_PEERS (default "torch jax optax").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # the repository root, wherever it is cloned
VENV="${BENCH_VENV:-bench/.venv}"
PY="$VENV/bin/python"
PEERS="${BENCH_PEERS:-torch jax optax}"

build=1
smoke=0
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --smoke) smoke=1; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done

if [ ! -x "$PY" ]; then
  echo "[bench] creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi

if ! "$PY" -c "import numpy, maturin" 2>/dev/null; then
  echo "[bench] installing numpy and maturin into $VENV"
  "$PY" -m pip install -q numpy "maturin>=1.7,<2"
fi

if [ "$build" = 1 ]; then
  # A release wheel, installed (not editable): the benchmark measures what users install, and the
  # build does not touch python/fluxrs/_core*.so of a developer's editable install.
  echo "[bench] building fluxrs (release) into $VENV"
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' EXIT
  "$VENV/bin/maturin" build --release --quiet -i "$PY" -o "$wheels"
  "$PY" -m pip install -q --force-reinstall --no-deps "$wheels"/fluxrs-*.whl
  "$PY" -m pip install -q "$wheels"/fluxrs-*.whl   # its dependencies, if any are missing
fi
"$PY" -c "import fluxrs" || { echo "[bench] fluxrs is not importable from $VENV: run without --no-build" >&2; exit 1; }

if [ "$smoke" = 0 ]; then
  if ! "$PY" -c "import torch, jax, optax" 2>/dev/null; then
    echo "[bench] installing the peers into $VENV: $PEERS (PyTorch's CUDA build from PyPI: several GB)"
    start=$SECONDS
    "$PY" -m pip install -q $PEERS
    echo "[bench] peers installed in $((SECONDS - start)) s"
  fi
fi

exec "$PY" bench/run.py "${args[@]}"
