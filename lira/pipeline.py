"""The train and inference stages as library calls: what experiments/train.py and
experiments/inference.py run, and what tests and notebooks can call directly."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lira import augment, checkpoint, masks, rundir, trainer
from lira import train as train_lib
from lira.data import load_dataset
from lira.models import canonical_arch, get_model

# Flags that decide what the models are: a re-run into an existing logdir must repeat them.
RESULT_FLAGS = (
    "dataset", "pool_size", "arch", "num_shadows", "pkeep", "epochs", "batch_size", "lr",
    "weight_decay", "momentum", "warmup_epochs", "augment", "seed", "models_per_step",
)  # fmt: skip
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets")


@dataclasses.dataclass
class TrainSettings:
    """Everything `train` needs; experiments/train.py fills it from flags."""

    logdir: str
    dataset: str = "digits"
    data_dir: str | None = None
    pool_size: int | None = None
    arch: str = "cnn32"
    num_shadows: int = 16
    pkeep: float = 0.5
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    augment: str = "weak"
    seed: int = 0
    shadow_ids: str | None = None
    models_per_step: int = 0  # 0: the backend's default
    conv_impl: str | None = None
    eval_every: int = 1
    progress: bool = True

    def train_config(self) -> train_lib.TrainConfig:
        return train_lib.TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs, augment=self.augment,
            seed=self.seed,
        )  # fmt: skip

    def validate(self) -> None:
        """Raises ValueError naming the first bad value; reads and computes nothing. The same
        checks guard experiments/train.py and experiments/reproduce.py."""
        self.train_config().validate()
        if self.num_shadows < 2:
            raise ValueError(f"--num_shadows must be >= 2 (a target needs shadows), got {self.num_shadows}.")
        if self.models_per_step < 0:
            raise ValueError(f"--models_per_step must be >= 0 (0 = default), got {self.models_per_step}.")
        if not 0.0 < self.pkeep < 1.0:
            raise ValueError(f"--pkeep must be in (0, 1), got {self.pkeep}.")
        if self.pool_size is not None and self.pool_size < 1:  # the upper bound needs the data
            raise ValueError(f"--pool_size must be >= 1, got {self.pool_size}.")

    def recorded_flags(self) -> dict:
        """The flags config.json records: all but the ones that do not describe the run."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("progress", "shadow_ids")}


def train(settings: TrainSettings) -> Path:
    """Trains (or resumes) the shadow models of `settings.shadow_ids` into settings.logdir.

    Every check runs before the dataset is loaded or anything is compiled.
    """
    settings.arch = canonical_arch(settings.arch)
    settings.validate()
    start, stop = masks.parse_slice(settings.shadow_ids, settings.num_shadows)
    settings.models_per_step = settings.models_per_step or trainer.default_models_per_step(settings.arch)
    start, stop = process_share(
        start, stop, settings.models_per_step, jax.process_index(), jax.process_count()
    )
    logdir = Path(settings.logdir)
    _check_same_run(logdir, settings.recorded_flags())

    dataset = load_dataset(settings.dataset, settings.data_dir, settings.pool_size)
    keep = masks.make_keep(settings.num_shadows, len(dataset.y_train), settings.pkeep, settings.seed)
    if jax.process_index() == 0:
        write_run_files(logdir, settings, dataset, keep)
    if start == stop:
        return logdir
    trainer.train_models(
        logdir=logdir, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
        y_test=dataset.y_test, num_classes=dataset.num_classes, keep=keep, arch=settings.arch,
        config=settings.train_config(), pkeep=settings.pkeep, model_ids=(start, stop),
        models_per_step=settings.models_per_step, conv_impl=settings.conv_impl,
        eval_every=settings.eval_every, progress=settings.progress,
    )  # fmt: skip
    return logdir


def write_run_files(logdir: Path, settings: TrainSettings, dataset, keep: np.ndarray) -> None:
    """config.json, keep.npy and labels.npy of a run: what every later stage reads first."""
    config = {
        "flags": settings.recorded_flags(), "data": dataset.facts(), "versions": _versions(),
        "git_commit": _git_commit(),
    }  # fmt: skip
    rundir.save_json(logdir / rundir.CONFIG, config)
    rundir.save_npy(logdir / rundir.KEEP, keep)
    rundir.save_npy(logdir / rundir.LABELS, dataset.y_train.astype(np.int32))


def check_queries(queries: int) -> None:
    """Raises ValueError unless `queries` is one of lira.augment.QUERY_COUNTS."""
    if queries not in augment.QUERY_COUNTS:
        raise ValueError(
            f"--queries={queries} is not supported; valid: {', '.join(map(str, augment.QUERY_COUNTS))}."
        )


