"""The training driver: runs the pure step of lira/training/step.py over slices of models, with
checkpoints, the per-epoch log and a progress bar. The only training code that touches disk.

Its public pieces are what the query stage and the benchmarks (bench/) build on: `Programs` (the
jitted init, step, data order and evaluation of one architecture and config), `SliceInputs`
(what a slice of models reads on the device besides its state), `restore_slices`, and the
backend's defaults.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from lira import xla_flags
from lira.config import TrainingConfig
from lira.data import Pixels
from lira.run import checkpoint, layout, lock, temporaries
from lira.training import step as step_lib
from lira.training.models import get_model

EVAL_BATCH = 500


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def default_models_per_step(arch: str, backend: str | None = None) -> int:
    """How many models one compiled step advances, unless --models_per_step says otherwise.

    On the CPU: one conv net a step, since vmapping over conv weights makes a grouped
    convolution, slower there than one model's (with im2col convolutions, without YNNPACK, four);
    four MLPs, which keep the vectorized matmuls busy without outgrowing the caches.
    On a GPU: 64 models a step, but one WRN, which fills the GPU alone; several WRN-28-2 a step
    ran slower than one a step on an H200 (docs/bench/bench_gpu.json, rendered in
    docs/performance.md).
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return 4 if arch.startswith("mlp") or not xla_flags.ynn_enabled() else 1
    return 1 if arch.startswith("wrn") else 64


def default_dtype(backend: str | None = None) -> str:
    """The compute dtype unless --dtype says otherwise: float32 on the CPU, whose bfloat16
    matmuls and convolutions are emulated; on accelerators DEFAULT_ACCELERATOR_DTYPE (its
    comment says what it rests on)."""
    backend = backend or jax.default_backend()
    return "float32" if backend == "cpu" else DEFAULT_ACCELERATOR_DTYPE


# bfloat16 activations and convolutions trained cnn32 on the CIFAR-10 subset to the accuracy of
# float32 (docs/results/bfloat16_parity/); GPU throughput: docs/bench/bench_gpu.json.
DEFAULT_ACCELERATOR_DTYPE = "bfloat16"


def default_steps_per_call(num_steps: int, backend: str | None = None) -> int:
    """Training steps one compiled call runs (a lax.fori_loop over them), unless --steps_per_call
    says otherwise.

    On accelerators a whole epoch: the host then dispatches once an epoch instead of once a step,
    and the device never waits for Python. On the CPU one step a call: XLA:CPU runs convolutions
    inside loops several times slower (jax issue 12868), and a dispatch costs little next to a
    CPU step (docs/results/steps_per_call_cpu/).
    """
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" else num_steps


def model_mesh(num_models: int) -> Mesh:
    """A 1-D `model` mesh over as many local devices as evenly divide the models of a step."""
    devices = jax.local_devices()
    count = max(d for d in range(1, len(devices) + 1) if num_models % d == 0)
    return Mesh(np.array(devices[:count]), ("model",))


def model_shardings(num_models: int) -> tuple[NamedSharding, NamedSharding]:
    """(by model, replicated) on model_mesh(num_models): arrays with a leading axis of
    num_models split over it, and arrays every model reads whole (the dataset)."""
    mesh = model_mesh(num_models)
    return NamedSharding(mesh, P("model")), NamedSharding(mesh, P())


def model_sharding(num_models: int) -> NamedSharding:
    """Arrays with a leading axis of num_models, split over model_mesh(num_models)."""
    return model_shardings(num_models)[0]


def zero_totals(num_models: int, sharding):
    """What the step carries per model over an epoch, at its start: (loss sum, correct count,
    first step with a non-finite loss or -1)."""
    totals = (
        np.zeros(num_models, np.float32),
        np.zeros(num_models, np.int32),
        np.full(num_models, -1, np.int32),
    )
    return jax.device_put(totals, sharding)


