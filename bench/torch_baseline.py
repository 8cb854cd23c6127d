"""The PyTorch baseline of bench/harness.py: shadow models trained one after another, eagerly.

This is how ML Privacy Meter trains its reference models (a plain PyTorch loop over one model
at a time), rebuilt here with the same layer widths as lira/training/models.py, the same SGD (momentum
0.9, weight decay 5e-4), batch size, training augmentation (mirror + reflect-padded shift by up
to 4 pixels) and per-model sampling from each model's own IN set. Batches are indexed straight
out of a resident tensor rather than through a DataLoader, which only flatters the baseline.
On a GPU, a case of dtype float16 runs as ML Privacy Meter runs there: fp16 autocast with a
gradient scaler, channels_last.

Imported only when torch is installed (requirements-bench.txt); the library never needs it.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench import cases, child_env
from bench.cases import bench_keep, train_config

PAD = 4


class MLP(nn.Module):
    """lira.training.models.MLP: flatten, Dense 512-256-128 with ReLU, linear head."""

    def __init__(self, in_features: int, num_classes: int, hidden=(512, 256, 128)):
        super().__init__()
        widths = (in_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class CNN(nn.Module):
    """lira.training.models.CNN: `depth` blocks of conv3x3 (SAME), maxpool2, bias, ReLU, widths
    width << block, global mean, linear head. The bias and ReLU come after the pool, in the
    order lira's model applies them (the same function as conv-bias-ReLU-pool, and faster in
    both frameworks)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, depth: int = 3):
        super().__init__()
        widths = [in_channels] + [width << block for block in range(depth)]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths[:-1], widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in widths[1:])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        for conv, bias in zip(self.convs, self.biases):
            x = conv(x)
            if min(x.shape[2:]) >= 2:
                x = F.max_pool2d(x, 2)
            x = F.relu(x + bias[:, None, None])
        return self.head(x.mean(dim=(2, 3)))


