"""Image transforms on the device: training augmentation and the inference queries.

Both are made of the same two moves: a horizontal mirror, and a shift by (dy, dx) pixels with
reflect padding (equivalently, a crop of the reflect-padded image).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from lira.config import AUGMENTS, QUERY_COUNTS  # noqa: F401  (re-exported: their home is the config)

PAD = 4


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


def query_offsets(num_queries: int) -> list[tuple[bool, int, int]]:
    """The (mirror, dy, dx) of each query, in the order of the Q axis of the logits.

    1: the image; 2: image and mirror; 18: mirror x shifts in {-4, 0, 4}^2;
    162: mirror x shifts in {-4, ..., 4}^2.
    """
    if num_queries == 1:
        return [(False, 0, 0)]
    if num_queries == 2:
        return [(False, 0, 0), (True, 0, 0)]
    if num_queries == 18:
        shifts = (-4, 0, 4)
    elif num_queries == 162:
        shifts = tuple(range(-4, 5))
    else:
        raise ValueError(
            f"--queries={num_queries} is not supported; valid: {', '.join(map(str, QUERY_COUNTS))}."
        )
    return [(mirror, dy, dx) for mirror in (False, True) for dy, dx in itertools.product(shifts, shifts)]


def make_queries(images, num_queries: int):
    """images: [B, H, W, C] -> [B, Q, H, W, C]; tabular [B, F] -> [B, 1, F] (Q must be 1)."""
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
