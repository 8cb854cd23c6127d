"""One compiled call a step against a lax.fori_loop over the steps of an epoch, on this backend.

    python -m bench.steps_per_call --json=docs/results/steps_per_call_cpu/results.json
    python -m bench.steps_per_call --arch=cnn32 --models_per_step=1 --repeats=5

Each case trains the same slice of models for one epoch of synthetic data through
lira.training.loop.Programs, either one `step` call a step or one `steps` call (fori_loop) for
the whole epoch, after a warm-up that compiles both. The cases alternate within every repeat, so
the ratio of their medians is taken side by side. lira.training.loop.default_steps_per_call
rests on these figures.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
from absl import flags

from bench import cases as bench_cases
from bench import harness
from lira import cli
from lira.run import layout
from lira.training import loop
from lira.training import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("arch", ["mlp", "cnn32"], "Architectures.")
flags.DEFINE_integer("models_per_step", 0, "Models a step (0: the trainer's default for the arch).")
flags.DEFINE_integer("num_examples", 1024, "Pool size; an epoch is num_examples / 2 / batch_size steps.")
flags.DEFINE_integer("batch_size", 64, "Examples per model per step.")
flags.DEFINE_integer("repeats", 5, "Timed epochs per case.")
flags.DEFINE_string("json", None, "Write the results here as JSON.")


def time_arch(arch: str) -> dict:
    workload = bench_cases.Workload(
        bench_cases.WORKLOADS[arch].input_shape, bench_cases.WORKLOADS[arch].num_classes, FLAGS.num_examples,
        FLAGS.batch_size,
    )  # fmt: skip
    x, y = bench_cases.synthetic_data(workload)
    num_models = FLAGS.models_per_step or loop.default_models_per_step(arch)
    # The trainer's programs, pool, state and order, as the training benchmark sets them up.
    runner = harness.VmapRunner(bench_cases.Case(arch, "vmap", num_models), workload, x, y, model_steps=1)
    num_steps = step_lib.steps_per_epoch(workload.num_examples, 0.5, workload.batch_size)
    by_model = runner.order.sharding
    state = runner.state

    def epoch(state, per_call, program):
        totals = loop.zero_totals(num_models, by_model)
        for first in range(0, num_steps, per_call):
            args = (state, totals, runner.order, runner.num_in, runner.ids, runner.x, runner.y, first)
            if program == "step":
                state, totals = runner.step(*args)
            else:
                state, totals = runner.loop_step(*args, min(first + per_call, num_steps))
        jax.block_until_ready(totals)
        return state

    # name: (steps a call, program): the straight step program, or the fori_loop one
    cases = {
        "step_program": (1, "step"),
        "loop_program_1_step": (1, "steps"),
        "loop_program_epoch": (num_steps, "steps"),
    }
    times = {name: [] for name in cases}
    for case in cases.values():  # warm-up: compiles both programs
        state = epoch(state, *case)
    for _ in range(FLAGS.repeats):
        for name, case in cases.items():
            tic = time.perf_counter()
            state = epoch(state, *case)
            times[name].append(time.perf_counter() - tic)
    speedup = lambda name: statistics.median(
        a / b for a, b in zip(times["step_program"], times[name], strict=True)
    )
    return {
        "arch": arch, "models_per_step": num_models, "batch_size": workload.batch_size, "steps_per_epoch": num_steps,
        "times_s": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "speedup_vs_step_program": {name: speedup(name) for name in cases if name != "step_program"},
    }  # fmt: skip


def main(argv):
    del argv
    rows = [time_arch(arch) for arch in FLAGS.arch]
    print("seconds per epoch (median), and the speed against the step program (side by side):")
    for r in rows:
        print(f"{r['arch']} x{r['models_per_step']}, {r['steps_per_epoch']} steps an epoch:")
        for name, seconds in r["median_s"].items():
            ratio = r["speedup_vs_step_program"].get(name, 1.0)
            print(f"  {name:22s} {seconds:8.3f} s  {ratio:5.2f}x")
    out = {"cases": rows, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "jax": jax.__version__}  # fmt: skip
    if FLAGS.json:
        layout.save_json(Path(FLAGS.json), out)
        print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main)