class WideResNetBlock(nn.Module):
    """lira.training.models.WideResNetBlock: BN-ReLU-conv twice, 1x1 projection shortcut taken
    from the first BN-ReLU's output."""

    def __init__(self, in_features: int, features: int, stride: int):
        super().__init__()
        self.norm1, self.norm2 = nn.BatchNorm2d(in_features, eps=1e-5), nn.BatchNorm2d(features, eps=1e-5)
        self.conv1 = nn.Conv2d(in_features, features, 3, stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        project = in_features != features or stride != 1
        self.shortcut = nn.Conv2d(in_features, features, 1, stride, bias=False) if project else None

    def forward(self, x):
        y = F.relu(self.norm1(x))
        shortcut = x if self.shortcut is None else self.shortcut(y)
        y = self.conv2(F.relu(self.norm2(self.conv1(y))))
        return shortcut + y


class WideResNet(nn.Module):
    """lira.training.models.WideResNet: WRN-depth-width, pre-activation (BatchNorm momentum 0.1
    in PyTorch's convention is flax's 0.9)."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, width: int = 2):
        super().__init__()
        per_group = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, features = [], 16
        for group, out in enumerate((16 * width, 32 * width, 64 * width)):
            for block in range(per_group):
                blocks.append(WideResNetBlock(features, out, 2 if group > 0 and block == 0 else 1))
                features = out
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(features, eps=1e-5)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x):
        x = F.relu(self.norm(self.blocks(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def make_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if arch in ("mlp", "mlp-tiny"):
        return MLP(math.prod(input_shape), num_classes, (512, 256, 128) if arch == "mlp" else (16,))
    widths = {"cnn32": (32, 3), "cnn64": (64, 3), "cnn-tiny": (4, 2)}
    if arch in widths:
        return CNN(input_shape[-1], num_classes, *widths[arch])
    wrns = {"wrn28-2": (28, 2), "wrn28-10": (28, 10), "wrn10-1": (10, 1)}
    if arch in wrns:
        return WideResNet(input_shape[-1], num_classes, *wrns[arch])
    raise ValueError(
        f"No PyTorch baseline for --arch={arch}; it has: mlp, mlp-tiny, {', '.join([*widths, *wrns])}."
    )


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """images: [B, C, H, W] -> each mirrored with probability 1/2 and shifted by a uniform
    (dy, dx) in [-4, 4]^2 with reflect padding, as lira.training.augment.augment(kind="weak")."""
    batch, channels, height, width = images.shape
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = F.pad(images, (PAD, PAD, PAD, PAD), mode="reflect")
    dy, dx = torch.randint(0, 2 * PAD + 1, (2, batch, 1), generator=generator, device=images.device)
    rows = dy + torch.arange(height, device=images.device)  # [B, H]
    cols = dx + torch.arange(width, device=images.device)  # [B, W]
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class TorchRunner:
    """`num_models` PyTorch models, each trained for `model_steps / num_models` steps in turn."""

    def __init__(self, case, workload, x, y, model_steps: int, num_models: int = 4, augment: str = "weak"):
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.autocast = case.dtype == "float16"  # ML Privacy Meter's mixed precision on a GPU
        if self.autocast and self.device.type != "cuda":
            raise ValueError(
                f"The PyTorch case {case.name} asks for fp16 autocast, which needs CUDA; this has none."
            )
        if case.dtype not in ("float32", "float16"):
            raise ValueError(f"The PyTorch baseline runs float32 or float16 (autocast), not {case.dtype}.")
        self.generator = torch.Generator(self.device).manual_seed(0)
        is_image = len(workload.input_shape) == 3
        x = np.moveaxis(x, -1, 1) if is_image else x  # NHWC -> NCHW
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        # PyTorch's layout, as ML Privacy Meter runs it, or channels_last (NHWC in memory).
        self.memory_format = torch.channels_last if case.conv_impl == "channels_last" else None
        if self.memory_format:
            self.x = self.x.contiguous(memory_format=self.memory_format)
        self.y = torch.from_numpy(y.astype(np.int64)).to(self.device)
        self.augment = augment == "weak" and is_image
        self.batch_size = workload.batch_size
        torch.manual_seed(0)
        self.models = [
            make_model(case.arch, workload.input_shape, workload.num_classes).to(self.device)
            for _ in range(num_models)
        ]
        if self.memory_format:
            self.models = [model.to(memory_format=self.memory_format) for model in self.models]
        config = train_config(workload, augment)  # the JAX cases' lr, momentum and weight decay
        self.optimizers = [
            torch.optim.SGD(
                model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
            for model in self.models
        ]
        self.scalers = [torch.amp.GradScaler("cuda", enabled=self.autocast) for _ in self.models]
        keep = bench_keep(num_models, workload.num_examples)
        self.orders = [
            torch.from_numpy(np.flatnonzero(row))[torch.randperm(int(row.sum()))].to(self.device)
            for row in keep
        ]
        self.cursors = [0] * num_models
        self.steps = max(1, math.ceil(model_steps / num_models))
        self.model_steps, self.num_models = self.steps * num_models, num_models

    def compile(self) -> None:
        """Eager PyTorch compiles nothing."""
        return None

    def flops_per_step(self) -> None:
        return None

    def _batch(self, m: int):
        order, start = self.orders[m], self.cursors[m]
        positions = torch.arange(start, start + self.batch_size, device=self.device) % len(order)
        self.cursors[m] = (start + self.batch_size) % len(order)
        index = order[positions]
        images = self.x[index]
        images = augment(images, self.generator) if self.augment else images
        if self.memory_format:
            images = images.contiguous(memory_format=self.memory_format)
        return images, self.y[index]

    def run(self) -> None:
        for m, (model, optimizer, scaler) in enumerate(zip(self.models, self.optimizers, self.scalers)):
            model.train()
            for _ in range(self.steps):
                images, labels = self._batch(m)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, torch.float16, enabled=self.autocast):
                    loss = F.cross_entropy(model(images), labels)
                scaler.scale(loss).backward()  # the identity when autocast is off
                scaler.step(optimizer)
                scaler.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class TorchProcess:
    """A TorchRunner in a worker process of its own, driven over a pipe.

    PyTorch's OpenMP threads and XLA's thread pool in one process slow PyTorch by 5-20x on a
    busy 2-core machine (measured: 1.6k vs 10k model-examples/s for the MLP), which would
    flatter the JAX cases; a separate process is also how a PyTorch user runs. The worker gets
    `omp_wait_policy` in OMP_WAIT_POLICY (PASSIVE: idle OpenMP threads sleep instead of
    spinning, which spares the baseline from collapsing when other processes share the cores),
    and GLIBC_TUNABLES as `case.malloc` asks (bench.cases.Case.worker_env).
    """

    def __init__(self, case, workload, model_steps: int, num_models: int, augment: str, omp_wait_policy: str):
        import dataclasses
        import json
        import subprocess
        import sys

        env = dict(os.environ, **case.worker_env(omp_wait_policy))
        env.setdefault("JAX_PLATFORMS", "cpu")  # the worker never runs JAX; keep it off accelerators
        env.update(child_env())
        code = "from bench import torch_baseline; torch_baseline.serve()"
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)  # fmt: skip
        spec = {"case": dataclasses.asdict(case), "workload": dataclasses.asdict(workload),
                "model_steps": model_steps, "num_models": num_models, "augment": augment}  # fmt: skip
        reply = self._call(json.dumps(spec))
        self.model_steps, self.num_models = reply["model_steps"], reply["num_models"]

    def _call(self, line: str) -> dict:
        import json

        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"The PyTorch worker died (exit code {self._proc.wait()}).")
        return json.loads(reply)

    def compile(self) -> None:
        return None

    def flops_per_step(self) -> None:
        return None

    def run(self) -> float:
        """Runs in the worker; returns the worker's CPU seconds for it."""
        return self._call("run")["cpu_s"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=60)

    __del__ = close


def serve() -> None:
    """The worker's loop: a JSON spec line builds the runner, then each "run" line runs it."""
    import json
    import sys

    spec = json.loads(sys.stdin.readline())
    workload = cases.Workload(**{**spec["workload"], "input_shape": tuple(spec["workload"]["input_shape"])})
    x, y = cases.synthetic_data(workload)
    runner = TorchRunner(cases.Case(**spec["case"]), workload, x, y, spec["model_steps"], spec["num_models"],
                         spec["augment"])  # fmt: skip
    print(json.dumps({"model_steps": runner.model_steps, "num_models": runner.num_models}), flush=True)
    for _ in sys.stdin:
        tic = time.process_time()
        runner.run()
        print(json.dumps({"cpu_s": time.process_time() - tic}), flush=True)
