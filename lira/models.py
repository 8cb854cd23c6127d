"""Model zoo: flax modules for shadow models, and the registry that names them.

Every convolution goes through `Conv`, which can run as XLA's native convolution or as im2col
(shifted slices + one matmul). Both read the same `kernel` [kh, kw, in, out] and `bias` [out]
parameters, so a checkpoint trained with one runs with the other. The reason for the second is
the CPU without YNNPACK (lira/xla_flags.py): vmapping over per-model conv weights lowers to a
grouped convolution that XLA:CPU's own kernels run several times slower than a loop of
single-model steps, while a vmapped matmul stays fast. With YNNPACK, the CPU default, the
native convolution is faster, one model a step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lira import xla_flags

CONV_IMPLS = ("xla", "im2col")


def default_conv_impl(backend: str | None = None) -> str:
    """The native convolution, but im2col on a CPU whose XLA runs without YNNPACK (see
    lira/xla_flags.py): YNNPACK's convolutions beat im2col, XLA:CPU's own do not."""
    backend = backend or jax.default_backend()
    return "im2col" if backend == "cpu" and not xla_flags.ynn_enabled() else "xla"


class Conv(nn.Module):
    """2-D convolution, SAME padding, NHWC. `impl` picks the lowering (see module docstring)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = True
    impl: str = "xla"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, pool: Callable | None = None):
        """`pool`, if given, is applied between the convolution and the bias. For a max-pool
        that is the same function (a max commutes with adding a per-channel constant, exactly
        in floating point too) with a 4x smaller bias add and bias gradient."""
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, in_features, self.features)
        )
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.impl == "xla":
            y = lax.conv_general_dilated(
                x, kernel, self.strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        elif self.impl == "im2col":
            y = _im2col_conv(x, kernel, self.strides)
        else:
            raise ValueError(f"Unknown conv impl {self.impl!r}; valid: {CONV_IMPLS}.")
        if pool is not None:
            y = pool(y)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
        return y


def _im2col_conv(x, kernel, strides):
    """x: [B, H, W, I], kernel: [kh, kw, I, O] -> [B, H', W', O], same result as SAME conv."""
    kh, kw, _, out = kernel.shape
    (pad_h, pad_w) = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, "SAME")
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    sh, sw = strides
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    patches = [
        x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(patches, axis=-1) if len(patches) > 1 else patches[0]
    return patches @ kernel.reshape(-1, out)


@jax.custom_vjp
def max_pool_2x2(x):
    """nn.max_pool(x, (2, 2), (2, 2)) (VALID: an odd last row or column is dropped), with the
    same values and gradient, ties included: the gradient goes to the first maximum of each
    window in row-major order, as XLA's select-and-scatter sends it.

    The forward pass is a reshape and a max; the gradient is one fused pass that finds each
    window's first maximum and one that places the gradient there, where nn.max_pool's gradient
    is a select-and-scatter and that of a plain reshape-and-max compares, counts and divides for
    ties. On the CPU the reshape-and-max made cnn32's training step 1.4x faster than
    nn.max_pool; with this gradient and the CNN pooling before its bias and ReLU, cnn32's
    gradient went from 177 to 157 ms at batch 256 (1.13x; either change alone gained under 5%;
    medians of 11 in one process, 2026-11-24).
    """
    return _pool_windows(x).max(axis=(2, 4))


def _pool_windows(x):
    batch, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels)


def _max_pool_fwd(x):
    pooled = max_pool_2x2(x)
    return pooled, (x, pooled)


