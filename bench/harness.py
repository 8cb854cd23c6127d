"""Shadow-training throughput, the timed cases behind bench/training.py.

A case trains `models_per_step`-wide chunks of models on synthetic data and is timed in
model-examples per second: models x examples per model x steps / seconds. The figure that
matters for an audit is how fast 64-256 shadow models train, whatever the batching of them.

Methods:
  vmap   the trainer's own compiled step (lira.training.loop.Programs.step: jax.vmap of
         lira.training.step.make_train_step over a leading model axis, donated state).
  loop   the same make_train_step without vmap, jitted once, the models trained one after
         another: what a user without the vectorized trainer would write.
  torch  a PyTorch model of the same widths, SGD the same way, models one after another as
         ML Privacy Meter does (bench/torch_baseline.py); conv nets in PyTorch's NCHW layout,
         as ML Privacy Meter runs them, and channels_last (faster on the CPU). PyTorch runs in
         a process of its own, with glibc's malloc as it comes ("glibc", as ML Privacy Meter
         runs) or with transparent huge pages ("thp": THP_TUNABLE, as run.sh runs lira).

All methods gather every batch from a device-resident pool by index, as the trainer does, and
apply the same training augmentation, so they do the same work per model-example.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import child_env
from bench.cases import (
    CONV_ARCHS,
    METHODS,
    Case,
    Workload,
    bench_keep,
    synthetic_data,
    train_config,
)  # noqa: F401  (re-exported for the scripts)
from lira import xla_flags
from lira.config import Config
from lira.training import layers, loop, masks
from lira.training import step as step_lib
from lira.training.models import default_conv_impl, get_model


def default_case(arch: str, backend: str | None = None) -> Case:
    """The configuration the trainer picks by itself on this backend."""
    impl = default_conv_impl(backend, arch) if arch in CONV_ARCHS else None
    return Case(arch, "vmap", loop.default_models_per_step(arch, backend), impl)


class VmapRunner:
    """The trainer's compiled step on `models_per_step` models, run for `steps` steps."""

    def __init__(self, case: Case, workload: Workload, x, y, model_steps: int, augment: str = "weak"):
        config = train_config(workload, augment)
        model = get_model(case.arch, workload.num_classes, case.conv_impl, jnp.dtype(case.dtype))
        num_models = case.models_per_step
        spe = step_lib.steps_per_epoch(workload.num_examples, 0.5, config.batch_size)
        programs = loop.Programs(model, config, spe, jnp.asarray(x[0]))
        inputs = loop.SliceInputs.place(bench_keep(num_models, workload.num_examples), 0, num_models)
        self.x, self.y = jax.device_put(x, inputs.replicated), jax.device_put(y, inputs.replicated)
        self.ids, self.num_in = inputs.ids, inputs.num_in
        self.state = programs.init_slice(inputs, 0)
        self.order = programs.order(inputs.keep, inputs.ids, 0, 0)
        self.totals = loop.zero_totals(num_models, inputs.by_model)
        self.programs, self.steps_per_epoch = programs, spe
        self.steps = max(1, math.ceil(model_steps / num_models))
        self.model_steps, self.num_models = self.steps * num_models, num_models
        self.compiled = None

    def _args(self, step):
        return self.state, self.totals, self.order, self.num_in, self.ids, self.x, self.y, step

    def compile(self) -> float:
        tic = time.perf_counter()
        self.compiled = self.programs.step.lower(*self._args(0)).compile()
        return time.perf_counter() - tic

    def run(self) -> None:
        for step in range(self.steps):
            self.state, self.totals = self.compiled(*self._args(step % self.steps_per_epoch))
        jax.block_until_ready((self.state, self.totals))

    def flops_per_step(self) -> float | None:
        """XLA's count for one compiled step (all models), or None if the backend gives none."""
        return _flops(self.compiled)


