"""Shadow-training throughput, the timed cases behind bench/training.py.

A case trains `models_per_step`-wide chunks of models on synthetic data and is timed in
model-examples per second: models x examples per model x steps / seconds. The figure that
matters for an audit is how fast 64-256 shadow models train, whatever the batching of them.

Methods:
  vmap   the trainer's own compiled step (lira.training.loop.Programs.step) over a leading
         model axis, donated state.
  grad_in_vmap  the step as it was before the gradient left the vmap: jax.vmap of
         lira.training.step's single-model make_train_step, whose gradient is then inside it.
  loop   make_train_step without vmap, jitted once, the models trained one after another:
         what a user without the vectorized trainer would write.
  torch  a PyTorch model of the same widths, SGD the same way, models one after another as
         ML Privacy Meter does (bench/torch_baseline.py); conv nets in PyTorch's NCHW layout,
         as ML Privacy Meter runs them, and channels_last (faster on the CPU). PyTorch runs in
         a process of its own, with glibc's malloc as it comes ("glibc", as ML Privacy Meter
         runs) or with transparent huge pages ("thp": THP_TUNABLE, as run.sh runs lira).

All methods gather every batch from a device-resident pool by index, as the trainer does, and
apply the same training augmentation, so they do the same work per model-example.
"""

from __future__ import annotations

import math
import re
import statistics
import time

import jax
import jax.numpy as jnp

from bench.cases import (
    CONV_ARCHS,
    METHODS,
    Case,
    Workload,
    bench_keep,
    train_config,
)
from lira.training import loop
from lira.training import step as step_lib
from lira.training.models import default_conv_impl, get_model


def place_pool(x, pixels=None, sharding=None):
    """The pool on the device as the trainer holds it: uint8 images standardized where they are
    read (lira.training.step.DeviceImages) where there are `pixels` (lira.data.Pixels), else x."""
    if pixels is not None and hasattr(step_lib, "DeviceImages"):
        return jax.device_put(step_lib.DeviceImages.of(pixels.train, pixels), sharding)
    return jax.device_put(x, sharding)


def default_case(arch: str, backend: str | None = None, dtype: str = "float32") -> Case:
    """The configuration the trainer picks by itself on this backend, in `dtype`."""
    impl = default_conv_impl(backend, arch) if arch in CONV_ARCHS else None
    return Case(arch, "vmap", loop.default_models_per_step(arch, backend), impl, dtype)


def default_dtype(backend: str | None = None) -> str:
    """The compute dtype the trainer uses on `backend` when none is asked for
    (lira.training.loop.default_dtype), float32 where it has none."""
    pick = getattr(loop, "default_dtype", None)
    return str(pick(backend)) if pick else "float32"


class VmapRunner:
    """The trainer's compiled step on `models_per_step` models, run for `steps` steps, as the
    trainer runs them: `steps_per_call` steps (case.steps_per_call, 0: the trainer's default on
    this backend) in one call of Programs.steps, a lax.fori_loop, or one step a call of
    Programs.step. The steps of a call stay within one epoch; a run is at least one call."""

    def __init__(
        self, case: Case, workload: Workload, x, y, model_steps: int, augment: str = "weak", pixels=None
    ):
        config = train_config(workload, augment)
        model = get_model(case.arch, workload.num_classes, case.conv_impl, jnp.dtype(case.dtype))
        num_models = case.models_per_step
        spe = step_lib.steps_per_epoch(workload.num_examples, 0.5, config.batch_size)
        programs = loop.Programs(model, config, spe, jnp.asarray(x[0]))
        inputs = loop.SliceInputs.place(bench_keep(num_models, workload.num_examples), 0, num_models)
        self.x, self.y = place_pool(x, pixels, inputs.replicated), jax.device_put(y, inputs.replicated)
        self.ids, self.num_in = inputs.ids, inputs.num_in
        self.state = programs.init_slice(inputs, 0)
        self.order = programs.order(inputs.keep, inputs.ids, 0, 0)
        self.totals = loop.zero_totals(num_models, inputs.by_model)
        if case.method == "vmap":
            self.step, self.loop_step = programs.step, getattr(programs, "steps", None)
        else:
            self.step, self.loop_step = grad_in_vmap_step(model, programs.tx, config), None
        self.steps_per_call = (
            min(spe, case.steps_per_call or default_steps_per_call(spe)) if self.loop_step else 1
        )
        steps = max(1, math.ceil(model_steps / num_models), self.steps_per_call)
        self.calls = []  # (first, stop) steps of the epoch, one call each
        while (done := sum(stop - first for first, stop in self.calls)) < steps:
            first = done % spe
            self.calls.append((first, min(spe, first + self.steps_per_call, first + steps - done)))
        self.steps, self.num_models = steps, num_models
        self.model_steps = steps * num_models
        self.compiled = self.compiled_loop = None

    def _args(self, first):
        return self.state, self.totals, self.order, self.num_in, self.ids, self.x, self.y, first

    def compile(self) -> float:
        tic = time.perf_counter()
        if any(stop - first == 1 for first, stop in self.calls):
            self.compiled = self.step.lower(*self._args(0)).compile()
        if any(stop - first > 1 for first, stop in self.calls):
            self.compiled_loop = self.loop_step.lower(*self._args(0), self.steps_per_call).compile()
        return time.perf_counter() - tic

    def run(self) -> None:
        for first, stop in self.calls:
            if stop - first == 1:
                self.state, self.totals = self.compiled(*self._args(first))
            else:
                self.state, self.totals = self.compiled_loop(*self._args(first), stop)
        jax.block_until_ready((self.state, self.totals))

    def flops_per_step(self) -> float | None:
        """XLA's count for one compiled step (all models); None if the backend gives none, or
        when only the loop of steps was compiled."""
        return _flops(self.compiled)

    def convolutions(self) -> dict[str, int]:
        compiled = self.compiled or self.compiled_loop
        return hlo_convolutions(compiled.as_text()) if compiled is not None else {}


