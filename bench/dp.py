"""DP-SGD's training step against the ordinary one, both vectorized over models (lira/training/dpsgd.py).

    python -m bench.dp [--arch=mlp,cnn32] [--models=4] [--repeats=5] [--json=docs/bench/bench_dp_cpu.json]

For each arch: the trainer's compiled step (lira.training.loop.Programs.step) on the same models
and synthetic data (bench/cases.py), once ordinary and as DP-SGD with each clipping
(lira/training/dpsgd.py: jax-privacy's per-example gradients, or ghost clipping; Gaussian
noise, Poisson batches padded to the physical batch B + 5 sqrt(B)). All are timed interleaved,
compiling excluded; the figures are medians over repeats of each DP step's time over the
ordinary step's, measured side by side. Per model-example of the
*expected* batch B, so the padding of the DP batch counts as DP's cost.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from bench import harness
from bench.cases import WORKLOADS, bench_keep, synthetic_data, train_config
from lira import cli
from lira.training import loop, sampling
from lira.training import step as step_lib
from lira.training.models import get_model

FLAGS = flags.FLAGS
CLIPPINGS = ("per_example", "ghost")  # lira/training/dpsgd.py
flags.DEFINE_list("arch", ["mlp", "cnn32"], "Architectures to time.")
flags.DEFINE_integer("models", 4, "Models a step (vectorized).")
flags.DEFINE_integer("steps", 8, "Steps a timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs of each step, interleaved.")
flags.DEFINE_integer("batch_size", 256, "Expected batch per model.")
flags.DEFINE_string("json", None, "Also write the results here.")


class StepRunner:
    """The trainer's compiled step for `num_models` models under `config`, `steps` steps a run."""

    def __init__(self, arch: str, config, num_models: int, steps: int):
        workload = dataclasses.replace(WORKLOADS[arch], batch_size=config.batch_size)
        x, y = synthetic_data(workload)
        keep = bench_keep(num_models, workload.num_examples)
        spe = step_lib.steps_per_epoch(workload.num_examples, 0.5, config.batch_size)
        model = get_model(arch, workload.num_classes)
        self.programs = loop.Programs(model, config, spe, jnp.asarray(x[0]))
        inputs = loop.SliceInputs.place(keep, 0, num_models)
        self.x, self.y = jax.device_put(x, inputs.replicated), jax.device_put(y, inputs.replicated)
        self.state = self.programs.init_slice(inputs, 0)
        if config.dp:
            self.order, self.num_in = jax.device_put(
                sampling.epoch_batches(keep, 0, num_models, 0, config, spe), inputs.by_model
            )
        else:
            self.order, self.num_in = self.programs.order(inputs.keep, inputs.ids, 0, 0), inputs.num_in
        self.ids, self.totals = inputs.ids, loop.zero_totals(num_models, inputs.by_model)
        self.steps, self.steps_per_epoch = steps, spe
        self.model_examples = steps * num_models * config.batch_size

    def _args(self, step):
        return self.state, self.totals, self.order, self.num_in, self.ids, self.x, self.y, step

    def compile(self) -> float:
        tic = time.perf_counter()
        self.compiled = self.programs.step.lower(*self._args(0)).compile()
        self.run()  # warm-up
        return time.perf_counter() - tic

    def run(self) -> None:
        for step in range(self.steps):
            self.state, self.totals = self.compiled(*self._args(step % self.steps_per_epoch))
        jax.block_until_ready((self.state, self.totals))


def bench_arch(arch: str, num_models: int, steps: int, repeats: int, batch_size: int) -> dict:
    base = dataclasses.replace(
        train_config(WORKLOADS[arch]), batch_size=batch_size, models_per_step=num_models
    )
    dp_config = dataclasses.replace(base, dp_noise_multiplier=1.0, dp_clip_norm=1.0)
    configs = {"sgd": base, **{f"dp_{m}": dataclasses.replace(dp_config, dp_clipping=m) for m in CLIPPINGS}}
    runners = {name: StepRunner(arch, config, num_models, steps) for name, config in configs.items()}
    compile_s = {name: runner.compile() for name, runner in runners.items()}
    wall, _ = harness.time_interleaved(runners, repeats)
    ratios = {f"dp_{m}_vs_sgd_time": statistics.median(d / s for d, s in zip(wall[f"dp_{m}"], wall["sgd"]))
              for m in CLIPPINGS}  # fmt: skip
    out = {
        "models": num_models, "batch_size": batch_size, "physical_dp_batch": sampling.max_batch_size(batch_size),
        "steps_per_run": steps, **ratios, "compile_s": compile_s,
        **{name: {"median_s": statistics.median(times), "model_examples_per_s":
                  runners[name].model_examples / statistics.median(times), "runs_s": times}
           for name, times in wall.items()},
    }  # fmt: skip
    return out


def main(argv):
    del argv
    results = {}
    print(f"{'arch':8} {'clipping':12} {'model-ex/s':>11} {'time / SGD':>11}")
    for arch in FLAGS.arch:
        result = bench_arch(arch, FLAGS.models, FLAGS.steps, FLAGS.repeats, FLAGS.batch_size)
        results[arch] = result
        print(f"{arch:8} {'(SGD)':12} {result['sgd']['model_examples_per_s']:11,.0f}")
        for m in CLIPPINGS:
            print(f"{arch:8} {m:12} {result[f'dp_{m}']['model_examples_per_s']:11,.0f} "
                  f"{result[f'dp_{m}_vs_sgd_time']:10.2f}x")  # fmt: skip
    if FLAGS.json:
        environment = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                       "jax": jax.__version__}  # fmt: skip
        with open(FLAGS.json, "w") as f:
            json.dump({"dp_step": results, "environment": environment}, f, indent=2)


if __name__ == "__main__":
    cli.run(main)
