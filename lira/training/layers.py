"""Convolution lowerings and the CPU kernels that the models of lira/training/models.py are built from.

Every convolution goes through `Conv`, which can run as XLA's native convolution or as im2col
(shifted slices + one matmul). Both read the same `kernel` [kh, kw, in, out] and `bias` [out]
parameters, so a checkpoint trained with one runs with the other. The reason for the second is
twofold. On the CPU without YNNPACK (lira/xla_flags.py), vmapping over per-model conv weights
lowers to a grouped convolution that XLA:CPU's own kernels run several times slower than a loop
of single-model steps, while a vmapped matmul stays fast (with YNNPACK, the CPU default, the
native convolution is faster, one model a step). On a GPU, the same grouped convolution ran
well below im2col's batched matmuls (docs/performance.md, "GPU: the first figures").

Also here: the space-to-depth stem for convolutions of few input channels, and pool_bias_relu,
the CNN block's fused 2x2 max-pool, bias and ReLU with a hand-written gradient.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lira import xla_flags
from lira.config import CONV_IMPLS


def default_conv_impl(backend: str | None = None, arch: str | None = None) -> str:
    """The fastest lowering measured for `arch` on `backend` (docs/performance.md).

    CPU: the native convolution, but im2col where XLA runs without YNNPACK (lira/xla_flags.py):
    YNNPACK's convolutions beat im2col, XLA:CPU's own do not. GPU: vmapped native convolutions
    become grouped convolutions, which ran cnn32 well below im2col's batched matmuls on an H200
    (64 models a step); im2col there for every conv net but the WRNs, whose im2col
    patches outgrow memory at 64 models a step and which train one model a step on a GPU anyway.
    """
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "xla" if xla_flags.ynn_enabled() else "im2col"
    return "xla" if arch is not None and arch.startswith("wrn") else "im2col"


class Conv(nn.Module):
    """2-D convolution, SAME padding, NHWC. `impl` picks the lowering (see module docstring).

    With `pool_relu`, the layer is a CNN block: relu(2x2 max-pool(conv(x)) + bias), the same
    function as conv, bias, ReLU, max-pool (bias and ReLU are monotone), computed by
    `pool_bias_relu` at the pooled size. A 3x3 stride-1 native convolution of an input with at
    most SPACE_TO_DEPTH_MAX_FEATURES channels (an image stem) then runs its forward pass on 2x2
    blocks of pixels (`_space_to_depth_conv`), whose output is already grouped by pool window.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    use_bias: bool = True
    impl: str = "xla"
    dtype: jnp.dtype | None = None
    pool_relu: bool = False

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel_size, in_features, self.features)
        )
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        bias = None if bias is None else bias.astype(dtype)
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"Unknown conv impl {self.impl!r}; valid: {CONV_IMPLS}.")
        if self.pool_relu:
            bias = jnp.zeros((self.features,), dtype) if bias is None else bias
            if self._uses_space_to_depth(x):
                return pool_bias_relu(self.tap(x, _space_to_depth_conv(x, kernel)), bias, (3,))
            y = self.tap(x, _conv(x, kernel, self.strides, self.impl))
            if min(y.shape[1:3]) < 2:  # nothing to pool
                return jax.nn.relu(y + bias)
            return pool_bias_relu(_pool_windows(y), bias, (2, 4))
        y = self.tap(x, _conv(x, kernel, self.strides, self.impl))
        return y if bias is None else y + bias

    def tap(self, x, y):
        """Returns y: the convolution of x [B, H, W, I] (cast to the layer's dtype) by the kernel,
        before bias, pooling and ReLU, [B, H', W', O], or on the space-to-depth path
        [B, H/2, W/2, 4, O] (2x2 output blocks, `_to_blocks`' layout).

        The identity, and a method of its own so that flax.linen.intercept_methods sees each
        call's input and linear output: lira/training/grad_norms.py adds a zero to y there to read
        the gradient of the loss with respect to y, from which (with x) it computes the norm of
        each example's kernel and bias gradients."""
        del x
        return y

    def _uses_space_to_depth(self, x) -> bool:
        return (
            _SPACE_TO_DEPTH.get()
            and self.impl == "xla"
            and self.kernel_size == (3, 3)
            and self.strides == (1, 1)
            and x.shape[-1] <= SPACE_TO_DEPTH_MAX_FEATURES
            and x.shape[1] % 2 == 0
            and x.shape[2] % 2 == 0
        )


# On the CPU, conv 1 of cnn32 (3 -> 32 channels on 32x32 images) runs faster on 2x2 blocks (12 ->
# 128 channels, 1.8x the FLOPs) with the native weight gradient kept, and conv 2 (32 channels in)
# slower: docs/performance.md, "Space-to-depth stem".
SPACE_TO_DEPTH_MAX_FEATURES = 4
_SPACE_TO_DEPTH = contextvars.ContextVar("lira_space_to_depth", default=True)


@contextlib.contextmanager
def without_space_to_depth():
    """Models traced inside run every convolution natively: for counting a model's FLOPs, which
    the space-to-depth forward pass inflates (1.8x for its layer) without changing the function."""
    token = _SPACE_TO_DEPTH.set(False)
    try:
        yield
    finally:
        _SPACE_TO_DEPTH.reset(token)


