"""The query stage as a library call: every trained model queried on the audit pool, its logits
written to logits/NNNNN.npy [N, Q, C] (what experiments/inference.py runs).

    from lira import config
    from lira.stages import query
    query.query("exp/demo", config.QueryConfig())            # the views the models trained on
    query.query("exp/demo", config.QueryConfig(queries=2))

The views a run may be queried with are those its training augmentation drew
(lira.run.views.resolve_queries); others are refused unless `allow_untrained_views`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lira.config import QueryConfig
from lira.data import load_dataset
from lira.run import checkpoint, layout, lock, records, temporaries, verify, views
from lira.stages import preflight
from lira.training import augment, grad_norms, loop, step
from lira.training.models import canonical_arch, get_model, import_arch

# Inference queries at least this many models a call, from several training slices if need be:
# with one model a slice (conv nets on the CPU), one-model calls are small enough that their
# dispatch costs more than their work, and the vmapped forward of 4 cnn32 is faster there than 4
# one-model forwards (docs/performance.md, "What made cnn32 fast on the CPU").
MIN_MODELS_PER_CALL = 4
# Except the white-box stage on the CPU: its calls are large already (hundreds of views, each with
# its activations and output gradients), and grouping slices only takes them out of the cache
# (measured on bench.training's cnn32 case: docs/results/implementation_choices/README.md).
CPU_WHITEBOX_MODELS_PER_CALL = 1


def query(logdir: str | Path, config: QueryConfig, progress: bool = True) -> list[int]:
    """Writes logits/NNNNN.npy, float32 [N, Q, C], for every trained model that lacks one, and
    with config.whitebox the white-box signals too (`query_whitebox`). config.queries 0: the
    views the models trained on; the count made is recorded in config.json ("inference").

    Streams over examples and writes each model's logits into a memory-mapped file that is
    renamed into place when complete, so memory stays at one batch and a kill loses nothing
    already written. Returns the model indices whose logits were written now.
    """
    config.validate()
    record = records.load_record(verify.check_logdir(logdir))
    arch = import_arch(model_arch(logdir, record, config.arch))  # before anything builds the model
    preflight.check_query(record, config, MIN_MODELS_PER_CALL)
    queries = resolve_queries(record, config.queries, config.allow_untrained_views)
    if config.whitebox:  # both counts checked before any work
        resolve_queries(record, config.whitebox_queries or queries, config.allow_untrained_views,
                        "--whitebox_queries")  # fmt: skip
    written = _query_logits(logdir, record, queries, config.batch_size, progress, arch)
    if config.whitebox:
        query_whitebox(logdir, dataclasses.replace(config, whitebox_queries=config.whitebox_queries or queries),
                       progress)  # fmt: skip
    return written


def resolve_queries(record: records.RunRecord, queries: int, allow_untrained_views: bool = False,
                    flag: str = "--queries") -> int:  # fmt: skip
    """The query count the run in `record` is queried with for a requested `queries` (0: as its
    --augment trained; lira.run.views.resolve_queries)."""
    is_image = len(record.data.get("input_shape", ())) == 3
    return views.resolve_queries(
        queries, record.config.training.augment, is_image, allow_untrained_views, flag
    )


def model_arch(logdir: str | Path, record: records.RunRecord, named: str | None) -> str:
    """The arch to build the run's models with. A `module:factory` arch only when the command names
    it too (`named`: QueryConfig.arch), checked before anything is imported: importing runs the
    module's code, and a run directory is shared and writable, so its config.json must not choose
    the code lira runs."""
    arch = record.config.model.arch
    if named is not None and (named if ":" in named else canonical_arch(named)) != arch:
        raise ValueError(
            f"--arch={named}: the run in {logdir} was trained with --arch={arch}; give that, or leave --arch unset "
            "for a built-in model."
        )
    if ":" in arch and named is None:
        raise ValueError(
            f"The run in {logdir} was trained with --arch={arch}, a model of your own code, which lira imports "
            f"only when the command names it: add --arch={arch} (if you trust that module)."
        )
    return arch


def _query_logits(logdir: str | Path, record: records.RunRecord, queries: int, batch_size: int, progress: bool,
                  arch: str) -> list[int]:  # fmt: skip
    logdir = Path(logdir)
    if record.queries not in (None, queries) and layout.available_logits(logdir):
        raise ValueError(
            f"{logdir / layout.LOGITS_DIR} holds logits for --queries={record.queries}; "
            f"delete that folder to query with --queries={queries}."
        )
    num_models, num_examples = records.load_keep(logdir, record).shape
    records.load_labels(logdir, record)  # unused here, but the attack stage would refuse them after this work
    path_of = lambda m: layout.logits_path(logdir, m)
    lacking = [m for m in range(num_models) if not _done([path_of(m)], num_examples, queries)]
    todo = _slices_to_do(logdir, record, lacking)
    if not todo:
        return []
    dataset = _load_pool(logdir, record, num_examples)
    records.update_record(logdir, inference={"queries": queries})
    model, programs = _programs(record, dataset, arch)

    @jax.jit
    def apply(state, images):  # [B, ...] -> (logits [models, B, Q, C],), the queries made on device
        queried = augment.make_queries(images, queries)
        flat = queried.reshape(-1, *queried.shape[2:])
        logits = step.vmap_models(lambda s: step.predict(model, s, flat), (0,))(state)
        return (logits.reshape(logits.shape[0], images.shape[0], queries, -1),)

    # About batch_size images per model per call, whatever Q: the activations of Q * batch_size
    # images per model would take gigabytes.
    outputs = [(path_of, (num_examples, queries, dataset.num_classes))]
    chunk = max(1, batch_size // queries)
    return _stream(todo, lacking, programs, record.config.training, apply, (dataset.x_train,), outputs, lambda _: chunk,
                   progress)  # fmt: skip


def _done(paths: list[Path], num_examples: int, queries: int) -> bool:
    """Whether every one of a model's output files exists, float32 with N examples and `queries`
    queries, as long as its header says; a bad one is noted, and so queried again."""
    return all([verify.usable(p, (num_examples, queries, None)) for p in paths])


def _slices_to_do(logdir: Path, record: records.RunRecord, lacking: list[int]) -> list[tuple[int, int, Path]]:
    """Every finished training slice (start, stop, folder) if one of them has a model in `lacking`,
    else none (_stream groups them all and computes the groups with a lacking model); notes the
    lacking models that have no finished checkpoint yet, which are skipped. Removes the stale
    temporaries of earlier runs first (both query stages come here before any work)."""
    temporaries.remove_stale(logdir)
    finished = checkpoint.finished_slices(logdir, record.config.training.epochs)
    trained = {m for a, b, _ in finished for m in range(a, b)}
    untrained = [m for m in lacking if m not in trained]
    if untrained:
        print(
            f"Note: models {layout.format_ranges(untrained)} have no finished checkpoint yet; skipping them."
        )
    return finished if any(m in trained for m in lacking) else []


def _load_pool(logdir: Path, record: records.RunRecord, num_examples: int):
    """The run's dataset, checked against keep.npy's pool size and the data's fingerprint."""
    config = record.config
    dataset = load_dataset(config.data.dataset, config.data.data_dir, config.data.pool_size)
    if len(dataset.y_train) != num_examples:
        raise layout.RunDirError(
            f"The dataset now has {len(dataset.y_train)} pool examples; keep.npy has {num_examples}."
        )
    records.check_fingerprint(logdir, record, dataset.fingerprint())
    return dataset