def process_share(start: int, stop: int, models_per_step: int, process: int, num_processes: int):
    """The part of models [start, stop) that process `process` of `num_processes` trains.

    Contiguous, in whole steps of models where possible, so each process compiles one step
    shape; the shares cover the range exactly once. A process may get an empty share.
    """
    steps = -(-(stop - start) // models_per_step)
    per_process = -(-steps // num_processes)
    first = min(stop, start + process * per_process * models_per_step)
    return first, min(stop, first + per_process * models_per_step)


def _check_same_run(logdir: Path, flags: dict) -> None:
    path = logdir / rundir.CONFIG
    if not path.exists():
        return
    previous = rundir.load_config(logdir)["flags"]
    changed = [
        f"--{k}: {previous.get(k)!r} before, {flags[k]!r} now"
        for k in RESULT_FLAGS
        if previous.get(k) != flags[k]
    ]
    if changed:
        raise ValueError(
            f"{logdir} holds a run made with other settings ({'; '.join(changed)}). "
            "Re-run with the same flags to resume it, or choose another --logdir."
        )


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


# Inference queries at least this many models a call, from several training slices if need be:
# with one model a slice (conv nets on the CPU), one-model calls are small enough that their
# dispatch costs more than their work, and the vmapped forward of 4 cnn32 is 1.8x faster there
# than 4 one-model forwards.
MIN_MODELS_PER_CALL = 4


def inference(
    logdir: str | Path, queries: int = 2, batch_size: int = 256, progress: bool = True
) -> list[int]:
    """Writes logits/NNNNN.npy, float32 [N, Q, C], for every trained model that lacks one.

    Streams over examples and writes each model's logits into a memory-mapped file that is
    renamed into place when complete, so memory stays at one batch and a kill loses nothing
    already written. Returns the model indices written now.
    """
    logdir = Path(logdir)
    config = rundir.load_config(logdir)
    flags = config["flags"]
    keep = rundir.load_keep(logdir)
    num_examples = keep.shape[1]
    is_image = len(config["data"]["input_shape"]) == 3
    check_queries(queries)
    if not is_image and queries != 1:
        raise ValueError(
            f"{flags['dataset']} is not image data, so it has a single query; got --queries={queries}."
        )
    previous = config.get("inference", {}).get("queries")
    if previous not in (None, queries) and rundir.available_logits(logdir):
        raise ValueError(
            f"{logdir / rundir.LOGITS_DIR} holds logits for --queries={previous}; "
            f"delete that folder to query with --queries={queries}."
        )
    train_config = TrainSettings(
        **{k: v for k, v in flags.items() if k in TrainSettings.__annotations__}
    ).train_config()
    finished = checkpoint.finished_slices(logdir, train_config.epochs)
    trained = {m for a, b, _ in finished for m in range(a, b)}
    missing = sorted(set(range(keep.shape[0])) - trained)
    if missing:
        print(f"Note: models {rundir.format_ranges(missing)} have no finished checkpoint yet; skipping them.")
    todo = [
        (a, b, f)
        for a, b, f in finished
        if any(not _logits_done(logdir, m, num_examples, queries) for m in range(a, b))
    ]
    if not todo:
        return []
    dataset = load_dataset(flags["dataset"], flags.get("data_dir"), flags.get("pool_size"))
    if len(dataset.y_train) != num_examples:
        raise rundir.RunDirError(
            f"The dataset now has {len(dataset.y_train)} pool examples; keep.npy has {num_examples}."
        )
    rundir.save_json(logdir / rundir.CONFIG, {**config, "inference": {"queries": queries}})
    model = get_model(flags["arch"], dataset.num_classes)
    num_steps = train_lib.steps_per_epoch(num_examples, flags["pkeep"], train_config.batch_size)
    programs = trainer._Programs(model, train_config, num_steps, jnp.asarray(dataset.x_train[0]))

    @jax.jit
    def apply(state, images):  # [B, ...] -> logits [models, B, Q, C], the queries made on device
        views = augment.make_queries(images, queries)
        flat = views.reshape(-1, *views.shape[2:])
        logits = train_lib.vmap_models(lambda s: train_lib.predict(model, s, flat), (0,))(state)
        return logits.reshape(logits.shape[0], images.shape[0], queries, -1)

    written = []
    total = sum(b - a for a, b, _ in todo) * num_examples
    bar = tqdm(total=total, unit="model-example", disable=not progress, dynamic_ncols=True)
    # About batch_size images per model per call, whatever Q: the activations of Q * batch_size
    # images per model would take gigabytes.
    chunk = max(1, batch_size // queries)
    for group in _call_groups(todo, MIN_MODELS_PER_CALL):
        ids = [m for a, b, _ in group for m in range(a, b)]
        state = _restore_group(programs, group, train_config)
        outputs = {m: _open_partial(logdir, m, (num_examples, queries, dataset.num_classes)) for m in ids}
        for i in range(0, num_examples, chunk):
            logits = np.asarray(jax.device_get(apply(state, jnp.asarray(dataset.x_train[i : i + chunk]))))
            for offset, m in enumerate(ids):
                outputs[m][1][i : i + logits.shape[1]] = logits[offset]
            bar.update(len(ids) * logits.shape[1])
        for m, (tmp_path, array) in outputs.items():
            array.flush()
            del array
            tmp_path.replace(rundir.logits_path(logdir, m))
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


def _restore_group(programs, group, config):
    """The finished states of a group's slices, stacked on the model axis and sharded over it."""
    states = [programs.restore(folder, a, b, config.epochs, config.seed) for a, b, folder in group]
    if len(states) == 1:
        return states[0]
    stacked = jax.tree.map(lambda *leaves: np.concatenate([np.asarray(v) for v in leaves]), *states)
    return jax.device_put(stacked, trainer.model_sharding(sum(b - a for a, b, _ in group)))


def _logits_done(logdir: Path, model_index: int, num_examples: int, queries: int) -> bool:
    path = rundir.logits_path(logdir, model_index)
    if not path.exists():
        return False
    shape = np.load(path, mmap_mode="r").shape
    return shape[:2] == (num_examples, queries)


def _open_partial(logdir: Path, model_index: int, shape: tuple[int, ...]):
    final = rundir.logits_path(logdir, model_index)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial.npy")
    return tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