class LoopRunner:
    """make_train_step jitted without vmap; `num_models` models trained one after another."""

    def __init__(self, case: Case, workload: Workload, x, y, model_steps: int, num_models: int = 4,
                 augment: str = "weak"):  # fmt: skip
        config = train_config(workload, augment)
        model = get_model(case.arch, workload.num_classes, case.conv_impl, jnp.dtype(case.dtype))
        self.steps_per_epoch = step_lib.steps_per_epoch(workload.num_examples, 0.5, config.batch_size)
        tx = step_lib.make_optimizer(config, self.steps_per_epoch)
        init = jax.jit(step_lib.make_init(model, tx, jnp.asarray(x[0])), static_argnums=1)
        keep = bench_keep(num_models, workload.num_examples)
        self.x, self.y = jax.device_put(x), jax.device_put(y)
        self.states = [init(m, 0) for m in range(num_models)]
        order = jax.jit(step_lib.epoch_order, static_argnums=3)
        self.orders = [order(keep[m], m, 0, 0) for m in range(num_models)]
        self.num_in = [jnp.int32(n) for n in step_lib.in_counts(keep)]
        self.step = jax.jit(step_lib.make_train_step(model, tx, config), donate_argnums=0)
        self.steps = max(1, math.ceil(model_steps / num_models))
        self.model_steps, self.num_models = self.steps * num_models, num_models
        self.compiled = None

    def _args(self, m, step):
        return self.states[m], self.orders[m], self.num_in[m], jnp.int32(m), self.x, self.y, step

    def compile(self) -> float:
        tic = time.perf_counter()
        self.compiled = self.step.lower(*self._args(0, 0)).compile()
        return time.perf_counter() - tic

    def run(self) -> None:
        for m in range(len(self.states)):
            for step in range(self.steps):
                self.states[m], _, _ = self.compiled(*self._args(m, step % self.steps_per_epoch))
        jax.block_until_ready(self.states)

    def flops_per_step(self) -> float | None:
        return _flops(self.compiled)


