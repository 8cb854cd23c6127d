"""A real training run against its own step: `python -m bench.training --case=end_to_end`.

A run should be as fast as its step: on the GPU, 64 cnn32 models trained for 3 epochs ran far
below the bench's rate for the same step (docs/performance.md, "GPU: the first figures"), lost
to checkpoints, evaluation and everything else a run does between steps. This case times
`lira.training.loop.train_models` (all epochs, with its checkpoints, its evaluation and its
per-slice set-up, on `slices` slices of the trainer's models a step) against the trainer's
compiled step alone (bench.harness's VmapRunner: the same arch, models a step, dtype, batch,
augmentation and data), and reports the ratio of their model-examples per second.

The data are synthetic, of the shape of the real thing (CIFAR-10's 32x32x3 uint8 images, or
Purchase100's 600 binary features for the MLP), written to an npz and read back through
lira.data.load_dataset, so the trainer gets exactly what a run's data loading gives it.
Compiling is not timed: one slice is trained through the same call first (filling the process's
compilation cache, and the persistent one when set), and the step is compiled and run once.
Each repeat then times the step for one epoch's worth of steps and the whole call in a fresh
folder, side by side; the ratio is the median of the repeats' ratios.
"""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from bench import cases, harness
from lira import data
from lira.config import TrainingConfig
from lira.run import masks
from lira.training import loop
from lira.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class Sizes:
    """num_examples: the pool (half of it IN per model); num_test: the test split; epochs of the
    timed call; slices: slices of models_per_step models it trains."""

    num_examples: int = 50_000
    num_test: int = 10_000
    epochs: int = 3
    slices: int = 2
    batch_size: int = 256
    repeats: int = 3


def write_pool(path: Path, arch: str, sizes: Sizes, seed: int = 0) -> None:
    """A synthetic npz of the arch's workload: uint8 images [N, 32, 32, 3] (CIFAR-10's shape) or
    binary features [N, 600] (Purchase100's), labels uniform over the workload's classes."""
    workload = cases.WORKLOADS[arch]
    rng = np.random.default_rng(seed)
    total = sizes.num_examples + sizes.num_test
    if len(workload.input_shape) == 3:
        x = rng.integers(0, 256, (total, *workload.input_shape), dtype=np.uint8)
    else:
        x = rng.integers(0, 2, (total, *workload.input_shape)).astype(np.float32)
    y = rng.integers(0, workload.num_classes, total).astype(np.int32)
    cut = sizes.num_examples
    path.parent.mkdir(parents=True, exist_ok=True)
    # num_classes: a small random pool may leave a class without a train example
    np.savez(
        path,
        x_train=x[:cut],
        y_train=y[:cut],
        x_test=x[cut:],
        y_test=y[cut:],
        num_classes=workload.num_classes,
    )


def training_config(sizes: Sizes, models_per_step: int, augment: str) -> TrainingConfig:
    """The trainer's defaults (evaluation, checkpoints, steps a call) but for the run's size."""
    return TrainingConfig(
        epochs=sizes.epochs, batch_size=sizes.batch_size, augment=augment, models_per_step=models_per_step
    )


def trainer_arguments(dtype: str, dataset) -> dict:
    """What train_models is told besides the run, as the train stage tells it: the compute dtype
    (its `dtype` argument; without one, an older lira, it computes in float32 and any
    other dtype is a mistake) and the images as uint8 pixels (its `pixels`, where it takes them
    and lira.data gave them)."""
    takes = inspect.signature(loop.train_models).parameters
    if "dtype" not in takes and dtype != "float32":
        raise ValueError(f"--dtypes={dtype}: this trainer (lira.training.loop.train_models) takes no dtype; "
                         "valid here: float32.")  # fmt: skip
    out = {"dtype": dtype} if "dtype" in takes else {}
    if "pixels" in takes and getattr(dataset, "pixels", None) is not None:
        out["pixels"] = dataset.pixels
    return out


def measure(arch: str, models_per_step: int, dtype: str, conv_impl: str | None, sizes: Sizes, workdir: Path,
            augment: str = "weak") -> dict:  # fmt: skip
    """Times train_models on sizes.slices slices of `models_per_step` models against the same
    step alone. Returns the figures (model-examples per second of each, their ratio per repeat,
    the run's settings)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pool = workdir / "pool.npz"
    write_pool(pool, arch, sizes)
    dataset = data.load_dataset(f"npz:{pool}")
    num_models = models_per_step * sizes.slices
    keep = masks.make_keep(max(num_models, 2), sizes.num_examples, 0.5, seed=0)[:num_models]
    augment = augment if dataset.is_image else "none"
    config = training_config(sizes, models_per_step, augment)
    spe = step_lib.steps_per_epoch(sizes.num_examples, config.pkeep, config.batch_size)

    extra = trainer_arguments(dtype, dataset)
    trainer_times = []  # where train_models says its time went, where it says so

    def train(logdir: Path, model_ids: tuple[int, int]) -> float:
        tic = time.perf_counter()
        times = loop.train_models(
            logdir=logdir, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
            y_test=dataset.y_test, num_classes=dataset.num_classes, keep=keep, arch=arch, config=config,
            model_ids=model_ids, conv_impl=conv_impl, progress=False, **extra,
        )  # fmt: skip
        seconds = time.perf_counter() - tic
        trainer_times.append(times)
        shutil.rmtree(logdir, ignore_errors=True)
        return seconds

    warmup_s = train(workdir / "warmup", (0, models_per_step))  # compiles every program of the call
    workload = cases.Workload(tuple(dataset.x_train.shape[1:]), dataset.num_classes, sizes.num_examples,
                              sizes.batch_size)  # fmt: skip
    case = cases.Case(arch, "vmap", models_per_step, conv_impl, dtype)
    step = harness.VmapRunner(case, workload, dataset.x_train, dataset.y_train, spe * models_per_step, augment,
                              extra.get("pixels"))  # fmt: skip
    step_compile_s = step.compile()
    step.run()
    step_work = step.model_steps * sizes.batch_size
    run_work = num_models * sizes.epochs * spe * sizes.batch_size
    step_s, run_s = [], []
    for repeat in range(sizes.repeats):
        tic = time.perf_counter()
        step.run()
        step_s.append(time.perf_counter() - tic)
        run_s.append(train(workdir / f"run{repeat}", (0, num_models)))
    ratios = [(run_work / r) / (step_work / s) for r, s in zip(run_s, step_s)]
    return {
        "arch": arch, "method": "end_to_end", "name": f"{arch}/end_to_end/x{models_per_step}"
        + ("" if dtype == "float32" else f"/{dtype}"), "dtype": dtype, "conv_impl": conv_impl,
        "models_per_step": models_per_step, "batch_size": sizes.batch_size, "num_models": num_models,
        "slices": sizes.slices, "epochs": sizes.epochs, "steps_per_epoch": spe, "num_examples": sizes.num_examples,
        "num_test": sizes.num_test, "augment": augment,
        "config": {k: getattr(config, k) for k in ("eval_every", "checkpoint_every", "steps_per_call", "eval_examples")
                   if hasattr(config, k)},
        "model_examples_per_s": run_work / statistics.median(run_s),
        "step_model_examples_per_s": step_work / statistics.median(step_s),
        "end_to_end_vs_step": statistics.median(ratios), "ratios": ratios, "run_times_s": run_s,
        "step_times_s": step_s, "warmup_s": warmup_s, "step_compile_s": step_compile_s,
        "steps_per_call": step.steps_per_call, "trainer_times": trainer_times[1:],
    }  # fmt: skip
