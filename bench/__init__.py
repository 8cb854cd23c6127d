"""lira's benchmarks, outside the package: training throughput (bench/training.py), the attack
stage at the papers' scale (bench/attacks.py), the GPU check (bench/gpu_check.py and .sh), and
the PyTorch baseline. Run them from the repository root as modules: `python -m bench.training ...`."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CIFAR-10 subset of the GPU check's vectorized run; gpu_check.sh copies it there from
# ../shared/data (data_cache/ is ignored by git and travels to the GPU machine).
CIFAR10_SUBSET = ROOT / "data_cache" / "cifar10_6k.npz"


def child_env() -> dict:
    """PYTHONPATH for a child process that imports bench (as `python -c ...` does) from anywhere."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
