"""Model zoo: flax modules for shadow models, and the registry that names them.

Convolutions come from lira/training/layers.py (its docstring says why there are two lowerings).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lira.config import CONV_IMPLS
from lira.training.layers import Conv, default_conv_impl


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
        self.sow("intermediates", "features", x)
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
            x = Conv(self.width << block, impl=self.conv_impl, dtype=self.dtype, pool_relu=True)(x)
        x = x.mean(axis=(1, 2))
        self.sow("intermediates", "features", x)
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
        self.sow("intermediates", "features", x)
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
    """The registry name of `arch`. A `module:factory` path is known only once import_arch has
    imported it: this never imports, so an arch read from a run directory cannot run code."""
    arch = _ALIASES.get(arch, arch)
    if arch not in _REGISTRY and ":" in arch:
        raise ValueError(
            f"--arch={arch!r} is a module:factory model that this command did not import: lira imports a "
            "model's code only when the command names it (lira.training.models.import_arch), never because a "
            "run directory does; give --arch=" + arch + " to the command."
        )
    if arch not in _REGISTRY:
        raise ValueError(
            f"Unknown --arch={arch!r}; valid: {', '.join(available_archs())}, or a "
            "module:factory import path of your own model."
        )
    return arch


def import_arch(arch: str) -> str:
    """Imports a `module:factory` arch (e.g. `my_models:small_net`: `module` from the working
    folder or PYTHONPATH) and registers its `factory` under that name; returns `arch`. Call it
    only with an arch the current command names (a flag), never one read from a run directory:
    run directories are shared and writable, and importing runs the module's code."""
    if ":" in arch and arch not in _REGISTRY:
        _register_import_path(arch)
    return arch


def _register_import_path(path: str) -> None:
    import sys

    module_name, _, attribute = path.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.append("")  # the working folder, as for `python -m`
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in (module_name, module_name.partition(".")[0]):  # the module imports a missing one
            raise ValueError(
                f"--arch={path!r}: importing module {module_name!r} failed ({error})."
            ) from error
        raise ValueError(
            f"--arch={path!r}: no module {module_name!r} in the current directory ({os.getcwd()}) or on "
            "PYTHONPATH, where modules are found; run from the folder that holds it, or add that folder to "
            "PYTHONPATH."
        ) from error
    except ImportError as error:
        raise ValueError(f"--arch={path!r}: cannot import module {module_name!r} ({error}).") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--arch={path!r}: module {module_name!r} has no callable {attribute!r}.")
    _REGISTRY[path] = factory


def get_model(arch: str, num_classes: int, conv_impl: str | None = None, dtype=None) -> nn.Module:
    """The flax module for `arch`. conv_impl defaults to the fastest on the current backend."""
    conv_impl = conv_impl or default_conv_impl(arch=arch)
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {CONV_IMPLS}.")
    factory = _REGISTRY[canonical_arch(arch)]
    try:
        return factory(num_classes, conv_impl, dtype)
    except TypeError as error:
        if not _takes_three_arguments(factory):
            raise ValueError(
                f"--arch={arch}: its factory must take (num_classes, conv_impl, dtype) and return a flax module; "
                f"calling it so failed ({error})."
            ) from error
        raise


def _takes_three_arguments(factory) -> bool:
    try:
        inspect.signature(factory).bind(0, "xla", None)
    except (TypeError, ValueError):
        return False
    return True


def uses_batch_norm(arch: str) -> bool:
    """Whether `arch` keeps BatchNorm statistics, found by initialising it abstractly on a
    32x32x3 image (shapes only, nothing computed). DP-SGD refuses such models: a BatchNorm's
    batch statistics mix examples before their gradients are clipped."""
    model = get_model(arch, 10, "xla")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    return bool(jax.tree.leaves(variables.get("batch_stats", {})))