def _max_pool_bwd(residuals, grad):
    x, pooled = residuals
    windows = _pool_windows(x)  # [B, H/2, 2, W/2, 2, C]
    # Each element's row-major place in its window, 0-3; the gradient goes to the first maximum.
    place = 2 * lax.broadcasted_iota(jnp.int32, windows.shape, 2) + lax.broadcasted_iota(
        jnp.int32, windows.shape, 4
    )
    is_max = windows == pooled[:, :, None, :, None]
    first = jnp.where(is_max, place, 4).min(axis=(2, 4), keepdims=True)
    dx = jnp.where(place == first, grad[:, :, None, :, None], 0).astype(x.dtype)
    dx = dx.reshape(x.shape[0], windows.shape[1] * 2, windows.shape[3] * 2, x.shape[3])
    pad = ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0))
    return (jnp.pad(dx, pad),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class MLP(nn.Module):
    """Fully connected ReLU network for tabular data (and flattened images)."""

    num_classes: int
    hidden: Sequence[int] = (512, 256, 128)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class CNN(nn.Module):
    """The LiRA paper's small CNN: `depth` blocks of conv3x3-ReLU-maxpool2 with widths
    width, 2*width, 4*width, ..., then global average pooling and a linear layer."""

    num_classes: int
    width: int = 32
    depth: int = 3
    conv_impl: str = "xla"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        for block in range(self.depth):
            # conv, max-pool, bias, ReLU: the same function as conv, bias, ReLU, max-pool, since
            # bias and ReLU are monotone; pooled first, they and their gradients are 4x smaller.
            pool = max_pool_2x2 if min(x.shape[1:3]) >= 2 else None
            x = nn.relu(Conv(self.width << block, impl=self.conv_impl, dtype=self.dtype)(x, pool))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class WideResNetBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv, twice) with a 1x1 projection shortcut."""

    features: int
    stride: int
    conv_impl: str
    dtype: jnp.dtype | None

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        conv = functools.partial(Conv, use_bias=False, impl=self.conv_impl, dtype=self.dtype)
        y = nn.relu(norm()(x))
        shortcut = x
        if x.shape[-1] != self.features or self.stride != 1:
            shortcut = conv(self.features, (1, 1), (self.stride, self.stride))(y)
        y = conv(self.features, (3, 3), (self.stride, self.stride))(y)
        y = conv(self.features, (3, 3))(nn.relu(norm()(y)))
        return shortcut + y


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko and Komodakis 2016), as in the LiRA paper's CIFAR setup."""

    num_classes: int
    depth: int = 28
    width: int = 2
    conv_impl: str = "xla"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}.")
        blocks_per_group = (self.depth - 4) // 6
        x = Conv(16, use_bias=False, impl=self.conv_impl, dtype=self.dtype)(x)
        for group, features in enumerate((16 * self.width, 32 * self.width, 64 * self.width)):
            for block in range(blocks_per_group):
                stride = 2 if group > 0 and block == 0 else 1
                x = WideResNetBlock(features, stride, self.conv_impl, self.dtype)(x, train)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


# name -> factory(num_classes, conv_impl, dtype) -> nn.Module
ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {
    "mlp": lambda num_classes, conv_impl, dtype: MLP(num_classes, dtype=dtype),
    "cnn32": lambda num_classes, conv_impl, dtype: CNN(num_classes, 32, conv_impl=conv_impl, dtype=dtype),
    "cnn64": lambda num_classes, conv_impl, dtype: CNN(num_classes, 64, conv_impl=conv_impl, dtype=dtype),
    "wrn28-2": lambda num_classes, conv_impl, dtype: WideResNet(num_classes, 28, 2, conv_impl, dtype),
    "wrn28-10": lambda num_classes, conv_impl, dtype: WideResNet(num_classes, 28, 10, conv_impl, dtype),
    # Tiny variants, for tests and smoke runs.
    "mlp-tiny": lambda num_classes, conv_impl, dtype: MLP(num_classes, hidden=(16,), dtype=dtype),
    "cnn-tiny": lambda num_classes, conv_impl, dtype: CNN(num_classes, 4, 2, conv_impl, dtype),
    "wrn10-1": lambda num_classes, conv_impl, dtype: WideResNet(num_classes, 10, 1, conv_impl, dtype),
}
_ALIASES = {"wrn28": "wrn28-2"}


def register_model(name: str, factory: ModelFactory) -> None:
    """Adds a model under `name` for `--arch=name`.

    `factory(num_classes, conv_impl, dtype)` returns a flax module whose `__call__(x, train)`
    maps a batch [B, ...] to logits [B, num_classes]. Keep BatchNorm statistics in the
    `batch_stats` collection (as flax's nn.BatchNorm does) and use `train` to switch them.
    """
    if name in _REGISTRY or name in _ALIASES:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = factory


def available_archs() -> list[str]:
    return sorted([*_REGISTRY, *_ALIASES])


def canonical_arch(arch: str) -> str:
    """The registry name of `arch`. A `module:factory` path (e.g. `my_models:small_net`) imports
    `module` (from the working folder or sys.path) and registers its `factory` under that name,
    so a user's own model passes through every stage, which all read `arch` from config.json."""
    arch = _ALIASES.get(arch, arch)
    if arch not in _REGISTRY and ":" in arch:
        _register_import_path(arch)
    if arch not in _REGISTRY:
        raise ValueError(
            f"Unknown --arch={arch!r}; valid: {', '.join(available_archs())}, or a "
            "module:factory import path of your own model."
        )
    return arch


def _register_import_path(path: str) -> None:
    import importlib
    import sys

    module_name, _, attribute = path.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.append("")  # the working folder, as for `python -m`
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--arch={path!r}: cannot import module {module_name!r} ({error}).") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--arch={path!r}: module {module_name!r} has no callable {attribute!r}.")
    _REGISTRY[path] = factory


def get_model(arch: str, num_classes: int, conv_impl: str | None = None, dtype=None) -> nn.Module:
    """The flax module for `arch`. conv_impl defaults to the fastest on the current backend."""
    conv_impl = conv_impl or default_conv_impl()
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {CONV_IMPLS}.")
    return _REGISTRY[canonical_arch(arch)](num_classes, conv_impl, dtype)
