"""The files of a run directory checked as a stage reads them, each failing in one line that names
the file and the command that rewrites it: the run directory is a writable folder, and the logits
and white-box files are what the stage that wrote them recorded (dtype, shape, a size that matches
the header: a truncated file is caught from its header alone), finite, with labels in 0..C-1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lira.run import layout


def check_logdir(logdir: str | os.PathLike) -> Path:
    """`logdir` as a Path, refused unless it is (or can be created as) a folder this user can write:
    every stage writes in it (checkpoints, logits, the report)."""
    path = Path(logdir)
    if path.exists() and not path.is_dir():
        raise layout.RunDirError(f"--logdir={logdir} is a file, not a folder; give a run directory.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise layout.RunDirError(f"--logdir={logdir} cannot be created: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its folder {existing} is not writable)"
        raise layout.RunDirError(
            f"--logdir={logdir} is not writable by this user{where}; give a run directory you can write."
        )
    return path


def npy_problem(path: Path, shape: tuple, dtype=np.float32) -> str | None:
    """What is wrong with the .npy file at `path` for an array of `shape` (None entries: any size)
    and `dtype`, or None: read from its header and its size (a truncated file is caught without
    reading the data)."""
    return _inspect(path, shape, dtype)[0]


def _inspect(path: Path, shape: tuple, dtype) -> tuple[str | None, tuple[int, ...] | None]:
    """(npy_problem's answer, the shape the file's header gives: None if unreadable)."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            found_shape, fortran, found_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError) as error:
        return f"is not a readable .npy file ({error})", None
    found_shape = tuple(found_shape)
    if found_dtype != np.dtype(dtype):
        return f"has dtype {found_dtype}, expected {np.dtype(dtype)}", found_shape
    if len(found_shape) != len(shape) or any(e is not None and e != s for e, s in zip(shape, found_shape)):
        expected = ", ".join("*" if e is None else str(e) for e in shape)
        return f"has shape {found_shape}, expected [{expected}]", found_shape
    size, expected_size = os.path.getsize(path), offset + math.prod(found_shape) * found_dtype.itemsize
    if size != expected_size or fortran:
        return f"has {size} bytes where its header says {expected_size} (truncated or altered)", found_shape
    return None, found_shape


def usable(path: Path, shape: tuple) -> bool:
    """Whether the query stage's output `path` exists and is sound; a bad one is noted and so
    queried again (the query stage repairs what it wrote)."""
    if not path.exists():
        return False
    problem = npy_problem(path, shape)
    if problem is not None:
        print(f"Note: {path} {problem}; querying it again.")
    return problem is None


def check_file(path: Path, shape: tuple, logdir: Path, whitebox: bool = False) -> tuple[int, ...]:
    """The shape of the float32 .npy file `path`, refused in one line naming it when it does not
    fit `shape` or its size (read from its header alone); experiments/inference.py rewrites it."""
    problem, found_shape = _inspect(path, shape, np.float32)
    if problem is not None:
        flag = " --whitebox" if whitebox else ""
        raise layout.RunDirError(
            f"{path} {problem}; python experiments/inference.py --logdir={logdir}{flag} rewrites it."
        )
    return found_shape


def check_finite(values: np.ndarray, path: Path, model: int, what: str = "logits") -> None:
    """values [N, ...] of model `model`, read from `path`: refused naming the first examples with
    a NaN or infinite entry."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        examples = np.flatnonzero(bad)
        raise layout.RunDirError(
            f"{path} (model {model}) holds non-finite {what} on {len(examples)} examples (first: "
            f"{', '.join(map(str, examples[:5]))}): the model diverged (retrain it with a lower --lr) or the "
            "file was altered (delete it and re-run experiments/inference.py)."
        )


def check_labels(labels: np.ndarray, num_classes: int, where: str = "labels.npy") -> None:
    """labels [N] must be classes 0..C-1 of the logits' C classes (layout.labels_outside)."""
    problem = layout.labels_outside(labels, num_classes)
    if problem:
        raise layout.RunDirError(
            f"{where} holds {problem} of the logits; labels.npy is written by experiments/train.py."
        )
