"""Checks a stage makes before its expensive work, each failing in one line that names the value
and what would be valid: the data fits the architecture, and the memory a training step, a query
call or the attack's signals need is there (the files: lira.run.verify).

The memory estimates are approximate on purpose: shapes only (jax.eval_shape of the model's init
and of its forward with every module's output captured), never a compile. They count what a
stage is about to allocate, so they catch the orders of magnitude that crash a process (a million
models' masks, a million-example batch) without refusing ordinary runs; LIRA_SKIP_MEMORY_CHECK=1
skips them where the estimate is wrong.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lira.run import records

SKIP_MEMORY_CHECK = "LIRA_SKIP_MEMORY_CHECK"
# Memory a training step's compiled program takes per byte of the captured module outputs: the
# values saved for the backward pass, the pre-pooling and pre-activation values the captured outputs
# omit, gradients and the convolutions' lowering. The ratio of XLA:CPU's temporaries to them
# is lowest for the mlp, highest for cnn32 (docs/results/memory_estimate/): this takes the conv
# nets' side, rounded down, since the estimate is to catch orders of magnitude.
TRAIN_ACTIVATION_FACTOR = 12
QUERY_ACTIVATION_FACTOR = 4  # a forward alone, with its pre-pooling values
# Bytes per entry of keep [M, N] while lira.run.masks.make_keep draws it: a float64 draw, two int64
# argsorts, the bool result.
KEEP_DRAW_BYTES = 25
GIB = 2**30


# --- Data and architecture ---------------------------------------------------------------------


def model_shapes(
    arch: str, num_classes: int, input_shape: tuple, conv_impl=None, dtype=None
) -> tuple[int, int]:
    """(bytes of one model's parameters and BatchNorm statistics, bytes of the module outputs of
    one example's training forward) from shapes alone; refused in one line when `arch` does not
    take inputs of `input_shape` (tabular rows into a conv net), naming the archs that do."""
    import jax
    import jax.numpy as jnp

    from lira.training import step as step_lib
    from lira.training.models import get_model

    model = get_model(arch, num_classes, conv_impl or "xla", jnp.dtype(dtype or "float32"))
    sample = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    try:
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)
        logits, captured = jax.eval_shape(
            lambda v, x: model.apply(
                v,
                x,
                train=True,
                capture_intermediates=True,
                mutable=True,
                rngs=step_lib.stochastic_rngs(jax.random.key(0)),
            ),
            variables,
            sample,
        )
    except Exception as error:  # any failure to trace: the inputs do not fit the model
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"--arch={arch} does not take inputs of shape {tuple(input_shape)} ({first[:200]}); archs that "
            f"do: {', '.join(fitting_archs(num_classes, input_shape)) or 'none registered'}."
        ) from None
    if getattr(logits, "shape", None) != (1, num_classes):
        raise ValueError(
            f"--arch={arch} returns outputs of shape {getattr(logits, 'shape', type(logits).__name__)} for a batch of "
            f"one, but the data has {num_classes} classes: its head must give [B, num_classes] logits (the factory "
            "receives num_classes)."
        )
    return _nbytes(variables), _nbytes(captured.get("intermediates", {}))


def fitting_archs(num_classes: int, input_shape: tuple) -> list[str]:
    """The registered archs whose init traces on inputs of `input_shape` (tabular rows: the mlps)."""
    import jax
    import jax.numpy as jnp

    from lira.training.models import available_archs, get_model

    out = []
    for arch in available_archs():
        model = get_model(arch, num_classes, "xla")
        try:
            jax.eval_shape(
                lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
            )
        except Exception:  # does not fit
            continue
        out.append(arch)
    return out


def _nbytes(tree) -> int:
    import jax

    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


# --- Memory ------------------------------------------------------------------------------------


def host_available() -> int | None:
    """Bytes the host can still give (/proc/meminfo's MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_available() -> int | None:
    """The first accelerator's memory limit (memory_stats' bytes_limit); None on the CPU (its
    device memory is the host's) or where the device does not say."""
    import jax

    if jax.default_backend() == "cpu":
        return None
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def check_memory(what: str, host: dict[str, int], device: dict[str, int], flags: str) -> None:
    """Refuses when the estimated bytes {part: bytes} exceed what is available: `host` against
    MemAvailable, `device` against the accelerator's limit (on the CPU both against MemAvailable).
    `flags`: what to lower."""
    if os.environ.get(SKIP_MEMORY_CHECK) == "1":
        return
    device_limit = device_available()
    checks = [("host", {**host, **device}, host_available())] if device_limit is None else [
        ("host", host, host_available()), ("device", device, device_limit)
    ]  # fmt: skip
    for where, parts, available in checks:
        total = sum(parts.values())
        if available is not None and total > available:
            detail = ", ".join(f"{name} {size / GIB:.3g}" for name, size in parts.items() if size)
            raise ValueError(
                f"{what} needs about {total / GIB:.3g} GiB of {where} memory ({detail} GiB; an approximate "
                f"estimate) but {available / GIB:.3g} GiB is available; lower {flags}, or set "
                f"{SKIP_MEMORY_CHECK}=1 to skip this check."
            )


def check_training(config, dataset, num_models: int) -> None:
    """Before the masks are drawn and anything compiled: the data fits config.model.arch, and the
    memory fits: on the host keep [M, N] while drawn; on the device the dataset and a step of
    models_per_step models (parameters, gradients, optimizer state; activations of batch_size
    examples, per-example gradients under per-example DP clipping)."""
    training, model_config = config.training, config.model
    input_shape = dataset.x_train.shape[1:]
    param_bytes, activation_bytes = model_shapes(
        model_config.arch, dataset.num_classes, input_shape, model_config.conv_impl, model_config.dtype
    )
    per_step = max(1, min(training.models_per_step or 1, num_models))
    batch = max(training.batch_size, training.dp_max_batch_size)
    if training.dp:
        batch += int(5 * math.sqrt(training.batch_size))
    per_example_grads = batch * param_bytes if training.dp and training.dp_clipping == "per_example" else 0
    data = dataset.pixels if dataset.pixels is not None else dataset
    host = {"keep": training.num_shadows * len(dataset.y_train) * KEEP_DRAW_BYTES}
    device = {
        "dataset": data.x_train.nbytes if dataset.pixels is None else data.train.nbytes + data.test.nbytes,
        "models": per_step * 4 * param_bytes,
        "activations": per_step * (batch * activation_bytes * TRAIN_ACTIVATION_FACTOR + per_example_grads),
    }
    if dataset.pixels is None:
        device["dataset"] += dataset.x_test.nbytes
    flags = f"--batch_size={training.batch_size}" + (
        f" or --models_per_step={training.models_per_step}" if per_step > 1 else ""
    )
    check_memory("Training", host, device, f"--num_shadows={training.num_shadows}, --pool_size or {flags}")


def check_query(record: records.RunRecord, config, min_models_per_call: int) -> None:
    """Before the dataset is loaded: the memory one inference call of the run in `record` needs
    (the parameters and the activations of batch_size images of each model of a call, which
    groups training slices up to min_models_per_call models: lira.stages.query) and the dataset
    on the host."""
    facts, training = record.data, record.config.training
    if not {"num_classes", "input_shape", "num_examples"} <= set(facts):
        return  # a run made elsewhere: nothing to estimate from
    queries = config.queries or 18
    num_examples, input_shape = facts["num_examples"], tuple(facts["input_shape"])
    param_bytes, activation_bytes = model_shapes(
        record.config.model.arch, facts["num_classes"], input_shape, record.config.model.conv_impl
    )
    per_step = max(1, training.models_per_step)
    models = min(training.num_shadows, per_step * -(-min_models_per_call // per_step))
    images = min(max(1, config.batch_size // queries), num_examples) * queries
    example_bytes = 4 * math.prod(input_shape)
    host = {"dataset": 2 * (num_examples + facts.get("num_test", 0)) * example_bytes}
    device = {
        "models": models * 2 * param_bytes,
        "activations": models * images * activation_bytes * QUERY_ACTIVATION_FACTOR,
    }
    check_memory("Inference", host, device, f"--batch_size={config.batch_size}")


def check_attack(run) -> None:
    """Before any logits are read: the signals [M, N, Q] arrays (phi, CE, RMIA's probability, and
    the attacks' working copies) and the logits files read at once ([N, Q, C] each, per thread)."""
    if run.record is None or run.record.queries is None:
        return  # signals made in memory, or a run never queried (load_signals names that)
    num_models, num_examples = run.keep.shape
    queries, num_classes = run.record.queries, run.record.data.get("num_classes", 1)
    signal_bytes = 4 * num_models * num_examples * queries
    threads = min(os.cpu_count() or 1, 8)
    host = {
        "signals": 6 * signal_bytes,
        "logits": threads * 3 * 4 * num_examples * queries * num_classes,
    }
    check_memory(
        "The attack", host, {}, "--num_targets or the run's size (a run with fewer models or examples)"
    )
