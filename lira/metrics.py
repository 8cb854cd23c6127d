"""How well an attack's scores separate members from non-members.

All figures come from the ROC over every threshold. TPR at a low FPR is the figure that matters
for privacy (Carlini et al. 2022): an attack that is confident about a few examples is a real
risk even at an AUC near 0.5. Such a figure is only reported where the level allows at least
k = MIN_FALSE_POSITIVES false positives (level * #non-members >= k). With fewer, the threshold
sits among the few highest non-member scores: its true FPR is about (m + 1) / #non-members for
m allowed, not m / #non-members, so the estimate is biased upward and its interval misses the
truth, almost always from above; k comes from the simulation in bench/tpr_resolution.py
(docs/results/tpr_resolution). Below k such a level is `None` (JSON null), never a number, with
the pool or number of targets that would resolve it.

Confidence intervals are percentile bootstraps, computed from one sort of the scores: a
resample is a vector of multiplicities, and the weighted ROC of every resample comes out of
cumulative sums over the score groups, so no resample is sorted again. Two attacks are compared
by a paired bootstrap of their difference (both weighed by the same resamples); "a beats b" is
claimed only when that interval lies above 0.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator

import numpy as np
from sklearn import metrics as sk_metrics

FPR_LEVELS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
MIN_FALSE_POSITIVES = 10  # the smallest k whose intervals cover ~95%: docs/results/tpr_resolution


def level_key(level: float) -> str:
    """The JSON key of an FPR level: '1e-05', '0.0001', '0.001', '0.01', '0.1'."""
    return str(float(level))


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over every distinct threshold, starting at (0, 0)."""
    _check_both_classes(is_member)
    return sk_metrics.roc_curve(is_member, scores, drop_intermediate=False)


def resolvable(level: float, num_nonmembers: int, min_false_positives: int = MIN_FALSE_POSITIVES) -> bool:
    """Whether TPR at `level` is reported: the level allows >= min_false_positives false positives
    (at least one, below which no threshold has a non-zero FPR to compare with)."""
    return level * num_nonmembers >= max(min_false_positives, 1) * (1 - 1e-9)  # k / n * n may round below k


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float, num_nonmembers: int,
               min_false_positives: int = MIN_FALSE_POSITIVES) -> float | None:  # fmt: skip
    """TPR at the lowest threshold whose FPR is <= `level` (the best TPR the level allows), or
    None where the level is not `resolvable`."""
    if not resolvable(level, num_nonmembers, min_false_positives):
        return None
    return float(np.max(tpr[fpr <= level]))


def what_would_resolve(level: float, num_nonmembers: int, num_targets: int, num_examples: int,
                       min_false_positives: int = MIN_FALSE_POSITIVES) -> dict:  # fmt: skip
    """{"needs_nonmembers", "needs_targets", "needs_pool_size"}: the pooled non-members a level
    needs, and the targets (at this pool) or the pool size N (at these targets, with this share of
    non-members) that would give them. num_nonmembers are pooled over num_targets targets of
    num_examples examples each."""
    needs = math.ceil(round(max(min_false_positives, 1) / level, 6))
    return {
        "needs_nonmembers": needs,
        "needs_targets": math.ceil(round(needs * num_targets / num_nonmembers, 6)),
        "needs_pool_size": math.ceil(round(needs * num_examples / num_nonmembers, 6)),
    }


