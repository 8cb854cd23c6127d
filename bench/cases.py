"""What a benchmark case is: the workloads, the timed configurations and their inputs, shared by
the JAX runners (bench/harness.py) and the PyTorch baseline (bench/torch_baseline.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from lira.config import TrainingConfig
from lira.run import masks

METHODS = ("vmap", "grad_in_vmap", "loop", "torch")
TORCH_LAYOUTS = ("nchw", "channels_last")
TORCH_MALLOCS = ("glibc", "thp")
# glibc's malloc asks the kernel for transparent huge pages (docs/performance.md): XLA's
# large per-step buffers then fault in 2 MiB at a time instead of 4 KiB. glibc reads it when a
# process starts, so run.sh exports it.
THP_TUNABLE = "glibc.malloc.hugetlb=1"
CONV_ARCHS = ("cnn32", "cnn64", "cnn-tiny", "wrn28-2", "wrn28-10", "wrn10-1")


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one model trains on: input [*input_shape], num_classes labels, a pool of
    num_examples (half of it IN per model), minibatches of batch_size."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_examples: int = 4096
    batch_size: int = 256


# Purchase100-like tabular data for the MLP; CIFAR-10-like images for the conv nets.
WORKLOADS = {
    "mlp": Workload((600,), 100),
    "mlp-tiny": Workload((600,), 100),
    **{arch: Workload((32, 32, 3), 10) for arch in CONV_ARCHS},
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed configuration. models_per_step is 1 for loop and torch (one model a step).
    conv_impl: lira.config.CONV_IMPLS for the JAX methods; for torch, None (NCHW) or
    "channels_last". dtype: the compute dtype (torch: float32, or float16 under autocast, on a
    GPU). malloc, torch only: one of TORCH_MALLOCS for its worker process (None: the
    GLIBC_TUNABLES of the process that starts it, as for the JAX methods). steps_per_call, vmap
    only: steps in one compiled call (0: the trainer's default on the backend)."""

    arch: str
    method: str
    models_per_step: int = 1
    conv_impl: str | None = None
    dtype: str = "float32"
    malloc: str | None = None
    steps_per_call: int = 0

    @property
    def name(self) -> str:
        parts = [self.arch, self.method, f"x{self.models_per_step}"]
        parts += [self.conv_impl] if self.conv_impl else []
        parts += [] if self.dtype == "float32" else [self.dtype]
        parts += [f"call{self.steps_per_call}"] if self.steps_per_call else []
        parts += ["thp"] if self.malloc == "thp" else []
        return "/".join(parts)

    def worker_env(self, omp_wait_policy: str = "") -> dict:
        """Environment a process running this case gets on top of this one's."""
        env = {"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else {}
        if self.malloc is not None:
            env["GLIBC_TUNABLES"] = THP_TUNABLE if self.malloc == "thp" else ""
        return env


def synthetic_data(workload: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [N, *input_shape] standard normal, y int32 [N] uniform: speed does not care."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workload.num_examples, *workload.input_shape), dtype=np.float32)
    y = rng.integers(0, workload.num_classes, workload.num_examples).astype(np.int32)
    return x, y


def synthetic_pixels(workload: Workload, seed: int = 0):
    """The pool as the trainer holds real images (lira.data.Pixels: uint8 [N, H, W, C] and the
    float32 [256, C] table that standardizes them on the device), uniform pixels; None for
    tabular workloads, and where lira has no Pixels."""
    from lira import data

    if len(workload.input_shape) != 3 or not hasattr(data, "Pixels"):
        return None
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (workload.num_examples, *workload.input_shape), dtype=np.uint8)
    table = np.repeat(
        ((np.arange(256, dtype=np.float32) / 255 - 0.5) / 0.25)[:, None], workload.input_shape[-1], 1
    )
    return data.Pixels(pixels, pixels[:1], table)


def bench_keep(num_models: int, num_examples: int) -> np.ndarray:
    """bool [M, N], about half IN per model (balanced masks need M >= 2, so draw 2 for 1)."""
    return masks.make_keep(max(num_models, 2), num_examples, 0.5, seed=0)[:num_models]


def train_config(workload: Workload, augment: str = "weak") -> TrainingConfig:
    return TrainingConfig(epochs=100, batch_size=workload.batch_size, augment=augment)
