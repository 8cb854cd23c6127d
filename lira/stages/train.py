"""The train stage as a library call: what experiments/train.py runs, and what tests and
notebooks can call directly.

    from lira import config
    from lira.stages import train
    cfg = config.Config().replace(dataset="digits", arch="cnn32", epochs=20)
    train.train("exp/demo", cfg)
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
from pathlib import Path

import jax
import numpy as np

from lira.config import Config
from lira.data import load_dataset, mislabel
from lira.run import layout, masks
from lira.training import loop
from lira.training.models import canonical_arch, uses_batch_norm

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets")


def resolve(config: Config) -> Config:
    """The config as the run records it: the canonical arch name, and the backend's
    models_per_step and dtype in place of 0 and None. Validates first; reads and computes nothing."""
    config.validate()
    arch = canonical_arch(config.model.arch)
    if config.training.dp and uses_batch_norm(arch):
        raise ValueError(
            f"--arch={arch} has BatchNorm, which DP-SGD cannot clip per example (its batch statistics mix "
            "examples); under --dp_noise_multiplier or --dp_target_epsilon use a model without it "
            "(mlp or a cnn: cnn16, cnn32, cnn64)."
        )
    if config.data.pool_size is not None and config.data.canaries > config.data.pool_size:
        raise ValueError(f"--canaries={config.data.canaries} exceeds --pool_size={config.data.pool_size}.")
    models_per_step = config.training.models_per_step or loop.default_models_per_step(arch)
    return config.replace(
        arch=arch, models_per_step=models_per_step, dtype=config.model.dtype or loop.default_dtype()
    )


def train(logdir: str | Path, config: Config, shadow_ids: str | None = None, progress: bool = True) -> Path:
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
    canaries, labels = mislabel(dataset.y_train, dataset.num_classes, config.data.canaries, training.seed)
    dataset = dataclasses.replace(dataset, y_train=labels)
    keep = masks.make_keep(
        training.num_shadows, len(dataset.y_train), training.pkeep, training.seed, canaries=canaries
    )
    guarantee = _guarantee(logdir, config, keep)
    if guarantee is not None:  # the trainer adds the noise the accountant picked
        training = dataclasses.replace(
            training, dp_noise_multiplier=guarantee["noise_multiplier"], dp_target_epsilon=None
        )
        print(f"DP-SGD: ({guarantee['epsilon']:.3g}, {guarantee['delta']:g})-DP, noise multiplier "
              f"{guarantee['noise_multiplier']:.4g}, clip norm {guarantee['clip_norm']:g}.")  # fmt: skip
    if jax.process_index() == 0:
        write_run_files(logdir, config, dataset, keep, canaries, guarantee)
    if start == stop:
        return logdir
    loop.train_models(
        logdir=logdir, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
        y_test=dataset.y_test, num_classes=dataset.num_classes, keep=keep, arch=config.model.arch,
        config=training, model_ids=(start, stop), conv_impl=config.model.conv_impl, dtype=config.model.dtype,
        pixels=dataset.pixels, progress=progress,
    )  # fmt: skip
    return logdir


def _guarantee(logdir: Path, config: Config, keep: np.ndarray) -> dict | None:
    """The run's DP guarantee (None without DP): from config.json when resuming the same run
    (calibrating the noise for --dp_target_epsilon takes a while), else from the accountant."""
    if not config.training.dp:
        return None
    if (logdir / layout.CONFIG).exists():
        recorded = layout.load_record(logdir).dp
        if recorded is not None:
            return recorded
    from lira import dp  # DP only: an accelerator image may lack jax-privacy

    return dp.account(config.training, keep).to_json()


def write_run_files(logdir: Path, config: Config, dataset, keep: np.ndarray, canaries: np.ndarray | None = None,
                    guarantee: dict | None = None) -> None:  # fmt: skip
    """config.json, keep.npy, labels.npy (and canaries.npy) of a run: what every later stage
    reads first."""
    record = layout.RunRecord(
        config=config, data=dataset.facts(), versions=_versions(), git_commit=_git_commit(), dp=guarantee
    )
    layout.save_record(logdir, record)
    layout.save_npy(logdir / layout.KEEP, keep)
    layout.save_npy(logdir / layout.LABELS, dataset.y_train.astype(np.int32))
    if canaries is not None and len(canaries):
        layout.save_npy(logdir / layout.CANARIES, canaries)


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