def best_balanced_accuracy(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """max over thresholds of (TPR + 1 - FPR) / 2."""
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def summarize(
    scores: np.ndarray, is_member: np.ndarray, min_false_positives: int = MIN_FALSE_POSITIVES
) -> dict:
    """AUC, best balanced accuracy and TPR at each FPR level of the scores pooled.

    scores, is_member: [T, N] (T targets' scores, pooled) or [n] (one target). A level that is
    not `resolvable` is None in tpr_at_fpr and has a `what_would_resolve` entry in
    tpr_at_fpr_unresolvable; min_resolvable_fpr is the smallest level that would be reported.
    """
    num_targets, num_examples = np.shape(scores) if np.ndim(scores) == 2 else (1, np.size(scores))
    scores, is_member = np.ravel(scores), np.ravel(is_member).astype(bool)
    fpr, tpr, _ = roc_curve(scores, is_member)
    num_nonmembers, least = int((~is_member).sum()), max(int(min_false_positives), 1)
    return {
        "auc": float(sk_metrics.auc(fpr, tpr)),
        "balanced_acc": best_balanced_accuracy(fpr, tpr),
        "tpr_at_fpr": {level_key(v): tpr_at_fpr(fpr, tpr, v, num_nonmembers, least) for v in FPR_LEVELS},
        "tpr_at_fpr_unresolvable": {
            level_key(v): what_would_resolve(v, num_nonmembers, num_targets, num_examples, least)
            for v in FPR_LEVELS
            if not resolvable(v, num_nonmembers, least)
        },
        "min_resolvable_fpr": least / num_nonmembers,
        "min_false_positives": least,
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


@dataclasses.dataclass(frozen=True)
class Ranking:
    """One sort of a set of scores, reused by every resample: items by decreasing score
    (`order` [n]), where each group of equal scores starts in that order (`starts` [G]), and
    membership in that order."""

    order: np.ndarray
    starts: np.ndarray
    is_member: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, is_member: np.ndarray) -> Ranking:
        order = np.argsort(-scores, kind="stable")
        ordered = scores[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        return cls(order, starts, is_member[order])


def weighted_roc_figures(scores: np.ndarray, is_member: np.ndarray, weights: np.ndarray,
                         ranking: Ranking | None = None, levels=FPR_LEVELS) -> dict:  # fmt: skip
    """AUC [B] and TPR at each FPR level [B] of B weighted copies of one set of scores.

    scores, is_member: [n]; weights: [B, n] (bootstrap multiplicities); ranking: the scores'
    Ranking, when the caller reuses it over several calls. Equal to the ROC of the data with
    item i repeated weights[b, i] times; ties count half in the AUC, as in sklearn. The weights
    of each group of equal scores are summed in one reduceat over the sorted items. TPRs are
    given at every level, resolvable or not: the caller decides what to report.
    """
    ranking = ranking or Ranking.of(scores, is_member)
    return _sorted_figures(weights[:, ranking.order], ranking, levels)


def _sorted_figures(ordered: np.ndarray, ranking: Ranking, levels=FPR_LEVELS) -> dict:
    """weighted_roc_figures of weights already in score order: ordered [B, n] (float32 where
    exact, see `_resample_weights`)."""
    positive = np.where(ranking.is_member, ordered, 0)
    cumulative_tp = np.cumsum(positive, axis=1)
    cumulative_fp = np.cumsum(ordered, axis=1)
    cumulative_fp -= cumulative_tp
    if len(ranking.starts) < ordered.shape[1]:  # ties: sums over each group of equal scores
        ends = np.r_[ranking.starts[1:] - 1, ordered.shape[1] - 1]
        cumulative_tp, cumulative_fp = cumulative_tp[:, ends], cumulative_fp[:, ends]
        positive = np.diff(cumulative_tp, axis=1, prepend=0)
        negative = np.diff(cumulative_fp, axis=1, prepend=0)
        # sum_g pos_g (negatives below g + neg_g / 2) = P N - sum_g pos_g (negatives up to g - neg_g / 2)
        above = np.einsum("bg,bg->b", positive, cumulative_fp - 0.5 * negative, dtype=np.float64)
    else:  # one item a group: an item is a member or not, so pos_i neg_i = 0
        above = np.einsum("bg,bg->b", positive, cumulative_fp, dtype=np.float64)
    total_positive, total_negative = (
        cumulative_tp[:, -1].astype(np.float64),
        cumulative_fp[:, -1].astype(np.float64),
    )
    auc = (total_positive * total_negative - above) / (total_positive * total_negative)
    # fpr and tpr rise along g: the best TPR with FPR <= v is at the last g with FPR <= v.
    last = np.stack([np.searchsorted(row, np.asarray(levels) * total, side="right") - 1
                     for row, total in zip(cumulative_fp.astype(np.float64), total_negative)])  # fmt: skip
    reached = np.take_along_axis(cumulative_tp, np.maximum(last, 0), axis=1)  # [B, levels]
    tpr = np.where(last >= 0, reached / total_positive[:, None], 0.0)
    return {"auc": auc, "tpr_at_fpr": {v: tpr[:, i] for i, v in enumerate(levels)}}


BOOTSTRAP_UNITS = ("examples", "targets", "both")


def _resample_counts(
    num_targets: int, num_examples: int, unit: str, num_resamples: int, seed: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (count_targets [b, T], count_examples [b, N]) (b <= chunk; num_resamples rows in
    all): how often each target and each example is drawn. The weight of (target t, example n)
    is their product, so a unit that does not resample one of them gives it counts of 1.

    "both" draws the two independently (every drawn copy of a target carries every drawn copy of
    an example): within a chunk the target counts first, then the example counts. A weight
    depends only on the shapes, the unit, the seed and the chunk, never on the scores, so two
    attacks see the same resamples. Counts are float32: exact for the integers they hold.
    """
    if unit not in BOOTSTRAP_UNITS:
        raise ValueError(f"bootstrap unit must be one of {', '.join(BOOTSTRAP_UNITS)}; got {unit!r}")
    rng = np.random.default_rng(seed)
    for start in range(0, num_resamples, chunk):
        size = min(chunk, num_resamples - start)
        targets = np.ones((size, num_targets), np.float32)
        examples = np.ones((size, num_examples), np.float32)
        if unit in ("targets", "both"):
            targets = _multiplicities(num_targets, size, rng).astype(np.float32)
        if unit in ("examples", "both"):
            examples = _multiplicities(num_examples, size, rng).astype(np.float32)
        yield targets, examples


def _resample_weights(
    num_targets: int, num_examples: int, unit: str, num_resamples: int, seed: int, chunk: int
) -> Iterator[np.ndarray]:
    """The weights [b, T * N] of `_resample_counts`, of (t, n) at t * N + n."""
    for targets, examples in _resample_counts(num_targets, num_examples, unit, num_resamples, seed, chunk):
        yield (targets[:, :, None] * examples[:, None, :]).reshape(len(targets), -1).astype(np.float64)


def bootstrap_figures(
    score_sets: list[np.ndarray],
    membership: np.ndarray,
    unit: str,
    num_resamples: int,
    seed: int,
    chunk: int = 25,
    levels=FPR_LEVELS,
) -> list[dict]:
    """Pooled AUC [B] and TPR at each FPR level [B] of every resample, for each set of scores.

    score_sets: K arrays [T, N]; membership: [T, N]. Every set is weighed by the same resamples,
    which is what pairs two attacks. A resample without members or non-members gives NaN.
    Returns K dicts {"auc": [B], "tpr_at_fpr": {level (float): [B]}}, at every level.
    """
    num_targets, num_examples = membership.shape
    is_member = np.ravel(membership).astype(bool)
    figures = [{"auc": [], "tpr_at_fpr": {v: [] for v in levels}} for _ in score_sets]
    rankings = [Ranking.of(np.ravel(scores), is_member) for scores in score_sets]
    # Each item's target and example, in each ranking's score order: the weights in that order
    # are two gathers from the small count tables, never a [b, T * N] array put in order.
    items = [np.divmod(ranking.order, num_examples) for ranking in rankings]
    exact = num_targets * num_examples < 2**24  # a resample's weights sum to T * N: float32 sums stay exact
    for targets, examples in _resample_counts(num_targets, num_examples, unit, num_resamples, seed, chunk):
        if not exact:
            targets, examples = targets.astype(np.float64), examples.astype(np.float64)
        for ranking, (target, example), collected in zip(rankings, items, figures):
            with np.errstate(invalid="ignore", divide="ignore"):  # a resample without members is NaN
                chunk_figures = _sorted_figures(targets[:, target] * examples[:, example], ranking, levels)
            collected["auc"].append(chunk_figures["auc"])
            for v in levels:
                collected["tpr_at_fpr"][v].append(chunk_figures["tpr_at_fpr"][v])
    return [
        {
            "auc": np.concatenate(collected["auc"]),
            "tpr_at_fpr": {v: np.concatenate(collected["tpr_at_fpr"][v]) for v in levels},
        }
        for collected in figures
    ]


def _interval(values: np.ndarray) -> list[float]:
    return [float(x) for x in np.nanpercentile(values, [2.5, 97.5])]


def _too_few_targets(unit: str, num_targets: int) -> bool:
    """Whether `unit` resamples targets but there is only one (every resample would be it)."""
    return unit in ("targets", "both") and num_targets < 2


def bootstrap_intervals(
    scores: np.ndarray,
    membership: np.ndarray,
    unit: str,
    num_resamples: int,
    seed: int,
    chunk: int = 25,
    min_false_positives: int = MIN_FALSE_POSITIVES,
    levels=FPR_LEVELS,
) -> dict | None:
    """95% percentile intervals of the pooled AUC and TPR at each FPR level (of `levels`).

    scores, membership: [T, N]. unit = "examples" resamples the N examples (the same draw for
    every target, which keeps an example's scores under different targets together);
    "targets" resamples whole targets; "both" resamples targets and, independently, examples,
    so the interval covers a fresh target model and a fresh pool at once (the honest one when
    the claim is about the attack, not about these models or these examples). "targets" and
    "both" are None when T < 2. Levels that are not `resolvable` get None.
    """
    if num_resamples <= 0 or _too_few_targets(unit, scores.shape[0]):
        return None
    (figures,) = bootstrap_figures([scores], membership, unit, num_resamples, seed, chunk, levels)
    num_nonmembers = int((~membership.astype(bool)).sum())
    return {
        "auc": _interval(figures["auc"]),
        "tpr_at_fpr": {
            level_key(v): _interval(figures["tpr_at_fpr"][v])
            if resolvable(v, num_nonmembers, min_false_positives)
            else None
            for v in levels
        },
    }


def paired_difference(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    membership: np.ndarray,
    num_resamples: int = 1000,
    seed: int = 0,
    unit: str = "both",
    min_false_positives: int = MIN_FALSE_POSITIVES,
) -> dict:
    """Attack a minus attack b, with a paired percentile bootstrap of the difference.

    scores_a, scores_b, membership: [T, N]. Both attacks are weighed by the same resamples, so
    the noise they share (which targets, which examples) cancels and the interval is that of the
    difference itself, not two overlapping intervals. "A beats B" should be said only when the
    interval excludes 0 (see `beats`). Returns, None marking an FPR level that is not `resolvable`:

        auc: {"difference": float (pooled, as `summarize`), "ci95": [low, high] | None,
              "p_a_better": float | None (the fraction of resamples where a > b)}
        tpr_at_fpr: {level: same | None}
        unit: str; resamples: int

    ci95 and p_a_better are None without resamples, or when `unit` resamples targets and T < 2.
    """
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    membership = np.asarray(membership, dtype=bool)
    point_a = summarize(scores_a, membership, min_false_positives)
    point_b = summarize(scores_b, membership, min_false_positives)
    differences = None  # figure (AUC or an FPR level) -> a - b in each resample [B]
    if num_resamples > 0 and not _too_few_targets(unit, membership.shape[0]):
        figures_a, figures_b = bootstrap_figures([scores_a, scores_b], membership, unit, num_resamples, seed)
        differences = {v: figures_a["tpr_at_fpr"][v] - figures_b["tpr_at_fpr"][v] for v in FPR_LEVELS}
        differences["auc"] = figures_a["auc"] - figures_b["auc"]

    def entry(a: float | None, b: float | None, figure) -> dict | None:
        if a is None:  # the same membership leaves the same levels unresolvable for b
            return None
        if differences is None:
            return {"difference": a - b, "ci95": None, "p_a_better": None}
        resampled = differences[figure]
        finite = resampled[np.isfinite(resampled)]
        return {"difference": a - b, "ci95": _interval(resampled), "p_a_better": float(np.mean(finite > 0))}

    return {
        "auc": entry(point_a["auc"], point_b["auc"], "auc"),
        "tpr_at_fpr": {
            level_key(v): entry(point_a["tpr_at_fpr"][level_key(v)], point_b["tpr_at_fpr"][level_key(v)], v)
            for v in FPR_LEVELS
        },
        "unit": unit,
        "resamples": int(num_resamples),
    }


def beats(difference: dict | None) -> bool:
    """Whether a `paired_difference` entry says attack a beats attack b: its 95% interval lies
    above 0. A higher point estimate alone is not a win; an unmeasured figure never is."""
    return difference is not None and difference["ci95"] is not None and difference["ci95"][0] > 0


def attack_metrics(
    scores: np.ndarray,
    membership: np.ndarray,
    num_resamples: int = 200,
    seed: int = 0,
    min_false_positives: int = MIN_FALSE_POSITIVES,
) -> dict:
    """The metrics.json entry of one attack. scores float [T, N]; membership bool [T, N].

    Top-level figures pool all T targets' scores; `per_target` lists each target's own; `ci95`
    holds bootstrap intervals over examples, over targets, and over both at once (see
    `bootstrap_intervals`). A level is reported only where it allows min_false_positives
    false positives (`resolvable`). Keys (None = JSON null):

        auc, balanced_acc: float
        tpr_at_fpr: {"1e-05": float | None, "0.0001": .., "0.001": .., "0.01": .., "0.1": ..}
        tpr_at_fpr_unresolvable: {level: {"needs_nonmembers", "needs_targets", "needs_pool_size"}}
            for each None level (see `what_would_resolve`)
        min_resolvable_fpr: float (min_false_positives / num_nonmembers); min_false_positives,
        num_members, num_nonmembers: int
        per_target: {"auc": [T], "balanced_acc": [T], "tpr_at_fpr": {level: [T] (None inside)},
                     "min_resolvable_fpr": [T]}
        ci95: {"examples": {"auc": [low, high], "tpr_at_fpr": {level: [low, high] | None}} | None,
               "targets": same | None (fewer than 2 targets, or no bootstrap),
               "both": same | None (as "targets")}
        bootstrap_resamples: int
    """
    scores = np.asarray(scores, dtype=np.float64)
    membership = np.asarray(membership, dtype=bool)
    pooled = summarize(scores, membership, min_false_positives)
    per_target = [summarize(s, m, min_false_positives) for s, m in zip(scores, membership)]
    pooled["per_target"] = {
        "auc": [t["auc"] for t in per_target],
        "balanced_acc": [t["balanced_acc"] for t in per_target],
        "tpr_at_fpr": {level_key(v): [t["tpr_at_fpr"][level_key(v)] for t in per_target] for v in FPR_LEVELS},
        "min_resolvable_fpr": [t["min_resolvable_fpr"] for t in per_target],
    }
    pooled["ci95"] = {
        unit: bootstrap_intervals(
            scores, membership, unit, num_resamples, seed, min_false_positives=min_false_positives
        )
        for unit in BOOTSTRAP_UNITS
    }
    pooled["bootstrap_resamples"] = int(num_resamples)
    return pooled


# --- Per example and per class ---------------------------------------------------------------------


def catch_fpr(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """float [T, N]: for member (t, j), the fraction of target t's non-members scoring >= its
    score; NaN where j is not a member of target t. scores float, membership bool, both [T, N]."""
    out = np.full(scores.shape, np.nan)
    for t in range(scores.shape[0]):
        nonmember = np.sort(scores[t, ~membership[t]])
        member = membership[t]
        above = nonmember.size - np.searchsorted(nonmember, scores[t, member], side="left")
        out[t, member] = above / max(nonmember.size, 1)
    return out


def rank_examples(scores: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(catch_fpr [T, N], median [N], order [N]) of scores float and membership bool, both [T, N].

    median[j] is the median of j's catch FPR over the targets that trained on it (NaN if none);
    order ranks examples most exposed first: by that median (NaN last), ties broken by j's mean
    score where it is a member, higher first."""
    fprs = catch_fpr(scores, membership)
    with warnings.catch_warnings():  # examples no target trained on are all-NaN columns, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(fprs, axis=0)
        member_score = np.nanmean(np.where(membership, scores, np.nan), axis=0)
    order = np.lexsort((-np.nan_to_num(member_score, nan=-np.inf), np.nan_to_num(median, nan=np.inf)))
    return fprs, median, order


def pooled_threshold(scores: np.ndarray, is_member: np.ndarray, level: float) -> float:
    """The threshold whose rule `score > threshold` flags at most `level` of the non-members
    and, of such rules, flags the most (the TPR-at-FPR convention of lira.metrics)."""
    nonmember = np.sort(scores[~is_member])[::-1]
    allowed = int(np.floor(level * nonmember.size))
    return -np.inf if allowed >= nonmember.size else float(nonmember[allowed])


def per_class_risk(scores: np.ndarray, membership: np.ndarray, labels: np.ndarray) -> dict:
    """Per-class TPR and FPR at one global threshold, and per-class AUC, of one attack.

    scores, membership: [T, N]; labels: [N]. The threshold is set on all non-members pooled at
    FPR 1% (10% where 1% is not `resolvable`: fewer than 100 x k non-members), so a
    class with a higher TPR there is one an attacker with a single rule exposes more; its FPR
    shows whether that comes with more false alarms too. Returns {class: {"tpr", "fpr", "auc"}}
    and the level as result["level"].
    """
    is_member = membership.ravel()
    flat_scores, flat_labels = scores.ravel(), np.broadcast_to(labels, scores.shape).ravel()
    level = 0.01 if resolvable(0.01, int((~is_member).sum())) else 0.1
    flagged = flat_scores > pooled_threshold(flat_scores, is_member, level)
    risk = {}
    for c in np.unique(labels):
        in_class = flat_labels == c
        members, nonmembers = in_class & is_member, in_class & ~is_member
        if not members.any() or not nonmembers.any():
            continue
        fpr, tpr, _ = sk_metrics.roc_curve(is_member[in_class], flat_scores[in_class])  # as the figure had it
        risk[int(c)] = {
            "tpr": float(flagged[members].mean()),
            "fpr": float(flagged[nonmembers].mean()),
            "auc": float(sk_metrics.auc(fpr, tpr)),
        }
    return {**risk, "level": level}
