"""DP-SGD's batches: Poisson sampling of each model's IN set, host-side, one epoch at a time.

jax_privacy.batch_selection.CyclicPoissonSampling (one cycle, truncated): at every step each IN
example of a model is drawn independently with probability q = B / n, where B is --batch_size and
n = round(pkeep * N) the expected IN-set size; a draw of more than `max_batch_size` examples keeps
a uniformly random `max_batch_size` of them. The step (lira/training/dpsgd.py) pads the draw to
that fixed size with examples marked as padding, which contribute nothing. The accountant
(lira/dp.py) accounts for exactly this sampling, truncation included, so it reads q and the
physical batch from here.

Batches are a function of (seed, model index, epoch) alone, as every other draw of the trainer
(lira/training/step.py), so a model trains the same alone, in a vectorized slice or resumed.
Imported for DP only: an accelerator image may lack jax-privacy.
"""

from __future__ import annotations

import math

import numpy as np
from jax_privacy import batch_selection

from lira.config import TrainingConfig

_BATCH_SEED = 3  # tag of the batch-sampling stream, beside step.py's init, order and augmentation


def max_batch_size(batch_size: int, configured: int = 0) -> int:
    """The physical batch of a DP step: `configured`, or B + ceil(5 sqrt(B)), five standard
    deviations of the draw, so truncation is rare and costs little epsilon (docs/dp.md)."""
    return configured or batch_size + math.ceil(5 * math.sqrt(batch_size))


def sampling_probability(batch_size: int, expected_in: int) -> float:
    """q = B / n, the chance that a step draws a given IN example (at most 1)."""
    return min(1.0, batch_size / expected_in)


def poisson_batches(keep_row: np.ndarray, q: float, max_batch: int, steps: int, seed: int, model_index: int,
                    epoch: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One model's DP batches for one epoch: (indices int32 [steps, max_batch] into the pool,
    sizes int32 [steps]); row s holds the step's draw first, then padding (index 0, to be masked
    with position >= size). keep_row: bool [N], the model's IN set."""
    members = np.flatnonzero(keep_row)
    sampler = batch_selection.CyclicPoissonSampling(
        sampling_prob=q, iterations=steps, truncated_batch_size=max_batch
    )
    rng = np.random.default_rng([seed, model_index, _BATCH_SEED, epoch])
    indices = np.zeros((steps, max_batch), np.int32)
    sizes = np.zeros(steps, np.int32)
    for s, drawn in enumerate(sampler.batch_iterator(len(members), rng)):
        sizes[s] = len(drawn)
        indices[s, : len(drawn)] = members[drawn]
    return indices, sizes


def epoch_batches(keep: np.ndarray, start: int, stop: int, epoch: int, config: TrainingConfig,
                  num_steps: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """poisson_batches of models [start, stop) for `epoch`, stacked: (int32 [m, S, P], int32 [m, S]).
    keep: bool [M, N]."""
    expected_in = round(config.pkeep * keep.shape[1])
    q = sampling_probability(config.batch_size, expected_in)
    max_batch = max_batch_size(config.batch_size, config.dp_max_batch_size)
    drawn = [
        poisson_batches(keep[m], q, max_batch, num_steps, config.seed, m, epoch) for m in range(start, stop)
    ]
    return np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn])
