"""The GPU check's correctness part: model i of a vectorized run is model i trained alone.

    python -m bench.vectorized_check --json=check.json [--data=data_cache/cifar10_6k.npz] [--smoke]

Trains run.num_models models run.models_per_step at a time with lira's trainer, then
run.check_models alone with the same keys, and compares them: first in float32 with matmuls at
full precision ("highest"), which decides the check; then at the backend's default precision
and the trainer's default dtype, reported alongside. Each stage's results are saved as soon as
it finishes, so a kill keeps what ran.

Vectorized and single convolutions differ only in summation order, but training amplifies
rounding: on an H200 (2026-11-30), after 33 steps at full precision, model 0 differed from its
single run by 7.0e-3 of its largest weight, while models 0 and 63 differed by 2.8. So the check
passes when the vectorized run's largest difference from the single runs (params and logits,
relative to each array's largest magnitude) is at most --rtol times the difference between two
models of the run: model i of the vectorized run is model i trained alone, not another model.
The exact equality is the CPU tests' job (tests/test_train.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from bench import CIFAR10_SUBSET, end_to_end
from lira import cli, data
from lira.config import TrainingConfig
from lira.run import layout, masks
from lira.training import loop, models
from lira.training import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny sizes on the CPU, for the tests.")
flags.DEFINE_string("json", None, "Where the results go (rewritten after every stage).")
flags.DEFINE_string("data", None, "The npz of the CIFAR-10 subset (default data_cache/cifar10_6k.npz).")
flags.DEFINE_float("rtol", 1e-2, "Tolerance of the check, relative to the difference between two models.")

REPO = Path(__file__).resolve().parents[1]
CHECK_PRECISION = "highest"


@dataclasses.dataclass(frozen=True)
class Run:
    """num_models trained models_per_step at a time, then check_models alone."""

    arch: str
    num_models: int
    models_per_step: int
    epochs: int
    batch_size: int
    num_examples: int  # the pool (the whole CIFAR-10 subset on the GPU)
    num_test: int
    check_models: tuple[int, ...]


def the_run(smoke: bool) -> Run:
    if smoke:
        return Run("cnn-tiny", 4, 4, 2, 16, 128, 32, (0, 3))
    return Run("cnn32", 64, 64, 3, 256, 5170, 1000, (0, 63))


def check(run: Run, data_path: Path, rtol: float, save) -> None:
    """The check at CHECK_PRECISION in float32, then the same comparison at the defaults;
    save(result) after each."""
    dataset, source = load_data(data_path, run)
    steps = step_lib.steps_per_epoch(len(dataset.y_train), 0.5, run.batch_size)
    result = {**dataclasses.asdict(run), "data": source, "num_examples": len(dataset.y_train),
              "steps_per_epoch": steps}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lira-gpu-check-") as tmp:
        with jax.default_matmul_precision(CHECK_PRECISION):
            tic = time.perf_counter()
            trained = Trained(run, dataset, "float32")
            trained.vectorized(Path(tmp, CHECK_PRECISION))
            trained.single(Path(tmp, CHECK_PRECISION))
            comparison = compare(Path(tmp, CHECK_PRECISION), run, dataset)
        worst = max(comparison["params_rel_diff"], comparison["logits_rel_diff"])
        passed = worst <= rtol * comparison["between_models_rel_diff"]
        result["check"] = {**comparison, "precision": CHECK_PRECISION, "dtype": "float32", "rtol": rtol,
                           "worst_rel_diff": worst, "passed": bool(passed),
                           "wall_s": time.perf_counter() - tic}  # fmt: skip
        print(f"check at precision {CHECK_PRECISION}: {'passed' if passed else 'FAILED'}, "
              f"{result['check']['wall_s']:.1f} s")  # fmt: skip
        save(result)
        tic = time.perf_counter()
        trained = Trained(run, dataset, None)
        trained.vectorized(Path(tmp, "default"))
        trained.single(Path(tmp, "default"))
        result["default_precision"] = {**compare(Path(tmp, "default"), run, dataset), "dtype": trained.dtype,
                                       "wall_s": time.perf_counter() - tic}  # fmt: skip
        print(
            f"the same at the default precision and dtype ({trained.dtype}): {time.perf_counter() - tic:.1f} s"
        )
        save(result)


class Trained:
    """lira.training.loop.train_models on the run's data in `dtype` (None: the trainer's
    default), as tests/helpers.py calls it: all models vectorized under logdir/vectorized, or
    each of run.check_models alone under logdir/single."""

    def __init__(self, run: Run, dataset, dtype: str | None):
        self.run, self.dataset = run, dataset
        self.dtype = dtype or getattr(loop, "default_dtype", lambda: "float32")()
        self.keep = masks.make_keep(run.num_models, len(dataset.y_train), 0.5, seed=0)

    def vectorized(self, logdir: Path) -> None:
        self._train(logdir / "vectorized", (0, self.run.num_models), self.run.models_per_step)

    def single(self, logdir: Path) -> None:
        for i in self.run.check_models:
            self._train(logdir / "single", (i, i + 1), 1)

    def _train(self, logdir, model_ids, models_per_step):
        pool = self.dataset
        loop.train_models(
            logdir=logdir, x_train=pool.x_train, y_train=pool.y_train, x_test=pool.x_test, y_test=pool.y_test,
            num_classes=pool.num_classes, keep=self.keep, arch=self.run.arch,
            config=dataclasses.replace(train_config(self.run), models_per_step=models_per_step),
            model_ids=model_ids, progress=False, **end_to_end.trainer_arguments(self.dtype, pool),
        )  # fmt: skip


def load_data(path: Path, run: Run):
    """(lira.data.Dataset, what it is): the npz's first run.num_examples examples, or as many
    synthetic 32x32x3 images whose class shifts their mean when the npz is not there."""
    if path.is_file():
        dataset = data.load_dataset(f"npz:{path}", pool_size=run.num_examples)
        cut = {"x_test": dataset.x_test[: run.num_test], "y_test": dataset.y_test[: run.num_test]}
        if getattr(dataset, "pixels", None) is not None:  # the uint8 images the trainer takes
            cut["pixels"] = dataclasses.replace(dataset.pixels, test=dataset.pixels.test[: run.num_test])
        dataset = dataclasses.replace(dataset, **cut)
        return dataset, os.path.relpath(path, REPO)
    print(f"{path} is not there: the check trains on synthetic images instead.")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, run.num_examples + run.num_test).astype(np.int32)
    x = rng.standard_normal((len(y), 32, 32, 3), dtype=np.float32) + y[:, None, None, None] / 5
    cut = run.num_examples
    return data.Dataset("synthetic", x[:cut], y[:cut], x[cut:], y[cut:], 10), "synthetic images"


def train_config(run: Run) -> TrainingConfig:
    return TrainingConfig(epochs=run.epochs, batch_size=run.batch_size, eval_every=run.epochs)


def compare(logdir: Path, run: Run, dataset) -> dict:
    """How far each model of the vectorized run is from its single-model run: the largest
    difference of any parameter (or BatchNorm statistic) array, and of the test logits, each
    relative to that array's largest magnitude."""
    config, sample, size = train_config(run), dataset.x_train[0], len(dataset.y_train)
    load = lambda folder: {
        start + offset: jax.tree.map(lambda leaf, offset=offset: leaf[offset], state)
        for start, stop, state in loop.load_slice_states(
            folder, run.arch, dataset.num_classes, config, sample, size
        )  # fmt: skip
        for offset in range(stop - start)
    }
    vectorized, single = load(logdir / "vectorized"), load(logdir / "single")
    model = models.get_model(run.arch, dataset.num_classes)
    predict = jax.jit(lambda state, x: step_lib.predict(model, state, x))
    logits = lambda state: np.asarray(predict(state, dataset.x_test))
    weights = lambda state: (state.params, state.batch_stats)
    rows = []
    for i in run.check_models:
        a, b = logits(vectorized[i]), logits(single[i])
        rows.append({"model": i, "params_rel_diff": relative_difference(weights(vectorized[i]), weights(single[i])),
                     "logits_rel_diff": relative_difference(a, b),
                     "same_argmax": float(np.mean(a.argmax(-1) == b.argmax(-1)))})  # fmt: skip
    first, second = run.check_models[:2]
    return {
        "models": list(run.check_models), "per_model": rows,
        "params_rel_diff": max(r["params_rel_diff"] for r in rows),
        "logits_rel_diff": max(r["logits_rel_diff"] for r in rows),
        "same_argmax": min(r["same_argmax"] for r in rows),
        "between_models_rel_diff": relative_difference(weights(vectorized[first]), weights(vectorized[second])),
    }  # fmt: skip


def relative_difference(a, b) -> float:
    """max over the arrays of pytrees a and b of max|a - b| / max|b|."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
    return worst


def main(argv) -> int:
    del argv
    save = functools.partial(layout.save_json, Path(FLAGS.json)) if FLAGS.json else lambda result: None
    check(the_run(FLAGS.smoke), Path(FLAGS.data or CIFAR10_SUBSET), FLAGS.rtol, save)
    return 0


if __name__ == "__main__":
    cli.run(main)
