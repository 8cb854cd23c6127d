"""Empirical privacy auditing: a lower bound on epsilon from an attack's scores, with
jax_privacy.auditing's CanaryScoreAuditor (scores where members score higher).

The audited examples are the run's canaries (--canaries: mislabelled pool examples) or, in a run
without any, the whole pool. For target model t, the IN scores are those of the audited examples
t trained on, the OUT scores those of the rest. Two methods:

- "one_run" (the default): Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1)
  Training Run", on each target alone. It needs what the run gives: every audited example is IN
  for a target independently with probability 1/2 (keep.npy's columns are drawn independently,
  lira/training/masks.py). Each target's bound holds with confidence 1 - significance / T, so the
  largest of the T holds with confidence 1 - significance (a union bound), and that is reported.
- "clopper_pearson": Jagielski et al. 2020 and Nasr et al. 2021's bound from the attack's TPR and
  FPR at its best threshold, Clopper-Pearson intervals, Bonferroni over thresholds, over every
  (target, example) pair pooled. It treats the pairs as independent trials, which holds exactly
  for one audited example per model; with many per model it is the field's usual estimate, not a
  proof.

A bound above a DP run's accounted epsilon means a fault in clipping, noise or accounting (or in
the attack's independence from the target's inclusion: the reference attacks fit on the other
models, whose masks are balanced with the target's, which the protocol's equal IN/OUT reference
counts neutralise; docs/dp.md).
"""

from __future__ import annotations

import numpy as np
from jax_privacy import auditing

from lira.config import AUDIT_METHODS as METHODS


def epsilon_lower_bound(scores: np.ndarray, membership: np.ndarray, method: str = "one_run",
                        significance: float = 0.05, delta: float = 1e-5) -> float:  # fmt: skip
    """scores float [T, K]: an attack's scores of the K audited examples on each of T targets
    (higher: member), membership bool [T, K] -> the epsilon lower bound at `delta`, holding with
    confidence 1 - significance (0 when the scores show nothing)."""
    if method not in METHODS:
        raise ValueError(f"Unknown audit method {method!r}; valid: {', '.join(METHODS)}.")
    if not 0 < significance < 0.5:
        raise ValueError(f"The audit's significance must be in (0, 0.5), got {significance}.")
    if not 0 < delta < 1:
        raise ValueError(f"The audit's delta must be in (0, 1), got {delta}.")
    scores = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf)
    membership = np.asarray(membership, bool)
    if scores.shape != membership.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and membership {membership.shape} must both be [T, K].")
    if method == "clopper_pearson":
        auditor = _auditor(scores.ravel(), membership.ravel())
        return 0.0 if auditor is None else float(auditor.epsilon_clopper_pearson(significance, delta))
    bounds = [0.0]
    for row, member in zip(scores, membership):
        auditor = _auditor(row, member)
        if auditor is not None:
            bounds.append(float(auditor.epsilon_one_run(significance / len(scores), delta)))
    return max(bounds)


def _auditor(scores: np.ndarray, member: np.ndarray) -> auditing.CanaryScoreAuditor | None:
    if member.all() or not member.any():
        return None  # no bound from one side alone
    return auditing.CanaryScoreAuditor(scores[member], scores[~member])


def audit(results: dict, keep: np.ndarray, examples: np.ndarray, method: str, significance: float,
          delta: float) -> dict[str, float]:  # fmt: skip
    """{attack name: epsilon lower bound} over its targets, on the pool examples `examples`
    (int [K]); results: {name: AttackResult} with scores [T, N] on targets `result.targets`."""
    return {
        name: epsilon_lower_bound(
            result.scores[:, examples], keep[result.targets][:, examples], method, significance, delta
        )
        for name, result in results.items()
    }
