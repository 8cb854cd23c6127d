"""The run directory: the on-disk contract between the train, inference and attack stages.

    logdir/
      config.json        flags, dataset facts, library versions, git commit
      keep.npy           bool [M, N]: keep[m, j] = pool example j is in model m's training set
      labels.npy         int32 [N]
      ckpt/              stacked training states, one folder per slice of models
      train_log.jsonl    one JSON object per (model, epoch)
      logits/NNNNN.npy   float32 [N, Q, C] per model
      report/            written by the attack stage

Every write is atomic (write to a temporary name in the same folder, then rename), so a stage
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = "config.json"
KEEP = "keep.npy"
LABELS = "labels.npy"
TRAIN_LOG = "train_log.jsonl"
LOGITS_DIR = "logits"
CKPT_DIR = "ckpt"
REPORT_DIR = "report"


class RunDirError(ValueError):
    """A run directory is missing files or holds files that do not agree with each other."""


def atomic_write(path: Path, write_fn, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from a shared group
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npy(path: Path, array: np.ndarray) -> None:
    """Atomically writes `array` to `path` in .npy format."""
    atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb")


def save_json(path: Path, obj: Any) -> None:
    """Atomically writes `obj` as indented JSON."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), "w")


def save_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Appends rows to a JSON-lines file (one object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Reads a JSON-lines file; a torn last line (a crash mid-append) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _require(logdir: Path, name: str, stage: str) -> Path:
    path = Path(logdir) / name
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run {stage} with --logdir={logdir} first.")
    return path


def load_config(logdir: Path) -> dict:
    return json.loads(_require(logdir, CONFIG, "experiments/train.py").read_text())


def load_keep(logdir: Path) -> np.ndarray:
    """bool [M, N]."""
    keep = np.load(_require(logdir, KEEP, "experiments/train.py"))
    if keep.dtype != bool or keep.ndim != 2:
        raise RunDirError(f"keep.npy must be a bool [M, N] array, got {keep.dtype} {keep.shape}.")
    return keep


def load_labels(logdir: Path) -> np.ndarray:
    """int32 [N]."""
    return np.load(_require(logdir, LABELS, "experiments/train.py")).astype(np.int32)


def logits_path(logdir: Path, model_index: int) -> Path:
    return Path(logdir) / LOGITS_DIR / f"{model_index:05d}.npy"


def available_logits(logdir: Path) -> list[int]:
    """Model indices that have a logits file, sorted."""
    folder = Path(logdir) / LOGITS_DIR
    if not folder.exists():
        return []
    return sorted(int(p.stem) for p in folder.glob("[0-9]*.npy"))


def load_logits(logdir: Path, model_indices: list[int] | None = None, mmap: bool = True) -> np.ndarray:
    """float32 [M, N, Q, C] for the given models (all of keep.npy's models by default).

    Checks every file against keep.npy and labels.npy before returning, so a mismatch is
    reported by name rather than surfacing as a broadcasting error deep in an attack.
    """
    logdir = Path(logdir)
    keep = load_keep(logdir)
    labels = load_labels(logdir)
    num_models, num_examples = keep.shape
    if labels.shape != (num_examples,):
        raise RunDirError(f"labels.npy has shape {labels.shape} but keep.npy has N={num_examples}.")
    if model_indices is None:
        model_indices = list(range(num_models))
    missing = [m for m in model_indices if not logits_path(logdir, m).exists()]
    if missing:
        raise RunDirError(
            f"{len(missing)} logits files are missing in {logdir / LOGITS_DIR} (models {format_ranges(missing)}); "
            f"run experiments/inference.py --logdir={logdir}."
        )
    arrays = [np.load(logits_path(logdir, m), mmap_mode="r" if mmap else None) for m in model_indices]
    first = arrays[0].shape
    for m, a in zip(model_indices, arrays):
        if a.ndim != 3 or a.shape[0] != num_examples:
            raise RunDirError(
                f"{logits_path(logdir, m)} has shape {a.shape}; expected [N={num_examples}, Q, C] to match keep.npy."
            )
        if a.shape != first:
            raise RunDirError(
                f"{logits_path(logdir, m)} has shape {a.shape} but model {model_indices[0]}'s has {first}."
            )
    return np.stack(arrays).astype(np.float32, copy=False)


def format_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start, prev = [], None, None
    for i in sorted(indices):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)
