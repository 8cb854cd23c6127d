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
import io
import subprocess
from pathlib import Path

import jax
import numpy as np

from lira.config import Config
from lira.data import load_dataset, mislabel
from lira.run import layout, lock, masks, record_types, records, verify
from lira.stages import preflight
from lira.training import loop
from lira.training.models import canonical_arch, import_arch, uses_batch_norm

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets")


def resolve(config: Config) -> Config:
    """The config as the run records it: the canonical arch name, and the backend's
    models_per_step and dtype in place of 0 and None. Validates first; reads and computes nothing
    (a `module:factory` arch is imported: the command names it)."""
    config.validate()
    arch = canonical_arch(import_arch(config.model.arch))  # the command names it: its code may be imported
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
    in `logdir`. The flags and the run directory are checked before the dataset is loaded; a
    resume checks the data against the fingerprint the run recorded (runs recorded without one are
    not checked) before anything is written or compiled."""
    config = resolve(config)
    training = config.training
    start, stop = masks.parse_slice(shadow_ids, training.num_shadows)
    start, stop = process_share(
        start, stop, training.models_per_step, jax.process_index(), jax.process_count()
    )
    logdir = Path(logdir)
    verify.check_logdir(logdir)
    recorded, unreadable = _recorded_run(logdir, config)

    dataset = load_dataset(config.data.dataset, config.data.data_dir, config.data.pool_size)
    preflight.check_training(config, dataset, stop - start)
    fingerprint = dataset.fingerprint()  # of the data as loaded, before the canaries' labels change
    if recorded is not None:  # before labels.npy is rewritten from data that may have changed
        records.check_fingerprint(logdir, recorded, fingerprint)
    canaries, labels = mislabel(dataset.y_train, dataset.num_classes, config.data.canaries, training.seed)
    dataset = dataclasses.replace(dataset, y_train=labels)
    keep = masks.make_keep(
        training.num_shadows, len(dataset.y_train), training.pkeep, training.seed, canaries=canaries
    )
    if unreadable is not None:
        _check_repairable(logdir, keep, unreadable)
    guarantee = _guarantee(recorded, config, keep)
    if guarantee is not None:  # the trainer adds the noise the accountant picked
        training = dataclasses.replace(
            training, dp_noise_multiplier=guarantee["noise_multiplier"], dp_target_epsilon=None
        )
        print(f"DP-SGD: ({guarantee['epsilon']:.3g}, {guarantee['delta']:g})-DP, noise multiplier "
              f"{guarantee['noise_multiplier']:.4g}, clip norm {guarantee['clip_norm']:g}.")  # fmt: skip
    if jax.process_index() == 0:
        write_run_files(
            logdir, config, dataset, keep, canaries, guarantee, fingerprint, unreadable is not None
        )
    if start == stop:
        return logdir
    loop.train_models(
        logdir=logdir, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
        y_test=dataset.y_test, num_classes=dataset.num_classes, keep=keep, arch=config.model.arch,
        config=training, model_ids=(start, stop), conv_impl=config.model.conv_impl, dtype=config.model.dtype,
        pixels=dataset.pixels, progress=progress,
    )  # fmt: skip
    return logdir


def _guarantee(recorded: records.RunRecord | None, config: Config, keep: np.ndarray) -> dict | None:
    """The run's DP guarantee (None without DP): from its record when resuming the same run
    (calibrating the noise for --dp_target_epsilon takes a while), else from the accountant."""
    if not config.training.dp:
        return None
    if recorded is not None and recorded.dp is not None:
        return recorded.dp
    from lira import dp  # DP only: an accelerator image may lack jax-privacy

    return dp.account(config.training, keep).to_json()


def write_run_files(logdir: Path, config: Config, dataset, keep: np.ndarray, canaries: np.ndarray | None = None,
                    guarantee: dict | None = None, fingerprint: str | None = None,
                    repair: bool = False) -> None:  # fmt: skip
    """keep.npy, labels.npy (and canaries.npy), then config.json of a run: what every later stage
    reads first. keep and labels are rewritten only where they differ from what the flags and seed
    give (a resume repairs an edited file, with a note); config.json records their sha256, which
    the later stages check, and the data's fingerprint (default: `dataset`'s, which must then be
    as loaded: no canaries). Its other entries ("inference", "whitebox") are kept: a re-run keeps
    the query stage's --queries guard. repair: config.json was unreadable (records.update_record)."""
    files = {
        layout.KEEP: _write_if_changed(logdir / layout.KEEP, keep),
        layout.LABELS: _write_if_changed(logdir / layout.LABELS, dataset.y_train.astype(np.int32)),
    }
    if canaries is not None and len(canaries):
        layout.save_npy(logdir / layout.CANARIES, canaries)
    data = {**dataset.facts(), "fingerprint": fingerprint or dataset.fingerprint()}
    records.update_record(
        logdir, repair=repair, flags=config.flat(), data=data, versions=_versions(), git_commit=_git_commit(),
        dp=guarantee, files=files,
    )  # fmt: skip


