"""What a notebook (notebooks/*.ipynb) needs around the studies: which run to read, where to save
its figures, and the pool's images.

The notebooks are executed by experiments/notebooks.py (and reproduce.py --notebooks) with the
run and the figures' folder in the environment, and opened by hand with neither:

    LIRA_LOGDIR       the run directory (default DEFAULT_LOGDIR, the cpu-scale reproduction; where
                      it has not been made, the demo run ./run.sh writes, DEMO_LOGDIR, with a note)
    LIRA_FIGURES      where the PNGs go (default docs/figures)
    LIRA_NUM_TARGETS  targets attacked in turn (default: the notebook's choice)

Relative paths are taken from the repository root, so a notebook (whose working folder is
notebooks/) and a script run from the root name the same files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from lira import data
from lira.report import plots
from lira.run.reader import Run, read_run
from lira.signals import ProbabilitySignal

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOGDIR = "exp/c10_cpu"
DEMO_LOGDIR = "exp/demo"
DEFAULT_PROBABILITY = ProbabilitySignal()  # RMIA's signal as the attack stage's defaults


def resolve_path(path: str | os.PathLike) -> Path:
    """`path`, a relative one taken from the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def logdir_from_env(default: str = DEFAULT_LOGDIR) -> Path:
    """The run directory a notebook reads: $LIRA_LOGDIR, else `default` (the cpu-scale run), else,
    where that run has not been made but ./run.sh's demo has, the demo (a note says so): a notebook
    opened after ./run.sh runs rather than fails."""
    if os.environ.get("LIRA_LOGDIR"):
        return resolve_path(os.environ["LIRA_LOGDIR"])
    path, demo = resolve_path(default), resolve_path(DEMO_LOGDIR)
    if default == DEFAULT_LOGDIR and not path.exists() and demo.exists():
        print(f"Note: no {default} (python experiments/reproduce.py --scale=cpu makes it, about 70 minutes "
              f"on 2 cores); reading the demo run {DEMO_LOGDIR} that ./run.sh wrote instead: 32 cnn32 models "
              "on the digits, queried once, so the figures are the demo's, not the paper's setting.")  # fmt: skip
        return demo
    return path


def figures_from_env() -> Path:
    """Where a notebook saves its PNGs: $LIRA_FIGURES, else docs/figures."""
    return resolve_path(os.environ.get("LIRA_FIGURES") or "docs/figures")


def num_targets_from_env(default: int | None = None) -> int | None:
    """$LIRA_NUM_TARGETS (targets attacked in turn), else `default`; None = every model."""
    value = os.environ.get("LIRA_NUM_TARGETS")
    return int(value) if value else default


def save_figure(fig, name: str, dpi: int = 100) -> Path:
    """Writes `fig` as figures_from_env()/name, atomically (PNG at a modest dpi: small files)."""
    path = figures_from_env() / name
    plots.save_figure(fig, path, dpi=dpi)
    return path


def load_run(
    logdir: str | os.PathLike,
    probability_signal: ProbabilitySignal | None = DEFAULT_PROBABILITY,
    whitebox: bool = False,
) -> Run:
    """A run directory (relative: from the repository root) and its signals, read once: RMIA's
    probability signal as the attack stage's default (None leaves it out, and the RMIA attacks
    with it), the white-box signals with `whitebox`."""
    return read_run(resolve_path(logdir)).with_signals(probability_signal, whitebox=whitebox)


def pool_images(run: Run) -> np.ndarray | None:
    """uint8 [N, H, W, C] of the pool; None for tabular data, or, with a warning that says why,
    when the dataset cannot be loaded here. A relative npz: path in the config is read from the
    repository root, where the stages are run."""
    source = run.record.config.data
    spec = source.dataset
    if spec.startswith("npz:") and not Path(spec[4:]).expanduser().is_absolute():
        spec = "npz:" + str(resolve_path(spec[4:]))
    try:
        return data.load_raw_images(spec, source.data_dir, source.pool_size)
    except data.DatasetError as error:
        warnings.warn(f"No images of the pool: {error}", stacklevel=2)
        return None
