"""The train stage as a library call: what experiments/train.py runs, and what tests and
notebooks can call directly.

    from lira import config
    from lira.stages import train
    cfg = config.Config().replace(dataset="digits", arch="cnn32", epochs=20)
    train.train(cfg, "exp/demo")
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import jax
import numpy as np

from lira.config import Config
from lira.data import load_dataset
from lira.run import layout
from lira.training import loop, masks
from lira.training.models import canonical_arch

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets")


def resolve(config: Config) -> Config:
    """The config as the run records it: the canonical arch name and the backend's
    models_per_step in place of 0. Validates first; reads and computes nothing."""
    config.validate()
    arch = canonical_arch(config.model.arch)
    models_per_step = config.training.models_per_step or loop.default_models_per_step(arch)
    return config.replace(arch=arch, models_per_step=models_per_step)


def train(config: Config, logdir: str | Path, shadow_ids: str | None = None, progress: bool = True) -> Path:
    """Trains (or resumes) the shadow models `shadow_ids` ("START:STOP", default all) of the run
    in `logdir`. Every check runs before the dataset is loaded or anything is compiled."""
    config = resolve(config)
    training = config.training
    start, stop = masks.parse_slice(shadow_ids, training.num_shadows)
    start, stop = process_share(
        start, stop, training.models_per_step, jax.process_index(), jax.process_count()
    )
    logdir = Path(logdir)
    _check_same_run(logdir, config)

    dataset = load_dataset(config.data.dataset, config.data.data_dir, config.data.pool_size)
    keep = masks.make_keep(training.num_shadows, len(dataset.y_train), training.pkeep, training.seed)
    if jax.process_index() == 0:
        write_run_files(logdir, config, dataset, keep)
    if start == stop:
        return logdir
    loop.train_models(
        logdir=logdir, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
        y_test=dataset.y_test, num_classes=dataset.num_classes, keep=keep, arch=config.model.arch,
        config=training, model_ids=(start, stop), conv_impl=config.model.conv_impl, progress=progress,
    )  # fmt: skip
    return logdir


def write_run_files(logdir: Path, config: Config, dataset, keep: np.ndarray) -> None:
    """config.json, keep.npy and labels.npy of a run: what every later stage reads first."""
    record = layout.RunRecord(
        config=config, data=dataset.facts(), versions=_versions(), git_commit=_git_commit()
    )
    layout.save_record(logdir, record)
    layout.save_npy(logdir / layout.KEEP, keep)
    layout.save_npy(logdir / layout.LABELS, dataset.y_train.astype(np.int32))


def process_share(start: int, stop: int, models_per_step: int, process: int, num_processes: int):
    """The part of models [start, stop) that process `process` of `num_processes` trains.

    Contiguous, in whole steps of models where possible, so each process compiles one step
    shape; the shares cover the range exactly once. A process may get an empty share.
    """
    steps = -(-(stop - start) // models_per_step)
    per_process = -(-steps // num_processes)
    first = min(stop, start + process * per_process * models_per_step)
    return first, min(stop, first + per_process * models_per_step)


def _check_same_run(logdir: Path, config: Config) -> None:
    if not (logdir / layout.CONFIG).exists():
        return
    changed = config.result_differences(layout.load_record(logdir).config)
    if changed:
        raise ValueError(
            f"{logdir} holds a run made with other settings ({'; '.join(changed)}). "
            "Re-run with the same flags to resume it, or choose another --logdir."
        )


def _versions() -> dict:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["backend"] = jax.default_backend()
    out["devices"] = [str(d) for d in jax.devices()]
    return out


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
