"""Balanced membership masks: which pool examples each shadow model trains on."""

from __future__ import annotations

import numpy as np


def make_keep(num_models: int, num_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    """bool [M, N]: keep[m, j] = example j is in model m's training set.

    Balanced per example: every column has exactly round(pkeep * M) True entries, so every
    example is IN for the same number of models and OUT for the rest. Each column ranks a
    uniform draw over models and keeps the lowest ranks. The matrix depends on `seed` and the
    shape alone, so processes that train different slices of the models agree on it.
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
    return ranks < num_in


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
