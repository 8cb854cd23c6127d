"""Checkpoints of stacked training states, one orbax folder per slice of models.

    ckpt/models_00000-00016/<epoch>/...

A slice's folder keeps its latest completed epoch; the training of that slice is finished when
that epoch equals the configured number of epochs. Orbax writes to a temporary folder and
renames it on commit, so a crash mid-save leaves the previous epoch intact.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lira import rundir

_SLICE_DIR = re.compile(r"models_(\d{5})-(\d{5})$")


def slice_dir(logdir: Path, start: int, stop: int) -> Path:
    return Path(logdir) / rundir.CKPT_DIR / f"models_{start:05d}-{stop:05d}"


def manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def latest_epoch(directory: Path) -> int:
    """The last completed epoch saved in `directory` (0 if none)."""
    if not Path(directory).exists():
        return 0
    mngr = manager(directory)
    try:
        return mngr.latest_step() or 0
    finally:
        mngr.close()


def save(directory: Path, epoch: int, state) -> None:
    mngr = manager(directory)
    try:
        mngr.save(epoch, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()
    finally:
        mngr.close()


def restore(directory: Path, epoch: int, abstract_state):
    """Restores into `abstract_state` (a pytree of jax.ShapeDtypeStruct, shardings included)."""
    mngr = manager(directory)
    try:
        return mngr.restore(epoch, args=ocp.args.StandardRestore(abstract_state))
    finally:
        mngr.close()


def finished_slices(logdir: Path, epochs: int) -> list[tuple[int, int, Path]]:
    """(start, stop, folder) of every slice whose training reached `epochs`, sorted by start."""
    root = Path(logdir) / rundir.CKPT_DIR
    found = []
    for folder in sorted(root.glob("models_*")) if root.exists() else []:
        match = _SLICE_DIR.match(folder.name)
        if match and latest_epoch(folder) >= epochs:
            found.append((int(match.group(1)), int(match.group(2)), folder))
    return found


def abstract_like(state):
    """ShapeDtypeStructs (with shardings) of a concrete or abstract state."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state
    )