class Programs:
    """The jitted programs for one model architecture and config, shared by every slice.

    step(state, totals, order, num_in, ids, x, y, step_in_epoch) -> (state, totals) advances the
    stacked models one step; steps(..., first, stop) runs steps first..stop-1 of the epoch in one
    lax.fori_loop. Both donate the state and totals.
    """

    def __init__(self, model, config: TrainingConfig, num_steps_per_epoch: int, sample_input):
        self.tx = step_lib.make_optimizer(config, num_steps_per_epoch)
        self.init = jax.jit(
            step_lib.vmap_models(step_lib.make_init(model, self.tx, sample_input, dp=config.dp), (0, None)),
            static_argnums=1,
        )
        if config.dp:  # per-example clipping needs each model's own gradients: vmap the DP step
            from lira.training import dpsgd  # DP only: an accelerator image may lack jax-privacy

            dp_step = dpsgd.make_dp_train_step(model, self.tx, config, sample_input)
            step = step_lib.vmap_models(dp_step, (0, 0, 0, 0, None, None, None))
        else:
            step = step_lib.make_vectorized_step(model, self.tx, config)

        def multi_step(state, totals, order, num_in, ids, x, y, step_in_epoch):
            state, loss, correct = step(state, order, num_in, ids, x, y, step_in_epoch)
            loss_sum, correct_sum, first_bad = totals
            first_bad = jnp.where(~jnp.isfinite(loss) & (first_bad < 0), state.step - 1, first_bad)
            return state, (loss_sum + loss, correct_sum + correct, first_bad)

        def steps(state, totals, order, num_in, ids, x, y, first, stop):
            """Steps first..stop-1 of the epoch in one program (bounds traced: one compile)."""
            body = lambda i, carry: multi_step(*carry, order, num_in, ids, x, y, i)
            return jax.lax.fori_loop(first, stop, body, (state, totals))

        self.step = jax.jit(multi_step, donate_argnums=(0, 1))
        self.steps = jax.jit(steps, donate_argnums=(0, 1))
        self.order = jax.jit(step_lib.vmap_models(step_lib.epoch_order, (0, 0, None, None)), static_argnums=3)
        predict = step_lib.vmap_models(lambda state, x: step_lib.predict(model, state, x), (0, None))
        self.correct = jax.jit(
            lambda state, x, y: jnp.sum(jnp.argmax(predict(state, step_lib.take(x)), -1) == y[None], axis=1)
        )

    def abstract_state(self, ids, seed: int, sharding):
        """Shapes, dtypes and shardings of the stacked state of models `ids`, for restoring."""
        abstract = jax.eval_shape(self.init, ids, seed)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)

    def restore(self, folder: Path, start: int, stop: int, epoch: int, seed: int):
        """The stacked state of models [start, stop) saved at `epoch` in `folder`, sharded over
        the model axis."""
        ids = jnp.arange(start, stop, dtype=jnp.int32)
        return checkpoint.restore(folder, epoch, self.abstract_state(ids, seed, model_sharding(stop - start)))

    def init_slice(self, inputs: SliceInputs, seed: int):
        """The fresh stacked state of the slice's models, sharded over the model axis."""
        return jax.jit(self.init, static_argnums=1, out_shardings=inputs.by_model)(inputs.ids, seed)

    def run_steps(self, state, totals, inputs: SliceInputs, order, num_in, x, y, first: int, stop: int):
        """Steps first..stop-1 of the epoch: one call of `steps`, or of `step` for a single step."""
        if stop - first == 1:
            return self.step(state, totals, order, num_in, inputs.ids, x, y, first)
        return self.steps(state, totals, order, num_in, inputs.ids, x, y, first, stop)


@dataclasses.dataclass(frozen=True)
class SliceInputs:
    """What a slice of models [start, stop) reads on the device besides its state: its model ids,
    its rows of keep and their IN counts (split over the model mesh), and the shardings."""

    start: int
    stop: int
    ids: jax.Array
    keep: jax.Array
    num_in: jax.Array
    by_model: NamedSharding
    replicated: NamedSharding

    @classmethod
    def place(cls, keep: np.ndarray, start: int, stop: int) -> SliceInputs:
        by_model, replicated = model_shardings(stop - start)
        return cls(
            start, stop, jax.device_put(np.arange(start, stop, dtype=np.int32), by_model),
            jax.device_put(keep[start:stop], by_model), jax.device_put(step_lib.in_counts(keep)[start:stop], by_model),
            by_model, replicated,
        )  # fmt: skip


