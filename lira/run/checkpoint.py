"""Checkpoints of stacked training states, one folder per slice of models.

    ckpt/models_00000-00016/epoch_00042.npz

A slice's folder keeps its latest two completed epochs; the slice is finished when the latest
equals the configured number of epochs. Each checkpoint is written to a temporary name, fsynced
and renamed into place before any older epoch is removed, so a crash at any moment leaves a
complete checkpoint. The trainer verifies the latest (`verify`: every member's CRC) before it
resumes from it or counts the slice finished; a corrupt one (a disk that lost its last writes,
a file truncated by hand) is moved aside as `epoch_NNNNN.npz.corrupt` and the slice resumes from
the epoch before (`latest_verified_epoch`), so re-running training repairs it.

Why not orbax: under multi-process JAX, orbax coordinates every save across all processes (and
refuses process-local arrays), while here each process trains and saves its own disjoint slices
on its own schedule. A flat .npz per slice needs no coordination and restores bit-exactly.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from lira.run import layout

_SLICE_DIR = re.compile(r"models_(\d{5})-(\d{5})$")
_EPOCH_FILE = re.compile(r"epoch_(\d{5})\.npz$")


def slice_dir(logdir: Path, start: int, stop: int) -> Path:
    return Path(logdir) / layout.CKPT_DIR / f"models_{start:05d}-{stop:05d}"


def _epochs(directory: Path) -> list[int]:
    if not Path(directory).exists():
        return []
    return sorted(int(m.group(1)) for p in Path(directory).iterdir() if (m := _EPOCH_FILE.match(p.name)))


def latest_epoch(directory: Path) -> int:
    """The last completed epoch saved in `directory` (0 if none)."""
    epochs = _epochs(directory)
    return epochs[-1] if epochs else 0


class CorruptCheckpoint(layout.RunDirError):
    """A checkpoint file that does not read back whole."""


def verify(path: Path) -> None:
    """Raises CorruptCheckpoint naming `path` unless it is a whole .npz: a zip whose every member
    matches its CRC-32 and holds a readable .npy header."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member: CRC-32 and sizes
            if bad is not None:
                raise CorruptCheckpoint(f"{path}: {bad} fails its CRC-32 check")
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                        version, np.lib.format.read_array_header_2_0
                    )
                    read_header(member)
    except CorruptCheckpoint:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, OSError) and error.errno in layout.DISK_FULL:
            raise
        raise CorruptCheckpoint(
            f"{path} is not a whole checkpoint ({type(error).__name__}: {error})"
        ) from error


def latest_verified_epoch(directory: Path) -> int:
    """The last epoch in `directory` whose checkpoint verifies (0 if none). Each newer one that
    does not is named in a note and moved aside as `*.corrupt`, out of every later stage's way."""
    for epoch in reversed(_epochs(directory)):
        path = Path(directory) / f"epoch_{epoch:05d}.npz"
        try:
            verify(path)
            return epoch
        except CorruptCheckpoint as error:
            aside = path.with_name(path.name + ".corrupt")
            path.rename(aside)
            print(f"Note: {error}; moved it aside to {aside.name} and resuming from the epoch before.")
    return 0


def save(directory: Path, epoch: int, state) -> None:
    """Writes a host copy of `state` (any flax-serializable pytree) as epoch `epoch`."""
    _write(directory, epoch, _named_leaves(jax.device_get(state)))


