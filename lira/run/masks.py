"""Membership masks: which pool examples each shadow model trains on.

Ordinary examples are balanced (every column has the same number of IN models), so that no
example is easier to attack because more references hold it. Canaries are the exception: the
one-run privacy audit (Steinke, Nasr and Jagielski 2023) needs a target's canary memberships to
be independent coin flips that its references' masks say nothing about. In a balanced column the
other M - 1 models' entries fix the target's, so canary columns are drawn independently per model.
"""

from __future__ import annotations

import numpy as np

_CANARY_STREAM = 7  # a separate random stream, so the balanced columns are those of a run without canaries


def make_keep(num_models: int, num_examples: int, pkeep: float = 0.5, seed: int = 0,
              canaries: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """bool [M, N]: keep[m, j] = example j is in model m's training set.

    Every column not in `canaries` (int [K] pool indices) is balanced: exactly round(pkeep * M)
    True entries, the lowest ranks of a uniform draw over models. Each canary column is instead
    M independent Bernoulli(pkeep) draws, so its column sum varies. The matrix depends on `seed`,
    the shape and `canaries` alone, so processes that train different slices of the models agree
    on it.
    """
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}.")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
    if not 0.0 < pkeep < 1.0:
        raise ValueError(f"pkeep must be in (0, 1), got {pkeep}.")
    num_in = int(round(pkeep * num_models))
    rng = np.random.default_rng(seed)
    ranks = rng.random((num_models, num_examples)).argsort(axis=0).argsort(axis=0)
    keep = ranks < num_in
    canaries = np.asarray([] if canaries is None else canaries, dtype=np.int64)
    if len(canaries):
        if canaries.min() < 0 or canaries.max() >= num_examples or len(np.unique(canaries)) != len(canaries):
            raise ValueError(
                f"canaries must be distinct pool indices in [0, {num_examples}); got {len(canaries)} from "
                f"{canaries.min()} to {canaries.max()}, {len(canaries) - len(np.unique(canaries))} repeated."
            )
        canary_rng = np.random.default_rng([seed, _CANARY_STREAM])
        keep[:, canaries] = canary_rng.random((num_models, len(canaries))) < pkeep
    return keep


def parse_slice(spec: str | None, num_models: int) -> tuple[int, int]:
    """'START:STOP' -> (start, stop) within [0, num_models]; None or '' means all models."""
    if not spec:
        return 0, num_models
    try:
        start_text, stop_text = spec.split(":")
        start = int(start_text) if start_text else 0
        stop = int(stop_text) if stop_text else num_models
    except ValueError:
        raise ValueError(f"--shadow_ids must look like START:STOP (e.g. 0:16), got {spec!r}.") from None
    if not 0 <= start < stop <= num_models:
        raise ValueError(
            f"--shadow_ids={spec} is not a non-empty slice of the {num_models} models; "
            f"need 0 <= START < STOP <= {num_models}."
        )
    return start, stop
