"""How well an attack's scores separate members from non-members.

All figures come from the ROC over every threshold. TPR at a low FPR is the figure that matters
for privacy (Carlini et al. 2022): an attack that is confident about a few examples is a real
risk even at an AUC near 0.5. Such a figure is only measured when the FPR level is at least
1 / #non-members; below that no threshold has a non-zero FPR to compare with, and we report
`None` (JSON null) with the smallest resolvable level, never a number.

Confidence intervals are percentile bootstraps, computed from one sort of the scores: a
resample is a vector of multiplicities, and the weighted ROC of every resample comes out of
cumulative sums over the score groups, so no resample is sorted again.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from sklearn import metrics as sk_metrics

FPR_LEVELS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def level_key(level: float) -> str:
    """The JSON key of an FPR level: '1e-05', '0.0001', '0.001', '0.01', '0.1'."""
    return str(float(level))


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over every distinct threshold, starting at (0, 0)."""
    _check_both_classes(is_member)
    return sk_metrics.roc_curve(is_member, scores, drop_intermediate=False)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float, num_nonmembers: int) -> float | None:
    """TPR at the lowest threshold whose FPR is <= `level` (the best TPR the level allows).

    None when the level is below 1 / num_nonmembers and so cannot be resolved.
    """
    if level < 1.0 / num_nonmembers:
        return None
    return float(np.max(tpr[fpr <= level]))


