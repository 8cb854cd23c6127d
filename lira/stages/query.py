"""The query stage as a library call: every trained model queried on the audit pool, its logits
written to logits/NNNNN.npy [N, Q, C] (what experiments/inference.py runs).

    from lira.stages import query
    query.query("exp/demo", queries=18)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lira.config import QueryConfig
from lira.data import load_dataset
from lira.run import checkpoint, layout
from lira.training import augment, loop, step
from lira.training.models import get_model

# Inference queries at least this many models a call, from several training slices if need be:
# with one model a slice (conv nets on the CPU), one-model calls are small enough that their
# dispatch costs more than their work, and the vmapped forward of 4 cnn32 is 1.8x faster there
# than 4 one-model forwards.
MIN_MODELS_PER_CALL = 4


def query(logdir: str | Path, queries: int = 2, batch_size: int = 256, progress: bool = True) -> list[int]:
    """Writes logits/NNNNN.npy, float32 [N, Q, C], for every trained model that lacks one.

    Streams over examples and writes each model's logits into a memory-mapped file that is
    renamed into place when complete, so memory stays at one batch and a kill loses nothing
    already written. Returns the model indices written now.
    """
    QueryConfig(queries=queries, batch_size=batch_size).validate()
    logdir = Path(logdir)
    record = layout.load_record(logdir)
    config = record.config
    keep = layout.load_keep(logdir)
    num_examples = keep.shape[1]
    if len(record.data["input_shape"]) != 3 and queries != 1:
        raise ValueError(
            f"{config.data.dataset} is not image data, so it has a single query; got --queries={queries}."
        )
    if record.queries not in (None, queries) and layout.available_logits(logdir):
        raise ValueError(
            f"{logdir / layout.LOGITS_DIR} holds logits for --queries={record.queries}; "
            f"delete that folder to query with --queries={queries}."
        )
    training = config.training
    finished = checkpoint.finished_slices(logdir, training.epochs)
    trained = {m for a, b, _ in finished for m in range(a, b)}
    missing = sorted(set(range(keep.shape[0])) - trained)
    if missing:
        print(f"Note: models {layout.format_ranges(missing)} have no finished checkpoint yet; skipping them.")
    todo = [
        (a, b, f)
        for a, b, f in finished
        if any(not _logits_done(logdir, m, num_examples, queries) for m in range(a, b))
    ]
    if not todo:
        return []
    dataset = load_dataset(config.data.dataset, config.data.data_dir, config.data.pool_size)
    if len(dataset.y_train) != num_examples:
        raise layout.RunDirError(
            f"The dataset now has {len(dataset.y_train)} pool examples; keep.npy has {num_examples}."
        )
    layout.save_record(logdir, dataclasses.replace(record, queries=queries))
    model = get_model(config.model.arch, dataset.num_classes, config.model.conv_impl)
    num_steps = step.steps_per_epoch(num_examples, training.pkeep, training.batch_size)
    programs = loop.Programs(model, training, num_steps, jnp.asarray(dataset.x_train[0]))

    @jax.jit
    def apply(state, images):  # [B, ...] -> logits [models, B, Q, C], the queries made on device
        views = augment.make_queries(images, queries)
        flat = views.reshape(-1, *views.shape[2:])
        logits = step.vmap_models(lambda s: step.predict(model, s, flat), (0,))(state)
        return logits.reshape(logits.shape[0], images.shape[0], queries, -1)

    written = []
    total = sum(b - a for a, b, _ in todo) * num_examples
    bar = tqdm(total=total, unit="model-example", disable=not progress, dynamic_ncols=True)
    # About batch_size images per model per call, whatever Q: the activations of Q * batch_size
    # images per model would take gigabytes.
    chunk = max(1, batch_size // queries)
    for group in _call_groups(todo, MIN_MODELS_PER_CALL):
        ids = [m for a, b, _ in group for m in range(a, b)]
        state = loop.restore_slices(programs, group, training.epochs, training.seed)
        shape = (num_examples, queries, dataset.num_classes)
        outputs = {m: layout.PartialNpy(layout.logits_path(logdir, m), shape) for m in ids}
        for i in range(0, num_examples, chunk):
            logits = np.asarray(jax.device_get(apply(state, jnp.asarray(dataset.x_train[i : i + chunk]))))
            for offset, m in enumerate(ids):
                outputs[m].array[i : i + logits.shape[1]] = logits[offset]
            bar.update(len(ids) * logits.shape[1])
        for m, partial in outputs.items():
            partial.commit()
            written.append(m)
    bar.close()
    return written


def _call_groups(slices, min_models: int):
    """Consecutive training slices (start, stop, folder) grouped until each group has at least
    min_models models (the last may have fewer)."""
    groups, group = [], []
    for item in slices:
        group.append(item)
        if sum(b - a for a, b, _ in group) >= min_models:
            groups.append(group)
            group = []
    return groups + ([group] if group else [])


def _logits_done(logdir: Path, model_index: int, num_examples: int, queries: int) -> bool:
    path = layout.logits_path(logdir, model_index)
    if not path.exists():
        return False
    shape = np.load(path, mmap_mode="r").shape
    return shape[:2] == (num_examples, queries)
