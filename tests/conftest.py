"""Shared test set-up: JAX on the CPU with the scripts' XLA:CPU flags, and where the offline data lives."""

import os
from pathlib import Path

from lira import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
xla_flags.add_cpu_flags()  # as lira.cli.run does for the scripts, before JAX starts

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
