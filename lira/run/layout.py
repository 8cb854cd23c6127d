"""The run directory: the on-disk contract between the train, inference and attack stages.

    logdir/
      config.json        the run's lira.config.Config (as "flags"), dataset facts, library versions,
                         git commit, the query count once queried: lira.run.records.RunRecord
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

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lira.run import temporaries

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
    """Calls write_fn(f) on a new file under a unique temporary name beside `path` (created
    exclusively: lira.run.temporaries), then flushes, fsyncs and renames it into place, so `path`
    is either the old file or the whole new one. A full disk names `path` in its OSError."""
    path = Path(path)
    fd, tmp = temporaries.create_file(path.parent, path.name)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        _name_file(error, path)
        raise


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


def _name_file(error: BaseException, path: Path) -> None:
    """Makes an OSError that names no file (a full disk raised by write(), fsync() or
    posix_fallocate()) name `path`, the file being written."""
    if isinstance(error, OSError) and error.filename is None and error.errno is not None:
        error.filename = str(path)


class PartialNpy:
    """A .npy file being filled in place through a memory map, under a unique temporary name in
    its final folder; commit() flushes and fsyncs it and renames it into place (atomic, as
    atomic_write), discard() removes it.

    The file is created exclusively and its whole size allocated up front (posix_fallocate), so a
    full disk is an OSError(ENOSPC) here, not a SIGBUS when a page of the map is first written;
    the map is of that same open file, never of a path someone could have replaced meanwhile.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype=np.float32):
        self.path = Path(path)
        fd, self.tmp = temporaries.create_file(self.path.parent, self.path.name)
        try:
            self._file = os.fdopen(fd, "r+b")
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                      "shape": tuple(shape)}  # fmt: skip
            np.lib.format.write_array_header_1_0(self._file, header)  # what np.save writes
            self._file.flush()
            offset = self._file.tell()
            size = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
            os.posix_fallocate(fd, 0, size)
            self.array = np.memmap(self._file, dtype=dtype, mode="r+", offset=offset, shape=tuple(shape))
        except BaseException as error:
            self.discard()
            _name_file(error, self.path)
            raise

    def commit(self) -> None:
        try:
            self.array.flush()
            del self.array
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except BaseException as error:
            self.discard()
            _name_file(error, self.path)
            raise

    def discard(self) -> None:
        """Removes the temporary file (a failed or abandoned write)."""
        self.__dict__.pop("array", None)
        if getattr(self, "_file", None) is not None:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Atomically writes `array` to `path` in .npy format."""
    atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb")


def save_json(path: Path, obj: Any) -> None:
    """Atomically writes `obj` as indented JSON."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), "w")


def save_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Appends rows to a JSON-lines file (one object per line) in one write, under a flock of the
    file (trainers of other slices append to the same log). A torn last line (a process killed
    mid-append) is ended first, so it can never swallow the first of these rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            text = b"\n" + text
        os.write(fd, text)
        os.fsync(fd)
    except OSError as error:
        _name_file(error, path)
        raise
    finally:
        os.close(fd)  # drops the flock


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file, one per (model, epoch) where rows have those keys: the last
    written (a killed trainer re-runs epochs after its last checkpoint and logs them again), in the
    order they were last written. A torn line (a crash mid-append) is dropped; a line that a torn
    one ran into, as logs written before append_jsonl ended torn lines hold, keeps its last row."""
    path = Path(path)
    if not path.exists():
        return []
    rows = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines()):
        row = _json_row(line) or _json_row(line[line.rfind("{") :])  # rows are flat: no nested "{"
        if row is None:
            continue
        key = (row["model"], row["epoch"]) if "model" in row and "epoch" in row else number
        rows.pop(key, None)
        rows[key] = row
    return list(rows.values())


def _json_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


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


def labels_outside(labels, num_classes: int) -> str | None:
    """None when every label is one of the classes 0..C-1; else the fault, for a message that says
    where: "labels -1, 10 (examples 4, 7) outside the 3 classes 0..2". A -1 would otherwise be scored
    against the last class, and a C would index past the logits."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if not len(bad):
        return None
    values = format_ranges(np.unique(labels[bad]).astype(np.int64)[:10].tolist())
    examples = ", ".join(str(j) for j in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return (f"labels {values} (example{'s' if len(bad) > 1 else ''} {examples}) outside the {num_classes} "
            f"classes 0..{num_classes - 1}")  # fmt: skip


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