def make_runner(case: Case, workload: Workload, x, y, model_steps: int, loop_models: int = 4,
                augment: str = "weak", torch_process: str | None = "PASSIVE"):  # fmt: skip
    """The runner of `case`. torch_process: run PyTorch in a worker process with this
    OMP_WAIT_POLICY ("" for libgomp's default); None: in this process."""
    if case.method == "vmap":
        return VmapRunner(case, workload, x, y, model_steps, augment)
    if case.method == "loop":
        return LoopRunner(case, workload, x, y, model_steps, loop_models, augment)
    if case.method == "torch":
        from bench import torch_baseline  # torch is optional: requirements-bench.txt

        if torch_process is not None:
            return torch_baseline.TorchProcess(
                case, workload, model_steps, loop_models, augment, torch_process
            )
        return torch_baseline.TorchRunner(case, workload, x, y, model_steps, loop_models, augment)
    raise ValueError(f"Unknown method {case.method!r}; valid: {METHODS}.")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA failing to allocate (device memory on a GPU or TPU)."""
    text = str(error)
    return isinstance(error, jax.errors.JaxRuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "Out of memory" in text
    )


def prepare_runner(build) -> tuple[object | None, float | None]:
    """(runner, compile seconds) of `build()`, compiled and run once (the warm-up), so that a
    case too big for the device fails here rather than in the middle of the timing; (None, None)
    if it runs out of memory. Any other error propagates."""
    runner = None
    try:
        runner = build()
        compile_s = runner.compile()
        runner.run()
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        getattr(runner, "close", lambda: None)()
        return None, None
    return runner, compile_s


def _flops(compiled) -> float | None:
    analysis = compiled.cost_analysis() if compiled is not None else None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def train_flops_per_example(arch: str, workload: Workload) -> float | None:
    """FLOPs of one model's training step per example, by XLA's cost analysis of the real
    single-model step with every convolution native (im2col's shifted slices count the same
    multiply-adds, but a grouped conv under vmap may be counted differently, and the
    space-to-depth stem does 1.8x its layer's work, so one count serves every case of the
    arch: the model's FLOPs, not an implementation's)."""
    impl = "xla" if arch in CONV_ARCHS else None
    workload = dataclasses.replace(workload, num_examples=2 * workload.batch_size)
    x, y = synthetic_data(workload)
    runner = LoopRunner(Case(arch, "loop", 1, impl), workload, x, y, 1, num_models=1)
    with layers.without_space_to_depth():
        runner.compile()
    flops = runner.flops_per_step()
    return flops / workload.batch_size if flops else None


def matmul_peak_flops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """FLOP/s of a [size, size] @ [size, size] matmul in `dtype`, the median of `repeats`:
    the practical compute ceiling a training step in that dtype can be held against."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    compiled = jax.jit(jnp.matmul).lower(a, a).compile()
    compiled(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        compiled(a, a).block_until_ready()
        times.append(time.perf_counter() - tic)
    return 2.0 * size**3 / statistics.median(times)


# The LiRA paper's CIFAR-10 experiment (Carlini et al., 2022, "Membership Inference Attacks From
# First Principles"): 256 shadow WRN-28-2, each trained 100 epochs on a random half of the
# 50,000 training images.
LIRA_PAPER_CIFAR10 = {"models": 256, "epochs": 100, "examples_in": 25_000}


def model_examples(batch_size: int, models: int, epochs: int, examples_in: int) -> int:
    """Model-examples of training `models` models for `epochs` epochs of `examples_in` examples,
    with the trainer's ceil(examples_in / batch_size) full batches per epoch."""
    return models * epochs * math.ceil(examples_in / batch_size) * batch_size


def time_interleaved(runners: dict, repeats: int) -> tuple[dict, dict]:
    """({name: [wall seconds per run]}, {name: [CPU seconds per run]}).

    The runners are warmed up already (prepare_runner). Every repeat runs every case once, in
    an order rotated each repeat, so that load from other processes on a shared machine falls
    on all cases alike and ratios can be taken within a repeat. CPU seconds (all threads of the
    process that ran the case) are the steadier figure when other processes compete for the
    cores.
    """
    names = list(runners)
    wall, cpu = {name: [] for name in names}, {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            tic, cpu_tic = time.perf_counter(), time.process_time()
            worker_cpu = runners[name].run()  # a runner in another process reports its own CPU time
            wall[name].append(time.perf_counter() - tic)
            cpu[name].append(worker_cpu if worker_cpu is not None else time.process_time() - cpu_tic)
    return wall, cpu


def paired_ratio(times_a, work_a, times_b, work_b) -> float:
    """Median over repeats of throughput(a) / throughput(b), both timed in the same repeat."""
    return statistics.median((work_a / ta) / (work_b / tb) for ta, tb in zip(times_a, times_b))


# --- Peak memory, each case in a fresh process ---------------------------------------------------


def _proc_status() -> dict[str, int]:
    """{field: kB} of /proc/self/status memory lines (VmRSS, VmHWM, RssAnon, RssFile)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


class PeakMemory:
    """Peak resident memory of this process from `start()` on, in MB.

    `rss_mb`: the kernel's high-water mark VmHWM (exact), reset at start through
    /proc/self/clear_refs, minus the RSS at start. `anon_mb` / `file_mb`: the largest anonymous
    (heap, XLA buffers) and file-backed (memory-mapped files, libraries) parts seen by a 10 ms
    sampler, minus their values at start. `device_mb`: the accelerator's peak_bytes_in_use, on
    backends that keep memory stats (not the CPU).
    """

    def __init__(self):
        import threading

        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> PeakMemory:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        self.start_status = self.peak = _proc_status()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            status = _proc_status()
            with self._lock:
                self.peak = {k: max(v, self.peak[k]) for k, v in status.items()}

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        end, begin = _proc_status(), self.start_status
        out = {
            "rss_mb": (end["VmHWM"] - begin["VmRSS"]) / 1024,
            "anon_mb": (self.peak["RssAnon"] - begin["RssAnon"]) / 1024,
            "file_mb": (self.peak["RssFile"] - begin["RssFile"]) / 1024,
        }
        stats = jax.local_devices()[0].memory_stats() or {}
        out["device_mb"] = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None
        return out


def child_main(spec: dict) -> dict:
    """Runs one measured job in this (fresh) process; `spec["job"]` is "train" or "inference"."""
    xla_flags.add_cpu_flags()  # as the scripts run: before JAX starts
    if spec["job"] == "train":
        case, workload = (
            Case(**spec["case"]),
            Workload(**{**spec["workload"], "input_shape": tuple(spec["workload"]["input_shape"])}),
        )
        x, y = synthetic_data(workload)
        if case.method == "torch":
            import torch  # noqa: F401  (its import is not part of the case's footprint)
        meter = PeakMemory().start()
        runner = make_runner(
            case, workload, x, y, spec["model_steps"], spec["loop_models"], spec["augment"], None
        )
        runner.compile()
        runner.run()  # the first run holds the peak: every buffer of a step is live at least once
        return meter.stop()

    from lira.stages import query  # imported before the meter starts: its code is not the footprint

    meter = PeakMemory().start()
    tic = time.perf_counter()
    if spec.get("whitebox"):
        query.query_whitebox(spec["logdir"], spec["queries"], progress=False)
    else:
        query.query(spec["logdir"], spec["queries"], spec["batch_size"], progress=False)
    return {**meter.stop(), "wall_s": time.perf_counter() - tic}


def in_child(spec: dict, timeout: float = 900, env: dict | None = None) -> dict:
    """child_main(spec) in a fresh Python process, so that nothing measured before counts."""
    import json
    import subprocess
    import sys

    code = "import json, sys; from bench import harness; print(json.dumps(harness.child_main(json.loads(sys.argv[1]))))"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **child_env(), **(env or {})},
    )
    if result.returncode:
        raise RuntimeError(f"Memory job {spec.get('case', spec['job'])} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def case_peak_memory(case: Case, workload: Workload, model_steps: int, loop_models: int, augment: str,
                     omp_wait_policy: str = "PASSIVE") -> dict:  # fmt: skip
    spec = {"job": "train", "case": dataclasses.asdict(case), "workload": dataclasses.asdict(workload),
            "model_steps": model_steps, "loop_models": loop_models, "augment": augment}  # fmt: skip
    return in_child(spec, env=case.worker_env(omp_wait_policy))


# --- Inference at scale ---------------------------------------------------------------------------


def make_inference_rundir(logdir, num_models: int, num_examples: int, arch: str = "cnn-tiny",
                          image_shape=(8, 8, 1), num_classes: int = 10, models_per_step: int = 0) -> dict:  # fmt: skip
    """A run directory as experiments/train.py leaves it after 1 epoch, without the training:
    an npz pool of random uint8 images, config.json, keep.npy, labels.npy and one checkpoint per
    slice holding freshly initialised states (what inference costs does not depend on the
    weights' values). Returns the config's flags."""
    from pathlib import Path

    from lira.data import load_dataset
    from lira.run import checkpoint
    from lira.stages import train

    logdir = Path(logdir)
    rng = np.random.default_rng(0)
    npz = logdir / "pool.npz"
    logdir.mkdir(parents=True, exist_ok=True)
    np.savez(npz, x_train=rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8),
             y_train=rng.integers(0, num_classes, num_examples), x_test=rng.integers(0, 256, (8, *image_shape), dtype=np.uint8),
             y_test=np.arange(8) % num_classes)  # fmt: skip
    run_config = train.resolve(Config().replace(
        dataset=f"npz:{npz}", arch=arch, num_shadows=num_models, epochs=1, models_per_step=models_per_step
    ))  # fmt: skip
    training = run_config.training
    dataset = load_dataset(run_config.data.dataset)
    keep = masks.make_keep(num_models, num_examples, training.pkeep, training.seed)
    train.write_run_files(logdir, run_config, dataset, keep)
    model = get_model(arch, dataset.num_classes)
    spe = step_lib.steps_per_epoch(num_examples, training.pkeep, training.batch_size)
    programs = loop.Programs(model, training, spe, jnp.asarray(dataset.x_train[0]))
    for start in range(0, num_models, training.models_per_step):
        stop = min(start + training.models_per_step, num_models)
        inputs = loop.SliceInputs.place(keep, start, stop)
        checkpoint.save(
            checkpoint.slice_dir(logdir, start, stop), 1, programs.init_slice(inputs, training.seed)
        )
    return run_config.flat()


def whitebox_query(logdir, num_models: int = 8, num_examples: int = 2048, queries: int = 2, arch: str = "cnn32",
                   image_shape=(32, 32, 3)) -> dict:  # fmt: skip
    """The white-box query stage (lira.stages.query.query_whitebox: per-example gradient norms
    and activations) against the logits-only query stage on the same run: each in a fresh process,
    timed with its compiling, and its peak host memory. Returns both and their ratio."""
    make_inference_rundir(logdir, num_models, num_examples, arch=arch, image_shape=image_shape)
    out = {"arch": arch, "num_models": num_models, "num_examples": num_examples, "queries": queries}
    for name, whitebox in (("logits", False), ("whitebox", True)):
        spec = {
            "job": "inference",
            "logdir": str(logdir),
            "queries": queries,
            "batch_size": 256,
            "whitebox": whitebox,
        }
        result = in_child(spec)
        out[name] = {**result, "model_examples_per_s": num_models * num_examples / result["wall_s"]}
    out["whitebox_vs_logits_time"] = out["whitebox"]["wall_s"] / out["logits"]["wall_s"]
    return out


def inference_memory(logdir, num_models: int = 64, num_examples: int = 50_000, queries: int = 18,
                     batch_size: int = 256, models_per_step: int = 0) -> dict:  # fmt: skip
    """Peak host memory of lira.stages.query.query writing num_models x num_examples x queries
    logits, against the size of those logits. The inference runs in a fresh process."""
    tic = time.perf_counter()
    flags = make_inference_rundir(logdir, num_models, num_examples, models_per_step=models_per_step)
    setup_s = time.perf_counter() - tic
    memory = in_child(
        {"job": "inference", "logdir": str(logdir), "queries": queries, "batch_size": batch_size}
    )
    logits_mb = num_models * num_examples * queries * 10 * 4 / 2**20
    return {"num_models": num_models, "num_examples": num_examples, "queries": queries,
            "models_per_step": flags["models_per_step"], "arch": flags["arch"], "batch_size": batch_size,
            "logits_mb": logits_mb, "setup_s": setup_s, **memory}  # fmt: skip
