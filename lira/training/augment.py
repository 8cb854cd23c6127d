"""Image transforms on the device: training augmentation and the pixels of the inference queries.

Both are made of the same two moves: a horizontal mirror, and a shift by (dy, dx) pixels with
reflect padding (equivalently, a crop of the reflect-padded image). Which (mirror, dy, dx) views
a query set holds, in which order, and which of them training draws is the run directory's
contract (lira/run/views.py); this module only makes the pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lira.config import AUGMENTS
from lira.run.views import PAD, query_offsets


def shift(images, dy, dx, pad: int = PAD):
    """images: [B, H, W, C] -> the same images shifted by (dy, dx) in [-pad, pad], reflect-padded."""
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return jax.lax.dynamic_slice_in_dim(
        jax.lax.dynamic_slice_in_dim(padded, pad + dy, height, axis=1), pad + dx, width, axis=2
    )


def augment(images, key, kind: str):
    """images: [B, H, W, C] (or [B, F] for tabular data, returned as is) -> augmented batch.

    `mirror` flips each image with probability 1/2; `weak` (the LiRA paper's CIFAR setting) also
    shifts each image by a uniform offset in [-4, 4]^2 with reflect padding.
    """
    if kind not in AUGMENTS:
        raise ValueError(f"Unknown augment {kind!r}; valid: {AUGMENTS}.")
    if kind == "none" or images.ndim != 4:
        return images
    flip_key, shift_key = jax.random.split(key)
    flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    if kind == "weak":
        pad = min(PAD, images.shape[1] - 1, images.shape[2] - 1)
        offsets = jax.random.randint(shift_key, (images.shape[0], 2), -pad, pad + 1)
        images = jax.vmap(lambda image, o: shift(image[None], o[0], o[1], pad)[0])(images, offsets)
    return images


def make_queries(images, num_queries: int):
    """images: [B, H, W, C] -> [B, Q, H, W, C], the views in query_offsets order; tabular [B, F] ->
    [B, 1, F] (Q must be 1)."""
    if images.ndim != 4:
        if num_queries != 1:
            raise ValueError(f"Non-image data has a single query; got --queries={num_queries}.")
        return images[:, None]
    pad = min(PAD, images.shape[1] - 1, images.shape[2] - 1)
    out = []
    for mirror, dy, dx in query_offsets(num_queries):
        view = images[:, :, ::-1, :] if mirror else images
        dy, dx = int(np.clip(dy, -pad, pad)), int(np.clip(dx, -pad, pad))
        out.append(view if (dy, dx) == (0, 0) else shift(view, dy, dx, pad))
    return jnp.stack(out, axis=1)
