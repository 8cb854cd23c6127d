"""The run directory: the on-disk contract between the train, inference and attack stages.

    logdir/
      config.json        the run's lira.config.Config (as "flags"), dataset facts, library versions,
                         git commit, the query count once queried: RunRecord
      keep.npy           bool [M, N]: keep[m, j] = pool example j is in model m's training set
      labels.npy         int32 [N] (with --canaries, the canaries' wrong labels)
      canaries.npy       int32 [K]: with --canaries=K, the mislabelled pool examples
      ckpt/              stacked training states, one folder per slice of models
      train_log.jsonl    one JSON object per (model, epoch)
      logits/NNNNN.npy   float32 [N, Q, C] per model
      whitebox/          with experiments/inference.py --whitebox, per model NNNNN_norms.npy,
                         float32 [N, Qw, L + 1]: the per-example loss-gradient norm of each of
                         the L layers with parameters and of the whole model, and
                         NNNNN_features.npy, float32 [N, Qw, F]: the penultimate activations
      report/            written by the attack stage

Every write is atomic (write to a temporary name in the same folder, then rename), so a stage
killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lira.config import Config, TrainingConfig

CONFIG = "config.json"
KEEP = "keep.npy"
LABELS = "labels.npy"
CANARIES = "canaries.npy"
TRAIN_LOG = "train_log.jsonl"
LOGITS_DIR = "logits"
CKPT_DIR = "ckpt"
REPORT_DIR = "report"
WHITEBOX_DIR = "whitebox"
WHITEBOX_KINDS = ("norms", "features")
METRICS = "metrics.json"  # in REPORT_DIR
SCORES_DIR = "scores"  # in REPORT_DIR: NAME.npy, float [T, N] per attack


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


class PartialNpy:
    """A .npy file being filled in place through a memory map, under a hidden temporary name in
    its final folder; commit() flushes it and renames it into place (atomic, as atomic_write)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype=np.float32):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial.npy")
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)

    def commit(self) -> None:
        self.array.flush()
        del self.array
        self.tmp.replace(self.path)


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


def final_accuracies(train_log: list[dict]) -> dict:
    """{"models": count, "train_acc"/"test_acc": (mean, sd)} over models, each at its last logged
    epoch (the accuracy of the model that was attacked)."""
    last = {}
    for row in train_log:
        if "model" in row and row.get("epoch", 0) >= last.get(row["model"], {}).get("epoch", -np.inf):
            last[row["model"]] = row
    out = {"models": len(last)}
    for key in ("train_acc", "test_acc"):
        values = [r[key] for r in last.values() if r.get(key) is not None and np.isfinite(r[key])]
        if values:
            out[key] = (float(np.mean(values)), float(np.std(values, ddof=1 if len(values) > 1 else 0)))
    return out


def _require(logdir: Path, name: str, stage: str) -> Path:
    path = Path(logdir) / name
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run {stage} with --logdir={logdir} first.")
    return path


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """config.json, typed: what decided the models, and what was found when the run began."""

    config: Config
    data: dict  # the pool's facts: lira.data.Dataset.facts()
    versions: dict = dataclasses.field(default_factory=dict)  # library versions, backend, devices
    git_commit: str | None = None
    queries: int | None = None  # set by the query stage
    whitebox: dict | None = None  # set by the white-box query stage: {"queries", "layers", "features"}
    dp: dict | None = None  # DP-SGD runs: the accounted guarantee, lira.dp.Guarantee.to_json()

    def training(self) -> TrainingConfig:
        """The training config the models ran with: for a DP run, with the noise multiplier the
        accountant picked for --dp_target_epsilon in place of the target."""
        training = self.config.training
        if self.dp is not None:
            training = dataclasses.replace(
                training, dp_noise_multiplier=self.dp["noise_multiplier"], dp_target_epsilon=None
            )
        return training

    def to_json(self) -> dict:
        out = {
            "flags": self.config.flat(),
            "data": self.data,
            "versions": self.versions,
            "git_commit": self.git_commit,
        }
        if self.queries is not None:
            out["inference"] = {"queries": self.queries}
        if self.whitebox is not None:
            out["whitebox"] = self.whitebox
        if self.dp is not None:
            out["dp"] = self.dp
        return out

    @classmethod
    def from_json(cls, obj: dict) -> RunRecord:
        """Fields absent from `obj` (a run made by an older lira) take their defaults."""
        return cls(
            config=Config.from_flat(_with_dtype(obj.get("flags", {}))), data=obj.get("data", {}),
            versions=obj.get("versions", {}),
            git_commit=obj.get("git_commit"), queries=(obj.get("inference") or {}).get("queries"),
            whitebox=obj.get("whitebox"), dp=obj.get("dp"),
        )  # fmt: skip


def _with_dtype(flags: dict) -> dict:
    """A run recorded before --dtype existed computed in float32."""
    return {**flags, "dtype": "float32"} if flags and "dtype" not in flags else flags


def load_record(logdir: Path) -> RunRecord:
    """config.json of the run in `logdir`."""
    return RunRecord.from_json(json.loads(_require(logdir, CONFIG, "experiments/train.py").read_text()))


def save_record(logdir: Path, record: RunRecord) -> None:
    save_json(Path(logdir) / CONFIG, record.to_json())


def load_keep(logdir: Path) -> np.ndarray:
    """bool [M, N]."""
    keep = np.load(_require(logdir, KEEP, "experiments/train.py"))
    if keep.dtype != bool or keep.ndim != 2:
        raise RunDirError(f"keep.npy must be a bool [M, N] array, got {keep.dtype} {keep.shape}.")
    return keep


def load_labels(logdir: Path) -> np.ndarray:
    """int32 [N]."""
    return np.load(_require(logdir, LABELS, "experiments/train.py")).astype(np.int32)


def load_canaries(logdir: Path) -> np.ndarray:
    """int32 [K]: the run's canaries (empty for a run made without --canaries)."""
    path = Path(logdir) / CANARIES
    return np.load(path).astype(np.int32) if path.exists() else np.zeros(0, np.int32)


def logits_path(logdir: Path, model_index: int) -> Path:
    return Path(logdir) / LOGITS_DIR / f"{model_index:05d}.npy"


def whitebox_path(logdir: Path, model_index: int, kind: str) -> Path:
    """whitebox/NNNNN_norms.npy or NNNNN_features.npy (kind: one of WHITEBOX_KINDS)."""
    return Path(logdir) / WHITEBOX_DIR / f"{model_index:05d}_{kind}.npy"


def available_whitebox(logdir: Path) -> list[int]:
    """Model indices that have both white-box files, sorted."""
    folder = Path(logdir) / WHITEBOX_DIR
    if not folder.exists():
        return []
    norms = {int(p.name[:5]) for p in folder.glob("[0-9]*_norms.npy")}
    return sorted(m for m in norms if whitebox_path(logdir, m, "features").exists())


def available_logits(logdir: Path) -> list[int]:
    """Model indices that have a logits file, sorted."""
    folder = Path(logdir) / LOGITS_DIR
    if not folder.exists():
        return []
    return sorted(int(p.stem) for p in folder.glob("[0-9]*.npy"))


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