def _programs(record: records.RunRecord, dataset, arch: str):
    """(model, lira.training.loop.Programs) of the run, to restore its checkpoints; `arch` as
    model_arch returned it (a module:factory one is imported here)."""
    config = record.config
    model = get_model(import_arch(arch), dataset.num_classes, config.model.conv_impl)
    training = record.training()
    num_steps = step.steps_per_epoch(len(dataset.y_train), training.pkeep, training.batch_size)
    return model, loop.Programs(model, training, num_steps, jnp.asarray(dataset.x_train[0]))


def _stream(
    todo, lacking, programs, training, apply, inputs: tuple, outputs: list, chunk_of, progress: bool,
    min_models: int = MIN_MODELS_PER_CALL,
) -> list[int]:  # fmt: skip
    """Runs `apply(state, *chunks)` over the pool for the groups of the slices `todo` (_call_groups)
    with a model in `lacking`, and streams its outputs into the lacking models' files. inputs: arrays
    [N, ...] fed in chunks of chunk_of(models in the group) examples (the last padded to that
    size); outputs: (path_of(model) -> Path, shape) per output of apply (an array [models, B, ...]
    each), written through PartialNpy and renamed into place when complete. Returns the models written.

    A model's files are written under the lock .NNNNN.lock in the first output's folder: a model
    another process holds is skipped with a note naming it, and one found complete once the lock
    is held (another run wrote it meanwhile) is not written again."""
    num_examples = len(inputs[0])
    written = []
    lacking = set(lacking)
    groups = [
        g for g in _call_groups(todo, min_models) if any(m in lacking for a, b, _ in g for m in range(a, b))
    ]
    bar = tqdm(total=sum(b - a for g in groups for a, b, _ in g) * num_examples, unit="model-example",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    for group in groups:
        ids = [m for a, b, _ in group for m in range(a, b)]
        with contextlib.ExitStack() as held:
            mine = _claim_models(ids, outputs, held)
            if not mine:
                bar.update(len(ids) * num_examples)
                continue
            state = loop.restore_slices(programs, group, training.epochs, training.seed)
            files = {}
            held.callback(_discard, files)  # a failed call leaves no temporary behind
            for m in mine:
                files[m] = []
                for path_of, shape in outputs:
                    files[m].append(layout.PartialNpy(path_of(m), shape))
            chunk = min(chunk_of(len(ids)), num_examples)
            for i in range(0, num_examples, chunk):
                size = min(chunk, num_examples - i)
                results = jax.device_get(
                    apply(state, *(jnp.asarray(_padded(array[i : i + size], chunk)) for array in inputs))
                )
                for offset, m in enumerate(ids):
                    for partial, result in zip(files.get(m, ()), results, strict=False):
                        partial.array[i : i + size] = result[offset, :size]
                bar.update(len(ids) * size)
            for m in mine:
                for partial in files[m]:
                    partial.commit()
                written.append(m)
    bar.close()
    return written


def _discard(files: dict) -> None:
    for partials in files.values():
        for partial in partials:
            partial.discard()  # nothing once committed


def _claim_models(ids: list[int], outputs: list, held: contextlib.ExitStack) -> list[int]:
    """The models of `ids` whose output files this process now holds the lock of (entered into
    `held`) and that are still not complete; notes the models another process holds."""
    mine, others = [], {}
    for m in ids:
        paths = [path_of(m) for path_of, _ in outputs]
        lock_path = paths[0].parent / f".{m:05d}.lock"
        claimed = lock.try_acquire(lock_path)
        if claimed is None:
            others.setdefault(str(lock.holder(lock_path)), []).append(m)
            continue
        held.enter_context(claimed)
        num_examples, queries = outputs[0][1][:2]
        sound = [p.exists() and verify.npy_problem(p, (num_examples, queries, None)) is None for p in paths]
        if not all(sound):  # still lacking now that it is ours (_done noted a bad file already)
            mine.append(m)
    for holder, models in others.items():
        print(f"Note: models {layout.format_ranges(models)} are being queried by {holder}; skipping them.")
    return mine


def _padded(array, size: int):
    """array [n, ...] with zeros appended to `size` rows: the last chunk of the pool is padded to
    the others' size (its padding's outputs dropped) so that one program is compiled, not two (what
    a second compile of the white-box program costs: docs/results/implementation_choices/README.md)."""
    padding = np.zeros((size - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, padding]) if len(padding) else array


def _call_groups(slices, min_models: int):
    """Training slices (start, stop, folder) grouped into calls of about min_models models: a
    slice [a, b) joins group a // max(min_models, b - a). The groups depend on the slices alone,
    never on which models lack their files, so a model re-queried after a kill is computed in the
    same program, beside the same models, as an uninterrupted run computes it: its logits come out
    bit-identical (XLA's results may differ in the last bits with the number of models a call)."""
    groups: dict[int, list] = {}
    for a, b, folder in sorted(slices):
        groups.setdefault(a // max(min_models, b - a), []).append((a, b, folder))
    return list(groups.values())


# About this many bytes of per-view buffers (lira.training.grad_norms.view_floats) are alive in one
# white-box call on the CPU: the chunk of examples shrinks as models, queries and layers grow. On
# an accelerator, a fraction of its memory (_whitebox_bytes): 256 MiB would cut 64 cnn32 models'
# calls to 6 examples each.
WHITEBOX_BYTES = 256 * 2**20
ACCELERATOR_WHITEBOX_FRACTION = 1 / 8


def _whitebox_bytes() -> int:
    """The per-view buffers one white-box call may hold: WHITEBOX_BYTES on the CPU, else
    ACCELERATOR_WHITEBOX_FRACTION of the first device's memory (16 GiB where it does not say)."""
    if jax.default_backend() == "cpu":
        return WHITEBOX_BYTES
    limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit", 16 * 2**30)
    return max(WHITEBOX_BYTES, int(limit * ACCELERATOR_WHITEBOX_FRACTION))


def query_whitebox(logdir: str | Path, config: QueryConfig, progress: bool = True) -> list[int]:
    """Writes whitebox/NNNNN_norms.npy, float32 [N, Q, L + 1] (the per-example loss-gradient norm
    of each layer with parameters, then of the whole model) and NNNNN_features.npy, float32
    [N, Q, F] (the penultimate activations) for every trained model that lacks them, from its
    checkpoint (lira.training.grad_norms), with Q = config.whitebox_queries (0: config.queries; 0
    again: the views the models trained on, as `query`). Streamed per model and atomic like the logits; refused when a model that was
    queried before has lost its checkpoint. Returns the models written."""
    config.validate()
    logdir = verify.check_logdir(logdir)
    record = records.load_record(logdir)
    arch = model_arch(logdir, record, config.arch)
    queries = resolve_queries(record, config.whitebox_queries or config.queries, config.allow_untrained_views,
                              "--whitebox_queries")  # fmt: skip
    previous = (record.whitebox or {}).get("queries")
    if previous not in (None, queries) and layout.available_whitebox(logdir):
        raise ValueError(
            f"{logdir / layout.WHITEBOX_DIR} holds white-box signals for {previous} queries; delete that folder "
            f"to compute them for {queries}."
        )
    num_models, num_examples = records.load_keep(logdir, record).shape
    paths = lambda m: [layout.whitebox_path(logdir, m, kind) for kind in layout.WHITEBOX_KINDS]
    lacking = [m for m in range(num_models) if not _done(paths(m), num_examples, queries)]
    trained = {
        m
        for a, b, _ in checkpoint.finished_slices(logdir, record.config.training.epochs)
        for m in range(a, b)
    }
    gone = [m for m in lacking if m not in trained and layout.logits_path(logdir, m).exists()]
    if gone:
        raise layout.RunDirError(
            f"White-box signals are computed from the models' weights, but models {layout.format_ranges(gone)} "
            f"have logits and no finished checkpoint in {logdir / layout.CKPT_DIR} (deleted?); retrain them "
            "with experiments/train.py, or audit them black-box only (without --whitebox)."
        )
    todo = _slices_to_do(logdir, record, lacking)
    if not todo:
        return []
    dataset = _load_pool(logdir, record, num_examples)
    labels = records.load_labels(logdir, record)
    model, programs = _programs(record, dataset, arch)
    training = record.config.training
    one_state = programs.abstract_state(jnp.zeros(1, jnp.int32), training.seed, loop.model_sharding(1))
    names = grad_norms.layer_names(one_state.params)
    one_model = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), one_state)
    view_bytes = 4 * grad_norms.view_floats(
        model, {"params": one_model.params, "batch_stats": one_model.batch_stats}, dataset.x_train[0]
    )
    apply = grad_norms.make_vmapped_whitebox_fn(model, queries)
    _, features_shape = jax.eval_shape(
        apply, one_state, jnp.asarray(dataset.x_train[:1]), jnp.asarray(labels[:1])
    )
    num_features = features_shape.shape[-1]
    records.update_record(logdir, whitebox={"queries": queries, "layers": names, "features": num_features})
    outputs = [
        (lambda m: layout.whitebox_path(logdir, m, "norms"), (num_examples, queries, len(names) + 1)),
        (lambda m: layout.whitebox_path(logdir, m, "features"), (num_examples, queries, num_features)),
    ]
    budget = _whitebox_bytes()
    chunk_of = lambda models: int(np.clip(budget // (models * queries * view_bytes), 1, 256))
    min_models = CPU_WHITEBOX_MODELS_PER_CALL if jax.default_backend() == "cpu" else MIN_MODELS_PER_CALL
    return _stream(
        todo,
        lacking,
        programs,
        training,
        apply,
        (dataset.x_train, labels),
        outputs,
        chunk_of,
        progress,
        min_models,
    )