def _conv(x, kernel, strides, impl):
    if impl == "im2col":
        return _im2col_conv(x, kernel, strides)
    return _native_conv(x, kernel, strides)


def _native_conv(x, kernel, strides=(1, 1)):
    return lax.conv_general_dilated(x, kernel, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


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


def _to_blocks(x):
    """[B, H, W, C] (H, W even) -> [B, H/2, W/2, 4, C]: 2x2 blocks of pixels, axis 3 the place
    (u, v) in the block, row-major."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height // 2, width // 2, 4, channels)


def _from_blocks(x):
    """The inverse of _to_blocks: [B, H/2, W/2, 4, C] -> [B, H, W, C]."""
    batch, half_h, half_w, _, channels = x.shape
    x = x.reshape(batch, half_h, half_w, 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, 2 * half_h, 2 * half_w, channels)


def _block_taps():
    """taps[block, sub, u, k] = 1 where row 2*block + sub of a padded 4-row band is the input
    row that kernel row k reads for output row u of a 2x2 output block (k = 2*block + sub - u)."""
    taps = np.zeros((2, 2, 2, 3), np.float32)
    for block, sub, u in np.ndindex(2, 2, 2):
        k = 2 * block + sub - u
        if 0 <= k <= 2:
            taps[block, sub, u, k] = 1
    return taps


_BLOCK_TAPS = _block_taps()


@jax.custom_vjp
def _space_to_depth_conv(x, kernel):
    """The SAME 3x3 convolution of x [B, H, W, I] (H, W even) grouped by 2x2 output block:
    [B, H/2, W/2, 4, O], axis 3 the place (u, v) in the block, row-major.

    Padded by one pixel, x is cut into 2x2 blocks of pixels, [B, H/2+1, W/2+1, 4I]; the 2x2
    outputs of a block read a 4x4 patch, that is 2x2 input blocks, so the convolution is a VALID
    2x2 convolution of the blocks with a [2, 2, 4I, 4O] kernel made from `kernel` and zeros.
    Its weight gradient is the native convolution's (faster than the blocked one here)."""
    features, out = kernel.shape[2:]
    x = _to_blocks(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
    x = x.reshape(*x.shape[:3], 4 * features)
    taps = jnp.asarray(_BLOCK_TAPS, kernel.dtype)
    blocked = jnp.einsum("aiuk,bjvl,klco->abijcuvo", taps, taps, kernel)
    blocked = blocked.reshape(2, 2, 4 * features, 4 * out)
    y = lax.conv_general_dilated(x, blocked, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(*y.shape[:3], 4, out)


def _space_to_depth_conv_fwd(x, kernel):
    return _space_to_depth_conv(x, kernel), (x, kernel)


def _space_to_depth_conv_bwd(residuals, grad):
    x, kernel = residuals
    _, vjp = jax.vjp(_native_conv, x, kernel)
    return vjp(_from_blocks(grad))


_space_to_depth_conv.defvjp(_space_to_depth_conv_fwd, _space_to_depth_conv_bwd)


def _pool_windows(x):
    """[B, H, W, C] -> [B, H/2, 2, W/2, 2, C], an odd last row or column dropped (VALID)."""
    batch, height, width, channels = x.shape
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pool_bias_relu(windows, bias, axes):
    """relu(max over each pool window + bias): `windows` holds the windows on `axes` (row-major
    place order) and channels last, e.g. [B, H/2, 2, W/2, 2, C] with axes (2, 4).

    The same values and gradients as relu(nn.max_pool(y) + bias), ties included: the gradient
    goes to the first maximum of each window in row-major order, as XLA's select-and-scatter
    sends it. Computed as one reduction, max(0, max(window + bias)), which equals
    relu(max(window) + bias) exactly since rounding is monotone; the gradient is one fused pass
    that finds each window's first maximum and one that places the gradient there.

    Pooling before the bias and ReLU with this kind of gradient, and then fusing the bias and
    ReLU into the pool's reduction, each made cnn32's gradient step faster on the CPU
    (docs/performance.md, "What made cnn32 fast on the CPU"): the pooled activations are then a
    reduction's output, which XLA does not recompute inside the transposes that feed the next
    layer's weight gradient, and a bare transpose runs faster than one fused with them.
    """
    return lax.reduce(windows + bias, jnp.zeros((), windows.dtype), lax.max, axes)


def _pool_bias_relu_fwd(windows, bias, axes):
    out = pool_bias_relu(windows, bias, axes)
    return out, (windows, bias, out)


def _pool_bias_relu_bwd(axes, residuals, grad):
    windows, bias, out = residuals
    grad = jnp.where(out > 0, grad, 0)
    place, size = 0, 1
    for axis in axes:  # each element's row-major place in its window
        place = place * windows.shape[axis] + lax.broadcasted_iota(jnp.int32, windows.shape, axis)
        size *= windows.shape[axis]
    is_max = windows + bias == jnp.expand_dims(out, axes)
    first = jnp.where(is_max, place, size).min(axis=axes, keepdims=True)
    d_windows = jnp.where(place == first, jnp.expand_dims(grad, axes), 0).astype(windows.dtype)
    d_bias = grad.sum(axis=tuple(range(grad.ndim - 1))).astype(bias.dtype)
    return d_windows, d_bias


pool_bias_relu.defvjp(_pool_bias_relu_fwd, _pool_bias_relu_bwd)
