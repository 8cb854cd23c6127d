"""lira's benchmarks, outside the package: training throughput (bench/training.py), the attack
stage at the papers' scale (bench/attacks.py), the GPU check (bench/gpu_check.py and .sh), and
the PyTorch baseline. Run them from the repository root as modules: `python -m bench.training ...`."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """PYTHONPATH for a child process that imports bench (as `python -c ...` does) from anywhere."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
