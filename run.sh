#!/usr/bin/env bash
# Set-up and the main job.
#   ./run.sh          install into .venv, then the demo: train, query and attack shadow models
#                     on scikit-learn's bundled digits (no network), writing exp/demo/
#   ./run.sh test     the same install, then ruff and the whole test suite in two processes (what CI runs)
#   ./run.sh test --fast   ruff and the fast tier: the tests not marked slow (docs/testing.md)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the requirements change. The tests also need torch (requirements-bench.txt:
# the PyTorch baseline and worked example); the demo does not.
requirements=(requirements.txt)
if [ "${1:-demo}" = test ]; then
  requirements+=(requirements-bench.txt)
fi
stamp=".venv/.installed-$(cat "${requirements[@]}" pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  for file in "${requirements[@]}"; do
    .venv/bin/python -m pip install -q -r "$file"
  done
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
PY=.venv/bin/python
# glibc's malloc asks for transparent huge pages: XLA:CPU's large per-step buffers then fault in
# 2 MiB at a time, not 4 KiB (docs/performance.md). glibc reads this only when a process starts.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"

case "${1:-demo}" in
  test)
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    if [ "${2:-}" = --fast ]; then
      "$PY" -m pytest -q -m "not slow" "${@:3}"
    else
      # Two processes (pytest-xdist), each test file whole in one: the suite is mostly compiling
      # and single-threaded Python, so two use a 2-core machine's second core (docs/testing.md).
      "$PY" -m pytest -q -n "${LIRA_TEST_WORKERS:-2}" --dist loadfile "${@:2}"
    fi
    ;;
  demo)
    logdir=exp/demo
    # 8x8 images in batches of 64 are too little work for one model a step (the CPU default
    # for conv nets): four a step train the demo 2.2x faster here.
    "$PY" experiments/train.py --dataset=digits --arch=cnn32 --num_shadows=32 --epochs=20 \
      --batch_size=64 --lr=0.05 --augment=none --models_per_step=4 --logdir=$logdir \
      --progress="${PROGRESS:-true}"
    # Queried on the views the models trained on: with --augment=none, the image alone (1 query).
    "$PY" experiments/inference.py --logdir=$logdir --progress="${PROGRESS:-true}"
    "$PY" experiments/attack.py --logdir=$logdir --num_targets=32
    ;;
  *)
    echo "usage: ./run.sh [test [--fast] [pytest args]|demo]" >&2
    exit 2
    ;;
esac
