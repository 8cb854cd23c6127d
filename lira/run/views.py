"""The query views: which (mirror, dy, dx) view of an image each index of the logits' Q axis holds.

This is part of the run directory's contract, not of training: the query stage writes logits
[M, N, Q, C] in `query_offsets` order, and the attack stage and the studies read views back out
of that axis by the same order. A view is the image, optionally mirrored, shifted by (dy, dx)
pixels with reflect padding (lira/training/augment.py makes the pixels). The query stage makes by
default the views the models trained on (`resolve_queries`), as the LiRA paper does: a view the
models never saw is an out-of-distribution input whose logits separate members from non-members
less well, so averaging it in dilutes the attack.
"""

from __future__ import annotations

import itertools

from lira.config import AUGMENTS, QUERY_COUNTS

# The largest shift, in pixels, of a query view and of the `weak` training augmentation (the LiRA
# paper's CIFAR setting): both draw from the same [-PAD, PAD]^2, so the trained views are queryable.
PAD = 4


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
        shifts = (-PAD, 0, PAD)
    elif num_queries == 162:
        shifts = tuple(range(-PAD, PAD + 1))
    else:
        raise ValueError(
            f"--queries={num_queries} is not supported; valid: {', '.join(map(str, QUERY_COUNTS))}."
        )
    return [(mirror, dy, dx) for mirror in (False, True) for dy, dx in itertools.product(shifts, shifts)]


def trained_views(kind: str) -> set[tuple[bool, int, int]]:
    """The (mirror, dy, dx) views that training with augmentation `kind` can draw (image data):
    none, the image; mirror, the image and its mirror; weak, either one shifted by any (dy, dx)
    in [-4, 4]^2 (lira.training.augment.augment)."""
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
