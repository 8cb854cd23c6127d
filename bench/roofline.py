"""The roofline of a training step: FLOPs counted from the architecture, and the device's peak.

FLOPs. XLA's cost analysis of a GPU program counts cuDNN's convolutions (custom calls) as
nothing, which made the bench's "% of peak" about 120x too small on an H200. So the FLOPs here
are counted from the model itself: its loss and gradient are traced to a jaxpr (`jax.make_jaxpr`
of `jax.value_and_grad`, one model, one batch) and every `conv_general_dilated` and
`dot_general` in it adds 2 x its multiply-adds. That is the forward pass, the weight gradients
and the input gradients of every layer but the first (whose input, the image, needs none):
about 3x the forward pass. A convolution's multiply-adds count only the taps that read a real
input element, not padding (as XLA's cost analysis counts them), and convolutions run natively
(the space-to-depth stem of lira/training/layers.py does more arithmetic for the same function
and gets no credit for it). Elementwise work (ReLU, BatchNorm, the loss, the optimizer's
update: 1 FLOP per output element, reductions per input element) is counted apart: it runs on
the vector units, not the tensor cores that the peak below describes. tests/test_bench.py holds
the sum of both within 10% of XLA:CPU's count of the real single-model step.

Peak. The datasheet's dense tensor-core figures for the GPUs this project runs on (below), for
the dtype a case computes in: float32 matmuls and convolutions run as TF32 on these GPUs unless
asked for full precision ("highest"), bfloat16 as BF16. Beside them, a measured matmul at an
explicit precision (8192^2 on a GPU; on the CPU, which has no datasheet here, the measured
float32 matmul is the peak, labelled so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense (not 2:4 sparse) peaks in TFLOP/s, from NVIDIA's datasheets: "NVIDIA H100 Tensor Core
# GPU" datasheet (H100 SXM5: FP32 67, TF32 989 and BF16 1,979 with sparsity, i.e. 494.7 and
# 989.4 dense; H100 PCIe: FP32 51, TF32 756 and BF16 1,513 with sparsity; H100 NVL: FP32 60,
# TF32 835 and BF16 1,671 with sparsity), "NVIDIA H200 Tensor Core GPU" datasheet (H200 SXM: the
# H100 SXM's figures; H200 NVL: the H100 NVL's), "NVIDIA A100 Tensor Core GPU" datasheet (SXM4
# and PCIe, 40 and 80 GB: FP32 19.5, TF32 156, BF16 312 dense). The FP32 figure of the SXM parts
# is 66.9 from the boost clock (132 SMs x 128 FP32 lanes x 2 x 1.98 GHz), 67 rounded.
DATASHEET_TFLOPS = {
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.5},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},  # SXM5: "NVIDIA H100 80GB HBM3"
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}
# The matmul measured at each precision: (input dtype, jax.lax.Precision).
MATMUL_PRECISIONS = {
    "fp32": ("float32", jax.lax.Precision.HIGHEST),
    "tf32": ("float32", jax.lax.Precision.DEFAULT),  # TF32 on NVIDIA GPUs; full float32 on the CPU
    "bf16": ("bfloat16", jax.lax.Precision.DEFAULT),  # float32 accumulation
}


def datasheet_peaks(device_kind: str) -> dict[str, float] | None:
    """{"fp32", "tf32", "bf16": FLOP/s} for a jax device_kind such as "NVIDIA H200" or
    "NVIDIA A100-SXM4-80GB"; None for a device not in DATASHEET_TFLOPS (the CPU, say). The most
    specific name wins ("H100 PCIe" before "H100")."""
    kind = device_kind.upper().replace("-", " ")
    for name in sorted(DATASHEET_TFLOPS, key=len, reverse=True):
        if name.upper() in kind:
            return {key: value * 1e12 for key, value in DATASHEET_TFLOPS[name].items()}
    return None


def precision_of(dtype: str, backend: str) -> str:
    """The tensor-core precision a case of compute `dtype` runs its matmuls at: bfloat16 (and
    PyTorch's float16 autocast) -> bf16; float32 -> tf32 on a GPU at JAX's default matmul
    precision, else fp32."""
    if dtype in ("bfloat16", "float16"):  # these GPUs' FP16 tensor-core peak is their BF16 one
        return "bf16"
    default = jax.config.jax_default_matmul_precision
    full = default is not None and str(default).lower() in ("highest", "float32", "precision.highest")
    return "tf32" if backend == "gpu" and not full else "fp32"


def measure_matmul(size: int, precision: str, iterations: int = 10, repeats: int = 3) -> float:
    """FLOP/s of [size, size] @ [size, size] at MATMUL_PRECISIONS[precision]: `iterations`
    products queued back to back, then waited for, so that dispatch does not count; the median
    of `repeats` such runs after one warm-up."""
    dtype, lax_precision = MATMUL_PRECISIONS[precision]
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(
        lambda x, y: jnp.matmul(x, y, precision=lax_precision, preferred_element_type=jnp.float32)
    )
    compiled = matmul.lower(a, a).compile()
    compiled(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        outputs = [compiled(a, a) for _ in range(iterations)]
        jax.block_until_ready(outputs)
        times.append((time.perf_counter() - tic) / iterations)
    return 2.0 * size**3 / statistics.median(times)


def peaks(
    backend: str, device_kind: str, size: int, precisions=("fp32", "tf32", "bf16"), iterations: int = 10
) -> dict:
    """The datasheet's peaks for this device (None on the CPU) and measured matmuls, in GFLOP/s,
    and the peak each case's precision is held against: the datasheet's where there is one,
    else the measured matmul's ("source" says which)."""
    measured = {p: measure_matmul(size, p, iterations) / 1e9 for p in precisions}
    sheet = datasheet_peaks(device_kind) if backend == "gpu" else None
    sheet = {k: v / 1e9 for k, v in sheet.items()} if sheet else None
    against = dict(sheet or measured)
    source = "datasheet (dense)" if sheet else f"measured {size}^2 matmul"
    return {"device_kind": device_kind, "matmul_size": size, "matmul_iterations": iterations,
            "measured_matmul_gflops": measured, "datasheet_gflops": sheet, "peak_gflops": against,
            "peak_source": source}  # fmt: skip


# --- FLOPs from the jaxpr ---------------------------------------------------------------------


@dataclasses.dataclass
class FlopCount:
    """FLOPs of a traced program: `matmul` (2 x multiply-adds of convolutions and dot products),
    `elementwise` (1 per output element, reductions 1 per input element), and the primitives of
    loops whose trip count is unknown (a while loop's body is counted once)."""

    matmul: float = 0.0
    elementwise: float = 0.0
    while_loops: int = 0

    @property
    def total(self) -> float:
        return self.matmul + self.elementwise


_ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "abs", "sign", "exp", "exp2", "log", "log1p", "expm1",
    "tanh", "logistic", "sqrt", "rsqrt", "pow", "integer_pow", "square", "select_n", "erf", "rem", "floor",
    "ceil", "round", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "clamp", "add_any",
}  # fmt: skip
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
               "reduce_or", "cumsum", "cummax", "reduce_precision"}  # fmt: skip


