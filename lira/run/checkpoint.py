"""Checkpoints of stacked training states, one folder per slice of models.

    ckpt/models_00000-00016/epoch_00042.npz

A slice's folder keeps its latest completed epoch; the slice is finished when that epoch equals
the configured number of epochs. Each checkpoint is written to a temporary name and renamed into
place, then older epochs are removed, so a crash at any moment leaves a complete checkpoint.

Why not orbax: under multi-process JAX, orbax coordinates every save across all processes (and
refuses process-local arrays), while here each process trains and saves its own disjoint slices
on its own schedule. A flat .npz per slice needs no coordination and restores bit-exactly.
"""

from __future__ import annotations

import re
import threading
import time
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

    def save(self, directory: Path, epoch: int, state, then: Callable[[], None] | None = None) -> float:
        """Starts writing `state` as `epoch`; returns the seconds the caller was kept."""
        tic = time.perf_counter()
        self._join()
        # np.array copies: on the CPU device_get may return views of buffers the caller donates next.
        flat = {name: np.array(leaf) for name, leaf in _named_leaves(jax.device_get(state)).items()}
        self._thread = threading.Thread(target=self._run, args=(directory, epoch, flat, then), daemon=True)
        self._thread.start()
        return time.perf_counter() - tic

    def wait(self) -> None:
        """Blocks until the last write is on disk; raises its error, if any."""
        self._join()

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


def _write(directory: Path, epoch: int, flat: dict) -> None:
    directory = Path(directory)
    layout.atomic_write(directory / f"epoch_{epoch:05d}.npz", lambda f: np.savez(f, **flat), "wb")
    for old in _epochs(directory):
        if old != epoch:
            (directory / f"epoch_{old:05d}.npz").unlink(missing_ok=True)


def restore(directory: Path, epoch: int, abstract_state):
    """Loads epoch `epoch` into the structure, dtypes and shardings of `abstract_state`
    (a pytree of jax.ShapeDtypeStruct)."""
    path = Path(directory) / f"epoch_{epoch:05d}.npz"
    with np.load(path) as archive:
        flat = {name: archive[name] for name in archive.files}
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