def _write_if_changed(path: Path, array: np.ndarray) -> str:
    """Writes `array` as .npy unless `path` holds those bytes already; their sha256."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    if path.exists() and not path.is_symlink():
        if path.read_bytes() == data:
            return record_types.sha256(data)
        print(f"Note: {path} is not what these flags and --seed give (edited, or written by another lira?); "
              "rewriting it.")  # fmt: skip
    layout.atomic_write(path, lambda f: f.write(data), "wb")
    return record_types.sha256(data)


def process_share(start: int, stop: int, models_per_step: int, process: int, num_processes: int):
    """The part of models [start, stop) that process `process` of `num_processes` trains.

    Contiguous, in whole steps of models where possible, so each process compiles one step
    shape; the shares cover the range exactly once. A process may get an empty share.
    """
    steps = -(-(stop - start) // models_per_step)
    per_process = -(-steps // num_processes)
    first = min(stop, start + process * per_process * models_per_step)
    return first, min(stop, first + per_process * models_per_step)


def _recorded_run(logdir: Path, config: Config) -> tuple[records.RunRecord | None, str | None]:
    """(the record of the run to resume, None for a new one; why config.json is unreadable, None
    if it is not). A run with other settings is refused, unless nothing was computed under them
    (a first run that failed, say out of memory): then these settings replace it, with a note."""
    if not (logdir / layout.CONFIG).exists():
        return None, None
    try:
        record = records.load_record(logdir)
    except layout.RunDirError as error:
        return None, str(error)
    changed = config.result_differences(record.config)
    if not changed:
        return record, None
    computed = _computed(logdir)
    if computed:
        raise ValueError(
            f"{logdir} holds a run made with other settings ({'; '.join(changed)}). "
            f"Re-run with the same flags to resume it, or choose another --logdir ({computed} would be lost)."
        )
    print(f"Note: {logdir} holds a run made with other settings ({'; '.join(changed)}) that computed nothing "
          "(no checkpoint, logits or white-box file); these settings replace it.")  # fmt: skip
    if jax.process_index() == 0:
        for name in (layout.TRAIN_LOG, layout.CANARIES):  # the old settings' log rows and canaries
            (logdir / name).unlink(missing_ok=True)
        records.update_record(logdir, inference=None, whitebox=None)
    return None, None


def _computed(logdir: Path) -> str | None:
    """What the run in `logdir` has computed ('checkpoints', ...), None if nothing; a slice being
    trained now (its lock held) counts, though it has saved nothing yet."""
    ckpt = logdir / layout.CKPT_DIR
    found = []
    if ckpt.exists():
        files = [p for p in ckpt.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(ckpt).parts)]  # fmt: skip
        training = [p for p in ckpt.glob(".models_*.lock") if _held(p)]
        if files or training:
            found.append("its checkpoints")
    if layout.available_logits(logdir):
        found.append("its logits")
    if list((logdir / layout.WHITEBOX_DIR).glob("[0-9]*.npy")):
        found.append("its white-box signals")
    return ", ".join(found) or None


def _held(lock_path: Path) -> bool:
    held = lock.try_acquire(lock_path)
    if held is not None:
        held.release()
    return held is None


def _check_repairable(logdir: Path, keep: np.ndarray, unreadable: str) -> None:
    """Lets these flags rewrite an unreadable config.json only if they are the run's own: keep.npy
    (where it exists) must be what they and the seed draw."""
    path = logdir / layout.KEEP
    if path.exists():
        try:
            on_disk = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            on_disk = None
        if on_disk is None or on_disk.shape != keep.shape or not np.array_equal(on_disk, keep):
            raise layout.RunDirError(
                f"{unreadable.removesuffix('.')}; these flags cannot: {path} is not what they and --seed draw, so "
                "they are another run's. Give this run's flags, or choose another --logdir."
            )
    print(f"Note: {unreadable.removesuffix('.')}; rewriting it from these flags "
          f"({'keep.npy is what they draw' if path.exists() else 'no keep.npy yet'}).")  # fmt: skip


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
