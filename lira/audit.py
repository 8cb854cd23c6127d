"""Empirical privacy auditing: a lower bound on epsilon from attacks' scores, with
jax_privacy.auditing's CanaryScoreAuditor (scores where members score higher).

The audited examples are the run's canaries (--canaries: mislabelled pool examples) or, in a run
without any, the whole pool. For target model t, the IN scores are those of the audited examples
t trained on, the OUT scores those of the rest. Two methods:

- "one_run" (the default): Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1)
  Training Run", on each target alone (the library takes the best number of guesses with a
  Bonferroni correction over them). Its premise: each canary is IN for the target independently
  with probability 1/2, and the guesses depend on the target's output alone. keep.npy's canary
  columns are coin flips per model (lira/run/masks.py) and the protocol never lets a canary's
  membership choose its references or RMIA's population (lira/attacks/protocol.py), so the bound
  is a theorem there. On the pool of a run without canaries it is not: balanced masks let the
  references' masks reveal the target's membership (`premise` says which case a run is).
- "clopper_pearson": Jagielski et al. 2020 and Nasr et al. 2021's bound from the attack's TPR and
  FPR at its best threshold, Clopper-Pearson intervals, Bonferroni over thresholds, over every
  (target, example) pair pooled. It treats the pairs as independent trials, which holds exactly
  for one audited example per model; with many per model it is the field's usual estimate, not a
  proof.

The choice of the largest bound is corrected too: with A attacks and T targets, each one-run bound
is taken at significance alpha / (A T) (each pooled Clopper-Pearson bound at alpha / A), so every
attack's reported bound, and hence their maximum, holds with confidence 1 - alpha together (a
union bound). Auditing one attack chosen in advance (the attack stage with --attacks=NAME) pays no
correction for the others.
"""

from __future__ import annotations

import numpy as np
from jax_privacy import auditing

from lira.config import AUDIT_METHODS as METHODS


def epsilon_lower_bound(scores: np.ndarray, membership: np.ndarray, method: str = "one_run",
                        significance: float = 0.05, delta: float = 1e-5) -> float:  # fmt: skip
    """scores float [T, K]: an attack's scores of the K audited examples on each of T targets
    (higher: member), membership bool [T, K] -> the epsilon lower bound at `delta`, holding with
    confidence 1 - significance (0 when the scores show nothing). one_run takes each target's
    bound at significance / T and returns the largest."""
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
          delta: float) -> dict:  # fmt: skip
    """The bounds of all attacks, corrected for the choice among them (module docstring), on the
    pool examples `examples` (int [K]); results: {name: AttackResult} with scores [T, N] on
    targets `result.targets`. Returns {"bounds": {attack: bound}, "epsilon_lower_bound": the
    largest, "attack": whose (None when all are 0), "correction": what each bound was taken at}."""
    per_attack = significance / max(len(results), 1)
    bounds = {
        name: epsilon_lower_bound(
            result.scores[:, examples], keep[result.targets][:, examples], method, per_attack, delta
        )
        for name, result in results.items()
    }
    best = max(bounds, key=bounds.get) if bounds else None
    num_targets = len(next(iter(results.values())).targets) if results else 0
    if method == "one_run":
        per_target = per_attack / max(num_targets, 1)
        correction = (
            f"Bonferroni over {len(results)} attacks and {num_targets} targets: each target's bound at "
            f"significance {significance:g} / {len(results) * num_targets} = {per_target:.3g}"
        )
    else:
        correction = (
            f"Bonferroni over {len(results)} attacks: each attack's bound at significance {per_attack:.3g}"
        )
    return {
        "bounds": bounds,
        "epsilon_lower_bound": bounds[best] if best else 0.0,
        "attack": best if best and bounds[best] > 0 else None,
        "correction": correction,
    }


def premise(method: str, keep: np.ndarray, canaries: np.ndarray, pkeep: float) -> str | None:
    """None when the one-run bound is a theorem for this run (module docstring), else why not.
    keep bool [M, N]; canaries int [K] (empty: the pool is audited); pkeep: the run's --pkeep."""
    if method != "one_run":
        return "Clopper-Pearson over pooled (target, example) pairs treats them as independent trials"
    if not len(canaries):
        return (
            "no canaries: on the pool's balanced masks the references' masks reveal the target's membership"
        )
    if pkeep != 0.5:
        return f"canaries are IN with probability --pkeep={pkeep:g}; the one-run bound assumes 1/2"
    if len(canaries) > 1 and np.all(keep[:, canaries].sum(axis=0) == round(pkeep * keep.shape[0])):
        return (
            "the canary columns are balanced (a run trained before lira drew them independently): retrain it"
        )
    return None