def best_balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of (TPR + 1 - FPR) / 2."""
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def summarize(scores: np.ndarray, is_member: np.ndarray) -> dict:
    """AUC, best balanced accuracy and TPR at each FPR level of one set of scores [n]."""
    scores, is_member = np.ravel(scores), np.ravel(is_member).astype(bool)
    fpr, tpr, _ = roc_curve(scores, is_member)
    num_nonmembers = int((~is_member).sum())
    return {
        "auc": float(sk_metrics.auc(fpr, tpr)),
        "balanced_acc": best_balanced_accuracy(fpr, tpr),
        "tpr_at_fpr": {level_key(v): tpr_at_fpr(fpr, tpr, v, num_nonmembers) for v in FPR_LEVELS},
        "min_resolvable_fpr": 1.0 / num_nonmembers,
        "num_members": int(is_member.sum()),
        "num_nonmembers": num_nonmembers,
    }


def _check_both_classes(is_member: np.ndarray) -> None:
    if is_member.all() or not is_member.any():
        raise ValueError("ROC needs both members and non-members; got only one kind.")


def _multiplicities(num_items: int, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[B, num_items]: how often each item is drawn in each resample (with replacement)."""
    draws = rng.integers(0, num_items, size=(num_resamples, num_items))
    flat = (draws + num_items * np.arange(num_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=num_resamples * num_items).reshape(num_resamples, num_items)


def weighted_roc_figures(scores: np.ndarray, is_member: np.ndarray, weights: np.ndarray) -> dict:
    """AUC [B] and TPR at each FPR level [B] of B weighted copies of one set of scores.

    scores, is_member: [n]; weights: [B, n] (bootstrap multiplicities). Equal to the ROC of the
    data with item i repeated weights[b, i] times; ties count half in the AUC, as in sklearn.
    """
    _, group = np.unique(-scores, return_inverse=True)  # group 0 holds the highest score
    num_groups = int(group.max()) + 1
    members = scipy.sparse.csr_matrix(
        (is_member.astype(np.float64), (np.arange(len(scores)), group)), shape=(len(scores), num_groups)
    )
    nonmembers = scipy.sparse.csr_matrix(
        ((~is_member).astype(np.float64), (np.arange(len(scores)), group)), shape=(len(scores), num_groups)
    )
    positive = np.asarray((members.T @ weights.T).T)  # [B, G] member weight per score group
    negative = np.asarray((nonmembers.T @ weights.T).T)
    cumulative_tp, cumulative_fp = np.cumsum(positive, axis=1), np.cumsum(negative, axis=1)
    total_positive, total_negative = cumulative_tp[:, -1:], cumulative_fp[:, -1:]
    negatives_below = total_negative - cumulative_fp
    auc = (
        np.sum(positive * (negatives_below + 0.5 * negative), axis=1)
        / (total_positive * total_negative)[:, 0]
    )
    tpr, fpr = cumulative_tp / total_positive, cumulative_fp / total_negative
    at_level = {v: np.max(np.where(fpr <= v, tpr, 0.0), axis=1) for v in FPR_LEVELS}
    return {"auc": auc, "tpr_at_fpr": at_level}


def bootstrap_intervals(
    scores: np.ndarray, membership: np.ndarray, unit: str, num_resamples: int, seed: int, chunk: int = 25
) -> dict | None:
    """95% percentile intervals of the pooled AUC and TPR at each FPR level.

    scores, membership: [T, N]. unit = "examples" resamples the N examples (the same draw for
    every target, which keeps an example's scores under different targets together);
    "targets" resamples whole targets (None when T < 2). Levels the point estimate cannot resolve
    get None.
    """
    num_targets, num_examples = scores.shape
    if num_resamples <= 0 or (unit == "targets" and num_targets < 2):
        return None
    rng = np.random.default_rng(seed)
    draws = {"examples": num_examples, "targets": num_targets}[unit]
    aucs, tprs = [], {v: [] for v in FPR_LEVELS}
    for start in range(0, num_resamples, chunk):
        counts = _multiplicities(draws, min(chunk, num_resamples - start), rng).astype(np.float64)
        if unit == "examples":
            weights = np.tile(counts, (1, num_targets))
        else:
            weights = np.repeat(counts, num_examples, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample without members is NaN
            figures = weighted_roc_figures(scores.ravel(), membership.ravel().astype(bool), weights)
        aucs.append(figures["auc"])
        for v in FPR_LEVELS:
            tprs[v].append(figures["tpr_at_fpr"][v])
    interval = lambda values: [float(x) for x in np.nanpercentile(np.concatenate(values), [2.5, 97.5])]
    num_nonmembers = int((~membership.astype(bool)).sum())
    return {
        "auc": interval(aucs),
        "tpr_at_fpr": {
            level_key(v): interval(tprs[v]) if v >= 1.0 / num_nonmembers else None for v in FPR_LEVELS
        },
    }


def attack_metrics(
    scores: np.ndarray, membership: np.ndarray, num_resamples: int = 200, seed: int = 0
) -> dict:
    """The metrics.json entry of one attack. scores float [T, N]; membership bool [T, N].

    Top-level figures pool all T targets' scores; `per_target` lists each target's own; `ci95`
    holds bootstrap intervals over examples and over targets. Keys (None = JSON null):

        auc, balanced_acc: float
        tpr_at_fpr: {"1e-05": float | None, "0.0001": .., "0.001": .., "0.01": .., "0.1": ..}
        min_resolvable_fpr: float (1 / num_nonmembers); num_members, num_nonmembers: int
        per_target: {"auc": [T], "balanced_acc": [T], "tpr_at_fpr": {level: [T] (None inside)},
                     "min_resolvable_fpr": [T]}
        ci95: {"examples": {"auc": [low, high], "tpr_at_fpr": {level: [low, high] | None}} | None,
               "targets": same | None (fewer than 2 targets, or no bootstrap)}
        bootstrap_resamples: int
    """
    scores = np.asarray(scores, dtype=np.float64)
    membership = np.asarray(membership, dtype=bool)
    pooled = summarize(scores, membership)
    per_target = [summarize(s, m) for s, m in zip(scores, membership)]
    pooled["per_target"] = {
        "auc": [t["auc"] for t in per_target],
        "balanced_acc": [t["balanced_acc"] for t in per_target],
        "tpr_at_fpr": {level_key(v): [t["tpr_at_fpr"][level_key(v)] for t in per_target] for v in FPR_LEVELS},
        "min_resolvable_fpr": [t["min_resolvable_fpr"] for t in per_target],
    }
    pooled["ci95"] = {
        unit: bootstrap_intervals(scores, membership, unit, num_resamples, seed)
        for unit in ("examples", "targets")
    }
    pooled["bootstrap_resamples"] = int(num_resamples)
    return pooled