def restore_slices(programs: Programs, slices, epoch: int, seed: int):
    """The states of training slices (start, stop, folder) saved at `epoch`, stacked on the model
    axis in that order and sharded over it."""
    states = [programs.restore(folder, a, b, epoch, seed) for a, b, folder in slices]
    if len(states) == 1:
        return states[0]
    stacked = jax.tree.map(lambda *leaves: np.concatenate([np.asarray(v) for v in leaves]), *states)
    return jax.device_put(stacked, model_sharding(sum(b - a for a, b, _ in slices)))


def train_models(
    *,
    logdir: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    keep: np.ndarray,
    arch: str,
    config: TrainingConfig,
    model_ids: tuple[int, int],
    conv_impl: str | None = None,
    dtype: str | None = None,
    pixels: Pixels | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict:
    """Trains models [start, stop) of `keep` [M, N] in steps of config.models_per_step models
    (0: the backend's default), computing in `dtype` (None: default_dtype()).

    Each slice [a, b) of models is trained under the lock ckpt/.models_AAAAA-BBBBB.lock: a slice
    another process holds is skipped with a note (trainers of one logdir split the work), and the
    slices left to others are named at the end. With the lock held, each slice resumes from its
    last checkpoint that verifies (checkpoint.latest_verified_epoch: a corrupt one is moved aside
    and its epochs trained again); a finished slice is skipped. Saves every
    config.checkpoint_every epochs (0: whenever the training since the last save took 20 times
    what saving kept the trainer waiting, so saves cost at most ~5%) and after the last epoch,
    in the background (checkpoint.AsyncSaver). Appends one row per (model, epoch) to
    train_log.jsonl once the checkpoint that covers it is on disk, so a killed run logs no
    epoch twice. Test accuracy every config.eval_every epochs on the first config.eval_examples
    test examples, and on all of them after the last epoch. `stop_after_epochs` ends the run
    early (after that many epochs of this call, without saving), as a kill would, for tests.

    The dataset goes to the device once per call (one call a process in the train stage): as
    `pixels` (uint8, standardized on the device to the same values) where the data has them, else
    x_train and x_test. Returns timings: {"train_s", "save_s", "eval_s", "epochs", "model_steps"}
    (for bench/: where the time of a run goes).
    """
    config.validate()
    start, stop = model_ids
    models_per_step = config.models_per_step or default_models_per_step(arch)
    model = get_model(arch, num_classes, conv_impl, jnp.dtype(dtype or default_dtype()))
    num_steps = step_lib.steps_per_epoch(keep.shape[1], config.pkeep, config.batch_size)
    per_call = config.steps_per_call or default_steps_per_call(num_steps)
    programs = Programs(model, config, num_steps, jnp.asarray(x_train[:1][0]))
    slices = [(a, min(a + models_per_step, stop)) for a in range(start, stop, models_per_step)]
    todo = [(a, b, checkpoint.latest_epoch(checkpoint.slice_dir(logdir, a, b))) for a, b in slices]
    remaining = sum((b - a) * (config.epochs - done) * num_steps for a, b, done in todo)
    temporaries.remove_stale(logdir)  # every stage starts so
    bar = tqdm(total=remaining, unit="model-step", disable=not progress, dynamic_ncols=True)
    data = _DeviceData(x_train, y_train, x_test, y_test, config.eval_examples, pixels)
    saver = checkpoint.AsyncSaver()
    times = {"train_s": 0.0, "save_s": 0.0, "eval_s": 0.0, "epochs": 0, "model_steps": 0}
    log_path = Path(logdir) / layout.TRAIN_LOG
    held_locks, left_to_others = [], []
    try:
        for a, b, seen in todo:
            folder = checkpoint.slice_dir(logdir, a, b)
            held = lock.try_acquire(folder.parent / f".{folder.name}.lock")
            if held is None:
                holder = lock.holder(folder.parent / f".{folder.name}.lock")
                print(f"Note: models {a}-{b - 1} are being trained by {holder}; going on to the next slice.")
                left_to_others.append(f"{a}-{b - 1}")
                bar.total -= (b - a) * (config.epochs - seen) * num_steps
                continue
            held_locks.append(held)
            # Read under the lock: its last holder may have saved since `todo` was made.
            done = checkpoint.latest_verified_epoch(folder)
            if done:  # a kill between that save and its log rows' append must not lose them
                _append_missing_rows(log_path, checkpoint.saved_log_rows(folder, done))
            bar.total += (b - a) * (seen - done) * num_steps
            if done >= config.epochs:
                held.release()
                continue
            inputs = SliceInputs.place(keep, a, b)
            x, y = data.train(inputs.replicated)
            state = (
                programs.restore(folder, a, b, done, config.seed)
                if done
                else programs.init_slice(inputs, config.seed)
            )
            pending_rows, trained_since_save, save_cost = [], 0.0, None
            for epoch in range(done, config.epochs):
                if stop_after_epochs is not None and times["epochs"] >= stop_after_epochs:
                    saver.wait()
                    bar.close()
                    return times
                tic = time.perf_counter()
                if config.dp:  # this epoch's Poisson draws, host-side: [m, S, P] indices and [m, S] sizes
                    from lira.training import sampling  # DP only, as in Programs

                    order, num_in = jax.device_put(
                        sampling.epoch_batches(keep, a, b, epoch, config, num_steps), inputs.by_model
                    )
                else:
                    order, num_in = programs.order(inputs.keep, inputs.ids, epoch, config.seed), inputs.num_in
                totals = zero_totals(b - a, inputs.by_model)
                for first in range(0, num_steps, per_call):
                    last = min(first + per_call, num_steps)
                    state, totals = programs.run_steps(
                        state, totals, inputs, order, num_in, x, y, first, last
                    )
                    bar.update((b - a) * (last - first))
                loss_sum, correct, first_bad = jax.device_get(totals)
                if (first_bad >= 0).any():
                    bad = np.flatnonzero(first_bad >= 0)
                    raise NonFiniteLossError(
                        "Non-finite loss: "
                        + ", ".join(f"model {a + i} at step {first_bad[i]}" for i in bad)
                        + f" (epoch {epoch + 1}); lower --lr or check the data."
                    )
                elapsed = time.perf_counter() - tic
                times["train_s"] += elapsed
                times["epochs"] += 1
                times["model_steps"] += (b - a) * num_steps
                trained_since_save += elapsed
                rows = _epoch_rows(a, epoch, loss_sum / num_steps, correct / (num_steps * config.batch_size))
                last_epoch = epoch + 1 == config.epochs
                if last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0):
                    tic = time.perf_counter()
                    xt, yt = data.test(inputs.replicated, subset=not last_epoch)
                    for row, acc in zip(rows, _accuracy(programs, state, xt, yt)):
                        row["test_acc"] = float(acc)
                        row["test_examples"] = int(xt.shape[0])
                    times["eval_s"] += time.perf_counter() - tic
                pending_rows += rows
                due = (
                    (epoch + 1) % config.checkpoint_every == 0
                    if config.checkpoint_every
                    else save_cost is None or trained_since_save >= SAVE_COST_RATIO * save_cost
                )
                if last_epoch or due:
                    then = _appender(log_path, pending_rows, held if last_epoch else None)
                    save_cost = saver.save(folder, epoch + 1, state, then=then, log_rows=pending_rows)
                    times["save_s"] += save_cost
                    pending_rows, trained_since_save = [], 0.0
                bar.set_postfix_str(
                    f"models {a}-{b - 1}, epoch {epoch + 1}/{config.epochs}, "
                    f"{(b - a) * num_steps * config.batch_size / elapsed:,.0f} ex/s, "
                    f"loss {np.mean(loss_sum) / num_steps:.3f}"
                )
    finally:
        saver.settle()  # its lock is not released under a write still in flight
        for held in held_locks:
            held.release()
    if left_to_others:
        print(f"Note: models {', '.join(left_to_others)} were left to the processes training them; run this "
              "command again once they end to check that every model finished.")  # fmt: skip
    tic = time.perf_counter()
    saver.wait()
    times["save_s"] += time.perf_counter() - tic
    bar.close()
    return times


