#!/usr/bin/env bash
# The vectorized trainer on one GPU, in one time-boxed command (bench/gpu_check.py), its open
# questions first: wrn28-2 and cnn32 at the trainer's defaults against the jitted single-model
# loop (float32 and bfloat16), a real training call against its step, 1-64 models a step, the
# step with the gradient inside the vmap; then the check (64 cnn32 models on the CIFAR-10
# subset, model i against a single-model run of i), PyTorch's fp16 baseline, the white-box
# query stage and the DP-SGD step.
# Writes docs/bench/bench_gpu.json (each part as it finishes) and prints the LiRA paper's projection
# and a summary.
#
#   bash bench/gpu_check.sh                  # on the GPU machine (experiments/gpu_check.sh forwards here)
#   bash bench/gpu_check.sh --smoke          # tiny sizes on the CPU, as the tests run it
#   bash bench/gpu_check.sh --budget_s=300 --parts=probe,end_to_end
#
# The CIFAR-10 subset: ../shared/data/cifar10_6k.npz is copied into data_cache/ (ignored by
# git), which travels to a machine where ../shared does not; without it, synthetic images.
# Python: .venv/bin/python if there is one, else $PYTHON, python or python3 from PATH.
# $OUT, when set, receives the JSON and the log as they grow.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=${PYTHON:-$(command -v python || command -v python3)}
fi

data=cifar10_6k.npz
if [ -f "../shared/data/$data" ] && [ ! -f "data_cache/$data" ]; then
  mkdir -p data_cache
  cp "../shared/data/$data" "data_cache/$data"
fi

# GPU memory on demand rather than 75% of it taken at start-up, and up to 95% of it for the
# widest steps (64 WRN-28-2 a step); the peak device memory reported is then what a run used.
# Nothing changes on the CPU.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export PYTHONUNBUFFERED=1
# lira from this checkout, installed or not (pip install -e . needs setuptools, maybe the network).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

exec "$PY" -m bench.gpu_check "$@"
