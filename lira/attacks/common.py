"""What an attack sees, and the masked statistics over reference models that attacks share.

An attack is a function `fn(target, references, context, **options) -> scores float [N]`,
larger = more likely a member of the target's training set. It sees:

- `target`: the target model's `Signals`, arrays [N, Q] (softmax [N, Q, C]).
- `references`: `References`, the reference models' `Signals` [R, N, Q] and two masks [R, N]
  saying which reference counts as IN and which as OUT for each example. The driver
  (`lira.audit`) builds them from models other than the target only, and already applies
  `num_shadows_used`, so an attack uses every reference its masks allow.
- `context`: pool labels, a per-target seed, and the target's known non-members (RMIA's
  population). Attacks other than RMIA do not read the population.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lira.signals import Signals

# A standard deviation smaller than float32's rounding error at the signal's magnitude is not a
# measurement: the signals are float32. Variances are floored at (FLOAT32_EPS * max(1, |mean|))^2,
# which turns a zero-variance case (every reference gave the same value) into a sharp but finite
# test instead of a division by zero, and leaves every measurable variance untouched.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass
class References:
    """Reference (shadow) models of one target.

    signals: Signals with arrays [R, N, Q] (softmax [R, N, Q, C]).
    is_in, is_out: bool [R, N]: reference r is used as an IN (OUT) model for example n. Both are
      False where the driver left a reference out for that example (num_shadows_used).
    """

    signals: Signals
    is_in: np.ndarray
    is_out: np.ndarray


@dataclasses.dataclass
class AttackContext:
    """labels int [N]; seed for any randomness of the attack; population int [P]: pool examples
    outside the target's training set (RMIA compares each example against them)."""

    labels: np.ndarray
    seed: int
    population: np.ndarray


def variance_floor(mean: np.ndarray) -> np.ndarray:
    return (FLOAT32_EPS * np.maximum(1.0, np.abs(mean))) ** 2


def masked_moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example, per-query mean and unbiased variance over the references selected by `mask`.

    values: float [R, N, Q]; mask: bool [R, N].
    Returns mean [N, Q], variance [N, Q] (ddof=1, floored; needs count >= 2), count int [N].
    Computed in float64 with two passes (mean, then squared deviations), which is exact enough
    for signals whose spread is tiny relative to their mean.
    """
    weights = mask.astype(np.float64)[..., None]
    count = mask.sum(axis=0)
    denominator = np.maximum(count, 1)[:, None]
    mean = np.sum(weights * values, axis=0, dtype=np.float64) / denominator
    squared = np.sum(weights * (values - mean) ** 2, axis=0, dtype=np.float64)
    variance = squared / np.maximum(count - 1, 1)[:, None]
    return mean, np.maximum(variance, variance_floor(mean)), count


def pooled_variance(values: np.ndarray, mask: np.ndarray, mean: np.ndarray) -> float:
    """One variance pooled over all examples and queries from per-example-centred values.

    values: float [R, N, Q]; mask: bool [R, N]; mean: [N, Q] per-example means under `mask`.
    Each (example, query) group contributes its squared deviations from its own mean and
    count - 1 degrees of freedom, so differences between examples' means do not inflate it.
    """
    weights = mask.astype(np.float64)[..., None]
    squared = np.sum(weights * (values - mean) ** 2, dtype=np.float64)
    num_queries = values.shape[-1]
    degrees_of_freedom = num_queries * np.sum(np.maximum(mask.sum(axis=0) - 1, 0))
    variance = squared / max(degrees_of_freedom, 1)
    return float(max(variance, float(np.max(variance_floor(mean)))))


def masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the references selected by `mask`: values [R, N, ...], mask [R, N] -> [N, ...]."""
    extra = (1,) * (values.ndim - 2)
    weights = mask.astype(np.float64).reshape(*mask.shape, *extra)
    count = np.maximum(mask.sum(axis=0), 1).reshape(-1, *extra)
    return np.sum(weights * values, axis=0, dtype=np.float64) / count


def log_normal_density(x: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    return -0.5 * np.log(2 * np.pi * variance) - (x - mean) ** 2 / (2 * variance)