class AsyncSaver:
    """Checkpoints written by a background thread, so training goes on while the file is written.

    save() copies the state to the host on the caller's thread (the caller may then donate the
    device buffers) and returns; the thread writes it as save() would, atomically, then runs the
    save's `then` callback (the trainer appends the epochs' log rows there, so the log never
    runs ahead of a checkpoint). At most one write is in flight: a second save() waits for the
    first, which bounds the host memory to two copies of the state. A failed write raises on the
    next save() or on wait().
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, directory: Path, epoch: int, state, then: Callable[[], None] | None = None,
             log_rows: list[dict] | None = None) -> float:  # fmt: skip
        """Starts writing `state` (and `log_rows`: saved_log_rows) as `epoch`; returns the
        seconds the caller was kept."""
        tic = time.perf_counter()
        self._join()
        # np.array copies: on the CPU device_get may return views of buffers the caller donates next.
        flat = {name: np.array(leaf) for name, leaf in _named_leaves(jax.device_get(state)).items()}
        if log_rows is not None:
            flat[LOG_ROWS] = np.frombuffer(json.dumps(log_rows, sort_keys=True).encode(), np.uint8)
        self._thread = threading.Thread(target=self._run, args=(directory, epoch, flat, then), daemon=True)
        self._thread.start()
        return time.perf_counter() - tic

    def wait(self) -> None:
        """Blocks until the last write is on disk; raises its error, if any."""
        self._join()

    def settle(self) -> None:
        """Blocks until the last write has ended, however it ended (for clean-up after an error,
        which the write's own error must not mask)."""
        if self._thread is not None:
            self._thread.join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, directory, epoch, flat, then) -> None:
        try:
            _write(directory, epoch, flat)
            if then is not None:
                then()
        except BaseException as error:  # re-raised on the training thread
            self._error = error


KEPT_EPOCHS = 2  # the latest and the one to fall back on should the latest not verify
# The train_log.jsonl rows of the epochs a checkpoint covers, saved with it (JSON, as uint8): the
# log is appended once the checkpoint is on disk, so a kill in between would lose them otherwise;
# the trainer appends what the log lacks when it resumes (saved_log_rows).
LOG_ROWS = "__train_log_rows__"


def saved_log_rows(directory: Path, epoch: int) -> list[dict]:
    """The log rows saved with epoch `epoch`'s checkpoint ([] for a checkpoint saved without)."""
    with np.load(Path(directory) / f"epoch_{epoch:05d}.npz") as archive:
        if LOG_ROWS not in archive.files:
            return []
        return json.loads(archive[LOG_ROWS].tobytes())


def _write(directory: Path, epoch: int, flat: dict) -> None:
    """Writes epoch `epoch` (atomic_write: fsynced and renamed into place), then removes all but
    the newest KEPT_EPOCHS epochs."""
    directory = Path(directory)
    layout.atomic_write(directory / f"epoch_{epoch:05d}.npz", lambda f: np.savez(f, **flat), "wb")
    for old in _epochs(directory)[:-KEPT_EPOCHS]:
        (directory / f"epoch_{old:05d}.npz").unlink(missing_ok=True)


def restore(directory: Path, epoch: int, abstract_state):
    """Loads epoch `epoch` into the structure, dtypes and shardings of `abstract_state`
    (a pytree of jax.ShapeDtypeStruct)."""
    path = Path(directory) / f"epoch_{epoch:05d}.npz"
    logdir = Path(directory).parent.parent
    try:
        verify(path)
    except CorruptCheckpoint as error:
        raise CorruptCheckpoint(
            f"{error}; re-run experiments/train.py --logdir={logdir} with the run's flags to repair it."
        ) from None
    with np.load(path) as archive:
        flat = {name: archive[name] for name in archive.files if name != LOG_ROWS}
    expected = _named_leaves(abstract_state)
    if list(flat) != list(expected):
        raise layout.RunDirError(
            f"{path} does not hold this model's state (differing entries: "
            f"{sorted(set(flat) ^ set(expected))[:5]}); was it trained with another --arch?"
        )
    leaves = []
    for name, leaf in expected.items():
        if flat[name].shape != leaf.shape:
            raise layout.RunDirError(f"{path}: {name} has shape {flat[name].shape}, expected {leaf.shape}.")
        leaves.append(jax.device_put(flat[name].astype(leaf.dtype), leaf.sharding))
    return jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)


def _named_leaves(tree) -> dict:
    """{'.params['Dense_0']['kernel']': leaf, ...} in the tree's leaf order."""
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def finished_slices(logdir: Path, epochs: int) -> list[tuple[int, int, Path]]:
    """(start, stop, folder) of every slice whose training reached `epochs`, sorted by start."""
    root = Path(logdir) / layout.CKPT_DIR
    found = []
    for folder in sorted(root.glob("models_*")) if root.exists() else []:
        match = _SLICE_DIR.match(folder.name)
        if match and latest_epoch(folder) >= epochs:
            found.append((int(match.group(1)), int(match.group(2)), folder))
    return found
