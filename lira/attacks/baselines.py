"""Loss-based baselines: the attacks LiRA and RMIA are measured against.

All read the cross-entropy signal CE [M, N, Q], averaged over the Q queries first (so a
score is about an example, not about one augmentation of it). Scores are [T, N].
"""

from __future__ import annotations

import numpy as np

from lira.attacks.common import AttackInputs, masked_mean

# Ye et al.'s code pads each example's reference losses with a dummy smallest (0) and largest
# (1000) loss before interpolating (ml_privacy_meter, linear_itp_threshold_func), so a target
# loss below every reference loss still gets a percentile between 0 and 1/(n+1).
LOSS_FLOOR, LOSS_CEILING = 0.0, 1000.0


def loss(inputs: AttackInputs) -> np.ndarray:
    """Yeom et al. 2018: -CE of the target. Uses no references: a low loss means member."""
    return -inputs.target_values("ce").mean(axis=-1)


def calibrated_loss(inputs: AttackInputs) -> np.ndarray:
    """Watson et al. 2022: -(CE_target - mean CE over OUT references), which removes how hard the
    example is for any model, leaving how much easier it is for this one."""
    target_loss = inputs.target_values("ce").mean(axis=-1)
    reference_loss = masked_mean(inputs.query_mean_values("ce"), inputs.offline_out)
    return -(target_loss - reference_loss)


def interpolated_percentile(value: np.ndarray, references: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Where `value` sits in each column's reference distribution, as Ye et al. compute it: the
    valid references [R, N] of a column, sorted and padded with LOSS_FLOOR and a ceiling (at least
    LOSS_CEILING), are the quantiles at 0, 1/(n+1), ..., 1 of a piecewise-linear distribution
    function, and the result is that function at value [N]: a continuous percentile in [0, 1].
    """
    ceiling = max(LOSS_CEILING, float(np.max(value)), float(np.max(np.where(valid, references, -np.inf))))
    ordered = np.sort(np.where(valid, references, np.inf), axis=0)  # valid ones first, ascending
    count = valid.sum(axis=0)
    below = np.sum(valid & (references <= value), axis=0)  # index i of the segment [p_i, p_i+1)
    padded = np.concatenate([np.full((1, len(value)), LOSS_FLOOR), ordered, np.full((1, len(value)), np.inf)])
    columns = np.arange(len(value))
    low = padded[below, columns]
    high = padded[below + 1, columns]
    high = np.where((below == count) | ~np.isfinite(high), ceiling, high)  # past the last reference
    fraction = np.where(
        high > low, (np.clip(value, LOSS_FLOOR, ceiling) - low) / np.maximum(high - low, 1e-300), 0.0
    )
    return (below + fraction) / (count + 1)


def attack_r(inputs: AttackInputs) -> np.ndarray:
    """Ye et al. 2022 (Attack R, reference-model attack): 1 - the target's CE as an interpolated
    percentile of its OUT references' CEs (`interpolated_percentile`). A continuous score: a
    count of the n references above it would tie most examples and resolve no low FPR."""
    target_loss = inputs.target_values("ce").mean(axis=-1)  # [T, N]
    reference_loss = inputs.query_mean_values("ce")  # [M, N]
    return np.stack(
        [
            1.0 - interpolated_percentile(target_loss[row], reference_loss, inputs.offline_out[row])
            for row in range(inputs.num_targets)
        ]
    )