def _size(aval) -> int:
    return math.prod(aval.shape) if hasattr(aval, "shape") else 1


def valid_taps(size: int, kernel: int, stride: int, padding: tuple[int, int], lhs_dilation: int = 1,
               rhs_dilation: int = 1) -> int:  # fmt: skip
    """Number of (output position, kernel tap) pairs along one spatial axis whose input position
    is a real input element (not padding, nor a hole of the input's dilation)."""
    dilated = (size - 1) * lhs_dilation + 1
    span = (kernel - 1) * rhs_dilation + 1
    outputs = max(0, (dilated + padding[0] + padding[1] - span) // stride + 1)
    o = np.arange(outputs)[:, None]
    k = np.arange(kernel)[None, :]
    position = o * stride + k * rhs_dilation - padding[0]
    real = (position >= 0) & (position < dilated) & (position % lhs_dilation == 0)
    return int(real.sum())


def conv_macs(lhs_shape, rhs_shape, out_shape, params) -> int:
    """Multiply-adds of one lax.conv_general_dilated: each output element of batch and feature
    times the kernel's input features times the real taps of every spatial axis."""
    numbers = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    spatial = len(lhs_spec) - 2
    taps = 1
    for axis in range(spatial):
        taps *= valid_taps(
            lhs_shape[lhs_spec[2 + axis]], rhs_shape[rhs_spec[2 + axis]], params["window_strides"][axis],
            tuple(params["padding"][axis]), (params["lhs_dilation"] or (1,) * spatial)[axis],
            (params["rhs_dilation"] or (1,) * spatial)[axis],
        )  # fmt: skip
    return out_shape[out_spec[0]] * out_shape[out_spec[1]] * rhs_shape[rhs_spec[1]] * taps


def dot_macs(lhs_shape, out_shape, params) -> int:
    (lhs_contract, _), _ = params["dimension_numbers"]
    return math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _sub_jaxprs(value):
    """The jaxprs inside an equation's parameter (a Jaxpr, a ClosedJaxpr, or a tuple of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def count_flops(jaxpr, count: FlopCount | None = None, scale: float = 1.0) -> FlopCount:
    """Adds the FLOPs of `jaxpr` (a Jaxpr or ClosedJaxpr), times `scale`, to `count`."""
    count = FlopCount() if count is None else count
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            shapes = [v.aval.shape for v in eqn.invars]
            count.matmul += scale * 2 * conv_macs(*shapes, eqn.outvars[0].aval.shape, eqn.params)
        elif name == "dot_general":
            count.matmul += (
                scale * 2 * dot_macs(eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape, eqn.params)
            )
        elif name in _ELEMENTWISE:
            count.elementwise += scale * _size(eqn.outvars[0].aval)
        elif name in _REDUCTIONS:
            count.elementwise += scale * _size(eqn.invars[0].aval)
        elif name == "cond":  # the dearest branch
            branches = [count_flops(b, None, scale) for b in eqn.params["branches"]]
            worst = max(branches, key=lambda c: c.total)
            count.matmul, count.elementwise = (
                count.matmul + worst.matmul,
                count.elementwise + worst.elementwise,
            )
        else:
            inner = scale * (eqn.params["length"] if name == "scan" else 1)
            count.while_loops += name == "while"
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    count_flops(sub, count, inner)
    return count


def _native_convolutions():
    """lira's layers with every convolution native, where lira offers the switch."""
    from lira.training import layers

    return getattr(layers, "without_space_to_depth", contextlib.nullcontext)()


def model_flops(model, input_shape, num_classes: int, batch_size: int = 8) -> dict:
    """FLOPs per example of `model` (a flax module of lira's zoo) on inputs [*input_shape]:
    `forward` (inference), `train` (the loss's value and gradient, training mode) and
    `train_elementwise` (its elementwise work, apart), from jaxprs of one batch."""
    x = jnp.zeros((batch_size, *input_shape), jnp.float32)
    y = jnp.zeros((batch_size,), jnp.int32)
    with _native_convolutions():
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1], train=False))
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # values do not matter
        params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def loss(params):
            logits, _ = model.apply({"params": params, **rest}, x, train=True, mutable=list(rest))
            labels = jax.nn.one_hot(y, num_classes)
            return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

        forward = count_flops(jax.make_jaxpr(lambda p: model.apply({"params": p, **rest}, x))(params))
        train = count_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params))
    return {"forward": forward.matmul / batch_size, "forward_elementwise": forward.elementwise / batch_size,
            "train": train.matmul / batch_size, "train_elementwise": train.elementwise / batch_size,
            "train_vs_forward": train.matmul / forward.matmul if forward.matmul else None}  # fmt: skip


def arch_flops(arch: str, input_shape, num_classes: int) -> dict:
    """model_flops of lira's `arch` with native convolutions, in float32."""
    from lira.training.models import get_model

    return model_flops(get_model(arch, num_classes, "xla"), tuple(input_shape), num_classes)