def default_steps_per_call(num_steps: int, backend: str | None = None) -> int:
    """The trainer's steps a call (lira.training.loop.default_steps_per_call), 1 where it has none."""
    pick = getattr(loop, "default_steps_per_call", None)
    return pick(num_steps, backend) if pick else 1


def grad_in_vmap_step(model, tx, config):
    """The step as the trainer built it before the gradient left the vmap: jax.vmap of a
    single-model step that takes its own gradient (lira.training.step.make_train_step under
    step.vmap_models), jitted with Programs.step's signature. Batching the gradient's convolutions
    over the models' weights makes every weight gradient a feature-grouped convolution; the bench
    times it beside the trainer's step for the ratio."""
    step = step_lib.vmap_models(step_lib.make_train_step(model, tx, config), (0, 0, 0, 0, None, None, None))

    def multi_step(state, totals, order, num_in, ids, x, y, step_in_epoch):
        state, loss, correct = step(state, order, num_in, ids, x, y, step_in_epoch)
        loss_sum, correct_sum, first_bad = totals
        first_bad = jnp.where(~jnp.isfinite(loss) & (first_bad < 0), state.step - 1, first_bad)
        return state, (loss_sum + loss, correct_sum + correct, first_bad)

    return jax.jit(multi_step, donate_argnums=(0, 1))


# cuDNN's convolution custom calls in XLA:GPU's optimized HLO (custom_call_target="__cudnn$...",
# xla/service/gpu/cublas_cudnn.cc). A weight gradient that reaches cuDNN's backward-filter kernels
# shows as convBackwardFilter; one rewritten as a forward convolution of a pathological shape (a
# feature-grouped weight gradient) does not.
CUDNN_CONVOLUTIONS = ("cudnn$convForward", "cudnn$convBackwardInput", "cudnn$convBackwardFilter",
                      "cudnn$convBiasActivationForward", "cudnn$convForwardGraph")  # fmt: skip


def hlo_convolutions(hlo_text: str) -> dict[str, int]:
    """{what: count} in an optimized HLO module's text: cuDNN's convolution custom calls by
    target (0 on the CPU), XLA's own `convolution` instructions, and those of either that are
    feature-grouped, or batch-grouped."""
    lines = hlo_text.splitlines()
    convolutions = [line for line in lines if " convolution(" in line or "cudnn$conv" in line]
    out = {target: sum(f'{target}"' in line for line in lines) for target in CUDNN_CONVOLUTIONS}
    out["convolution"] = sum(" convolution(" in line for line in lines)
    out["feature_grouped"] = sum(_group_count(line, "feature_group_count") > 1 for line in convolutions)
    out["batch_grouped"] = sum(_group_count(line, "batch_group_count") > 1 for line in convolutions)
    return out


def _group_count(line: str, key: str) -> int:
    """The value of `key=N` (an HLO attribute) or `"key":"N"` (cuDNN's backend config) in `line`."""
    match = re.search(rf'{key}(?:=|":"?)(\d+)', line)
    return int(match.group(1)) if match else 1


class LoopRunner:
    """make_train_step jitted without vmap; `num_models` models trained one after another."""

    def __init__(self, case: Case, workload: Workload, x, y, model_steps: int, num_models: int = 4,
                 augment: str = "weak", pixels=None):  # fmt: skip
        config = train_config(workload, augment)
        model = get_model(case.arch, workload.num_classes, case.conv_impl, jnp.dtype(case.dtype))
        self.steps_per_epoch = step_lib.steps_per_epoch(workload.num_examples, 0.5, config.batch_size)
        tx = step_lib.make_optimizer(config, self.steps_per_epoch)
        init = jax.jit(step_lib.make_init(model, tx, jnp.asarray(x[0])), static_argnums=1)
        keep = bench_keep(num_models, workload.num_examples)
        self.x, self.y = place_pool(x, pixels), jax.device_put(y)
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

    def convolutions(self) -> dict[str, int]:
        return hlo_convolutions(self.compiled.as_text()) if self.compiled is not None else {}


def make_runner(case: Case, workload: Workload, x, y, model_steps: int, loop_models: int = 4,
                augment: str = "weak", torch_process: str | None = "PASSIVE", pixels=None):  # fmt: skip
    """The runner of `case`. torch_process: run PyTorch in a worker process with this
    OMP_WAIT_POLICY ("" for libgomp's default); None: in this process. pixels: the JAX
    methods' pool as uint8 images (bench.cases.synthetic_pixels), as the trainer holds images."""
    if case.method in ("vmap", "grad_in_vmap"):
        return VmapRunner(case, workload, x, y, model_steps, augment, pixels)
    if case.method == "loop":
        return LoopRunner(case, workload, x, y, model_steps, loop_models, augment, pixels)
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
