"""Image transforms on the device: training augmentation and the inference queries.

Both are made of the same two moves: a horizontal mirror, and a shift by (dy, dx) pixels with
reflect padding (equivalently, a crop of the reflect-padded image). A query is a (mirror, dy, dx)
view; the query stage makes by default the views the models trained on (`resolve_queries`), as
the LiRA paper does: a view the models never saw is an out-of-distribution input whose logits
separate members from non-members less well, so averaging it in dilutes the attack.
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


def trained_views(kind: str) -> set[tuple[bool, int, int]]:
    """The (mirror, dy, dx) views that training with augmentation `kind` can draw (image data):
    none, the image; mirror, the image and its mirror; weak, either one shifted by any (dy, dx)
    in [-4, 4]^2 (`augment`)."""
    if kind not in AUGMENTS:
        raise ValueError(f"Unknown augment {kind!r}; valid: {AUGMENTS}.")
    mirrors = (False,) if kind == "none" else (False, True)
    shifts = range(-PAD, PAD + 1) if kind == "weak" else (0,)
    return {(mirror, dy, dx) for mirror in mirrors for dy in shifts for dx in shifts}


def trained_query_counts(kind: str, is_image: bool = True) -> tuple[int, ...]:
    """The query counts whose every view is one training with augmentation `kind` draws: none
    (1,), mirror (1, 2), weak (1, 2, 18, 162); non-image data has one query whatever `kind`."""
    if not is_image:
        return (1,)
    views = trained_views(kind)
    return tuple(count for count in QUERY_COUNTS if set(query_offsets(count)) <= views)


# The queries made when none are asked for: every view for none and mirror, and for weak the
# LiRA paper's 18 (mirror x shifts in {-4, 0, 4}^2): its 162 trained views cost 9x the inference.
DEFAULT_QUERIES = {"none": 1, "mirror": 2, "weak": 18}


def resolve_queries(queries: int, kind: str, is_image: bool, allow_untrained_views: bool = False,
                    flag: str = "--queries") -> int:  # fmt: skip
    """The query count a run trained with augmentation `kind` is queried with: `queries`, or with
    0 DEFAULT_QUERIES[kind] (non-image data: 1). A count with a view training never drew is
    refused unless `allow_untrained_views`; non-image data has one query in any case."""
    if not is_image:
        if queries not in (0, 1):
            raise ValueError(
                f"{flag}={queries}: non-image data has a single query; valid: 0 (as trained) or 1."
            )
        return 1
    if queries == 0:
        return DEFAULT_QUERIES[kind]
    valid = trained_query_counts(kind)
    if queries not in valid and not allow_untrained_views:
        untrained = len(set(query_offsets(queries)) - trained_views(kind))
        views = f"{untrained} view{'s' * (untrained > 1)}"
        raise ValueError(
            f"{flag}={queries} has {views} the models never trained on (the run's --augment={kind}); valid: 0 "
            f"(as trained: {DEFAULT_QUERIES[kind]}), {', '.join(map(str, valid))}, or add "
            "--allow_untrained_views to query them anyway."
        )
    return queries


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
