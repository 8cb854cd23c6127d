"""RMIA (Zarifzadeh, Liu, Shokri 2024, "Low-Cost High-Power Membership Inference Attacks").

    LR(u) = p(u | target) / p(u),   score(x) = fraction of population z with LR(x) / LR(z) >= gamma

p(u | target) is the target's true-class probability p_y, averaged over the Q queries
(augmentations) before the ratio is taken, and p(u) is the mean of the same over reference
models. Averaging the probabilities over queries (rather than scoring each query and averaging
the scores) is our reading of the paper; we could not check it against their code here.

Online: p(u) is the mean over all references (IN and OUT for u alike). Offline: only OUT
references exist, and p(u) = ((1 + a) p_out(u) + (1 - a)) / 2 approximates the online mean from
them (the paper's linear approximation; a is tuned per dataset).

The population z is the pool examples outside the target's training set, as in the paper's
code; `num_population` of them are drawn without replacement from the seed.

Defaults (from memory of the paper and its code's CIFAR-10 configs, not re-checked here, so
treat them as starting points): gamma = 2, offline a = 0.3, population 10,000.

Computed in log space: log p comes from the cross-entropy signal (log p_y = -CE), so an
underflowed probability (CE > 104 in float32) cannot produce 0/0. The pairwise comparison
is a sort of the population's log LR and a binary search per example: log LR(z) <= log LR(x) -
log gamma, never an N x Z matrix.
"""

from __future__ import annotations

import numpy as np

from lira.attacks.common import AttackContext, References
from lira.signals import Signals

DEFAULT_GAMMA = 2.0
DEFAULT_OFFLINE_A = 0.3
DEFAULT_NUM_POPULATION = 10_000


def _log_mean_exp(log_values: np.ndarray, axis: int, mask: np.ndarray | None = None) -> np.ndarray:
    """log mean exp along `axis` (over the entries `mask` selects), shifted by the maximum so that
    nothing overflows or underflows to 0; plain numpy to keep temporaries few at [R, N] size."""
    if mask is not None:
        log_values = np.where(mask, log_values, -np.inf)
    peak = np.max(log_values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.sum(np.exp(log_values - peak), axis=axis)
    count = log_values.shape[axis] if mask is None else np.maximum(mask.sum(axis=axis), 1)
    with np.errstate(divide="ignore"):  # an empty selection is log 0 = -inf; the driver prevents it
        return np.log(total / count) + np.squeeze(peak, axis)


def _log_query_mean_probability(ce: np.ndarray) -> np.ndarray:
    """log mean_q p_y from CE [..., Q] -> [...]."""
    return _log_mean_exp(-np.asarray(ce, dtype=np.float64), axis=-1)


def _log_reference_mean(log_probability: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log of the mean over selected references: log_probability [R, N], mask [R, N] -> [N]."""
    return _log_mean_exp(log_probability, axis=0, mask=mask)


def choose_population(population: np.ndarray, num_population: int | None, seed: int) -> np.ndarray:
    """A reproducible subsample (sorted indices) of at most `num_population` population examples."""
    population = np.asarray(population)
    if num_population and len(population) > num_population:
        rng = np.random.default_rng(seed)
        population = np.sort(rng.choice(population, size=num_population, replace=False))
    return population


def pairwise_scores(log_ratio: np.ndarray, population: np.ndarray, gamma: float) -> np.ndarray:
    """Fraction of population z with LR(x) / LR(z) >= gamma, for every x.

    log_ratio: float [N] (log LR of every pool example); population: int [P] -> float [N].
    """
    if not gamma > 0:
        raise ValueError(f"RMIA's gamma must be positive, got {gamma}.")
    if len(population) == 0:
        raise ValueError("RMIA needs at least one population example (a pool example outside the target).")
    sorted_population = np.sort(log_ratio[population])
    counts = np.searchsorted(sorted_population, log_ratio - np.log(gamma), side="right")
    return counts / len(population)


def _rmia(log_target: np.ndarray, log_reference: np.ndarray, context, gamma, num_population):
    population = choose_population(context.population, num_population, context.seed)
    return pairwise_scores(log_target - log_reference, population, gamma)


def rmia_online(
    target: Signals,
    references: References,
    context: AttackContext,
    gamma: float = DEFAULT_GAMMA,
    num_population: int | None = DEFAULT_NUM_POPULATION,
) -> np.ndarray:
    """target.ce [N, Q], references ce [R, N, Q] -> scores [N]; p(u) over all selected references."""
    log_reference = _log_reference_mean(
        _log_query_mean_probability(references.signals.ce), references.is_in | references.is_out
    )
    return _rmia(_log_query_mean_probability(target.ce), log_reference, context, gamma, num_population)


def rmia_offline(
    target: Signals,
    references: References,
    context: AttackContext,
    gamma: float = DEFAULT_GAMMA,
    offline_a: float = DEFAULT_OFFLINE_A,
    num_population: int | None = DEFAULT_NUM_POPULATION,
) -> np.ndarray:
    """As rmia_online with OUT references only and p(u) = ((1 + a) p_out(u) + (1 - a)) / 2."""
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"RMIA's offline a must lie in [0, 1], got {offline_a}.")
    log_out = _log_reference_mean(_log_query_mean_probability(references.signals.ce), references.is_out)
    with np.errstate(divide="ignore"):  # a = 1 makes the constant term log 0 = -inf, which is right
        log_constant = np.log(1.0 - offline_a)
    log_reference = np.logaddexp(np.log1p(offline_a) + log_out, log_constant) - np.log(2.0)
    return _rmia(_log_query_mean_probability(target.ce), log_reference, context, gamma, num_population)