# Automatic checkpoints: the training between two saves takes at least this many times what the
# last save kept the trainer waiting (the host copy of the state; the file is written in the
# background), so saving costs at most 1/20 = 5% of the training time.
SAVE_COST_RATIO = 20.0


def _appender(path: Path, rows: list[dict], then_release: lock.Lock | None = None):
    """What the checkpoint thread runs once a save is on disk: log the epochs it covers, then,
    after the slice's last save, release the slice's lock."""

    def append():
        layout.append_jsonl(path, rows)
        if then_release is not None:
            then_release.release()

    return append


def _append_missing_rows(path: Path, rows: list[dict]) -> None:
    """Appends the rows whose (model, epoch) train_log.jsonl lacks."""
    logged = {(row.get("model"), row.get("epoch")) for row in layout.read_jsonl(path)}
    missing = [row for row in rows if (row["model"], row["epoch"]) not in logged]
    if missing:
        layout.append_jsonl(path, missing)


class _DeviceData:
    """The train and test arrays on the device, put there once per process and sharding (every
    slice of the same size shares one copy), and the fixed test subset of the evaluations."""

    def __init__(self, x_train, y_train, x_test, y_test, eval_examples: int, pixels: Pixels | None = None):
        if pixels is not None:
            x_train = step_lib.DeviceImages.of(pixels.train, pixels)
            x_test = step_lib.DeviceImages.of(pixels.test, pixels)
        self.host = {"train": (x_train, y_train), "test": (x_test, y_test)}
        subset = eval_examples or len(y_test)
        self.host["subset"] = (_rows(x_test, 0, subset), y_test[:subset])
        self.placed: dict = {}

    def _get(self, name: str, sharding):
        key = (name, sharding)
        if key not in self.placed:
            self.placed[key] = tuple(jax.device_put(v, sharding) for v in self.host[name])
        return self.placed[key]

    def train(self, sharding):
        return self._get("train", sharding)

    def test(self, sharding, subset: bool):
        return self._get("subset" if subset else "test", sharding)


def _epoch_rows(first_model: int, epoch: int, loss, train_acc) -> list[dict]:
    return [
        {
            "model": first_model + i,
            "epoch": epoch + 1,
            "loss": float(loss[i]),
            "train_acc": float(train_acc[i]),
        }
        for i in range(len(loss))
    ]


def _accuracy(programs: Programs, state, x, y) -> np.ndarray:
    """float [M]: each model's accuracy on (x, y), in batches."""
    correct = 0
    for i in range(0, x.shape[0], EVAL_BATCH):
        correct = correct + programs.correct(state, _rows(x, i, i + EVAL_BATCH), y[i : i + EVAL_BATCH])
    return np.asarray(jax.device_get(correct)) / x.shape[0]


def _rows(x, start: int, stop: int):
    return x.rows(start, stop) if isinstance(x, step_lib.DeviceImages) else x[start:stop]


def load_slice_states(
    logdir: Path,
    arch: str,
    num_classes: int,
    config: TrainingConfig,
    sample_input,
    num_examples: int,
    conv_impl: str | None = None,
):
    """Yields (start, stop, state) for every finished slice, the state stacked over its models."""
    model = get_model(arch, num_classes, conv_impl)
    num_steps = step_lib.steps_per_epoch(num_examples, config.pkeep, config.batch_size)
    programs = Programs(model, config, num_steps, jnp.asarray(sample_input))
    for a, b, folder in checkpoint.finished_slices(logdir, config.epochs):
        yield a, b, programs.restore(folder, a, b, config.epochs, config.seed)
