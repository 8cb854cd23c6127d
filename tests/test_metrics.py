"""Metrics against hand-computed cases and against sklearn on repeated data."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from lira import metrics

# 3 members, 10 non-members. Worked by hand:
#   AUC: member 10 beats 10 non-members, 9 beats 10, 5 beats 7 -> 27 / 30 = 0.9.
#   TPR at FPR <= 0.1: thresholds 10 (1/3, 0), 9 (2/3, 0), 8 (2/3, 0.1) -> 2/3.
#   balanced accuracy: threshold 9 gives (2/3 + 1) / 2 = 0.833; threshold 5 gives (1 + 0.7) / 2 = 0.85.
MEMBER_SCORES = [10.0, 9.0, 5.0]
NONMEMBER_SCORES = [8.0, 7.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0]


def hand_case():
    scores = np.array(MEMBER_SCORES + NONMEMBER_SCORES)
    return scores, np.arange(len(scores)) < len(MEMBER_SCORES)


def test_summary_of_a_hand_computed_case():
    summary = metrics.summarize(*hand_case(), min_false_positives=1)
    assert summary["auc"] == pytest.approx(0.9)
    assert summary["balanced_acc"] == pytest.approx(0.85)
    assert summary["tpr_at_fpr"]["0.1"] == pytest.approx(2 / 3)
    assert summary["min_resolvable_fpr"] == pytest.approx(0.1)
    # Below 1 / 10 non-members no threshold can be told apart from FPR 0: not measured, so None.
    assert summary["tpr_at_fpr"]["0.01"] is None and summary["tpr_at_fpr"]["1e-05"] is None
    assert list(summary["tpr_at_fpr"]) == ["1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert list(summary["tpr_at_fpr_unresolvable"]) == ["1e-05", "0.0001", "0.001", "0.01"]


def test_a_level_is_reported_only_with_k_false_positives_allowed():
    # 10 non-members: 10% allows one false positive, below the default k, so it is not reported.
    summary = metrics.summarize(*hand_case())
    assert metrics.MIN_FALSE_POSITIVES > 1 and summary["min_false_positives"] == metrics.MIN_FALSE_POSITIVES
    assert all(value is None for value in summary["tpr_at_fpr"].values())
    assert summary["min_resolvable_fpr"] == pytest.approx(metrics.MIN_FALSE_POSITIVES / 10)
    # Exactly k allowed counts, k - 1 does not, whatever the rounding of k / n * n.
    for k, n in [(10, 20800), (3, 7), (15, 41600), (10, 22400)]:
        assert metrics.resolvable(k / n, n, k) and not metrics.resolvable((k - 1) / n, n, k)
    assert metrics.resolvable(1e-3, 10_000, 10) and not metrics.resolvable(1e-3, 9_999, 10)


def test_what_would_resolve_a_level_against_a_direct_count():
    # 8 targets, 5,200 examples each, 2,600 non-members each: 1e-5 at k = 10 needs 1e6 non-members.
    membership = np.zeros((8, 5200), bool)
    membership[:, :2600] = True
    scores = np.random.default_rng(0).normal(size=membership.shape) + membership
    summary = metrics.summarize(scores, membership, min_false_positives=10)
    assert summary["tpr_at_fpr"]["0.001"] is not None and summary["tpr_at_fpr"]["0.0001"] is None
    assert set(summary["tpr_at_fpr_unresolvable"]) == {"1e-05", "0.0001"}
    for key, entry in summary["tpr_at_fpr_unresolvable"].items():
        level = float(key)
        targets = next(t for t in range(1, 10**6) if level * 2600 * t >= 10)
        pool = next(n for n in range(5200, 10**7, 2) if level * 8 * n / 2 >= 10)
        assert entry == {
            "needs_nonmembers": round(10 / level),
            "needs_targets": targets,
            "needs_pool_size": pool,
        }
        # What it names does resolve the level, and one target or two examples fewer would not.
        assert metrics.resolvable(level, 2600 * targets) and not metrics.resolvable(
            level, 2600 * (targets - 1)
        )
        assert metrics.resolvable(level, 4 * pool) and not metrics.resolvable(level, 4 * (pool - 2))


def test_tpr_at_fpr_takes_the_best_tpr_at_or_below_the_level():
    # FPR exactly at the level counts (<=); one more non-member above the threshold does not.
    fpr = np.array([0.0, 0.0, 0.05, 0.1, 0.15, 1.0])
    tpr = np.array([0.0, 0.2, 0.3, 0.6, 0.9, 1.0])
    assert metrics.tpr_at_fpr(fpr, tpr, 0.1, num_nonmembers=20, min_false_positives=1) == 0.6
    assert metrics.tpr_at_fpr(fpr, tpr, 0.01, num_nonmembers=20, min_false_positives=1) is None
    assert metrics.tpr_at_fpr(fpr, tpr, 0.05, num_nonmembers=20, min_false_positives=1) == 0.3
    assert metrics.tpr_at_fpr(fpr, tpr, 0.1, num_nonmembers=20, min_false_positives=3) is None


def test_tied_scores_count_half_and_match_sklearn():
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    is_member = np.array([True, False, True, False])
    assert metrics.summarize(scores, is_member)["auc"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    scores, is_member = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.4
    assert metrics.summarize(scores, is_member)["auc"] == pytest.approx(roc_auc_score(is_member, scores))


def test_weighted_roc_equals_the_roc_of_repeated_data():
    rng = np.random.default_rng(1)
    scores, is_member = rng.integers(0, 30, 300).astype(float), rng.random(300) < 0.5
    weights = rng.integers(0, 3, size=(4, 300)).astype(float)
    figures = metrics.weighted_roc_figures(scores, is_member, weights)
    for b in range(4):
        repeated = np.repeat(np.arange(300), weights[b].astype(int))
        expected = metrics.summarize(scores[repeated], is_member[repeated], min_false_positives=1)
        assert figures["auc"][b] == pytest.approx(expected["auc"])
        assert figures["tpr_at_fpr"][0.1][b] == pytest.approx(expected["tpr_at_fpr"]["0.1"])
        assert figures["tpr_at_fpr"][0.01][b] == pytest.approx(expected["tpr_at_fpr"]["0.01"])


def test_attack_metrics_schema_and_intervals():
    rng = np.random.default_rng(2)
    membership = rng.random((3, 2000)) < 0.5
    scores = rng.normal(size=(3, 2000)) + membership
    result = metrics.attack_metrics(scores, membership, num_resamples=300, seed=0)
    assert result["auc"] == pytest.approx(roc_auc_score(membership.ravel(), scores.ravel()))
    assert len(result["per_target"]["auc"]) == 3
    assert result["per_target"]["auc"][1] == pytest.approx(roc_auc_score(membership[1], scores[1]))
    low, high = result["ci95"]["examples"]["auc"]
    assert low < result["auc"] < high and high - low < 0.03  # sd of this AUC is ~0.005
    low, high = result["ci95"]["examples"]["tpr_at_fpr"]["0.01"]
    assert low <= result["tpr_at_fpr"]["0.01"] <= high
    assert result["ci95"]["examples"]["tpr_at_fpr"]["1e-05"] is None  # unresolvable: 1 / ~3000 > 1e-5
    assert result["ci95"]["targets"]["auc"][0] <= result["ci95"]["targets"]["auc"][1]
    single = metrics.attack_metrics(scores[:1], membership[:1], num_resamples=10)
    assert single["ci95"]["targets"] is None  # one target cannot be resampled
    assert metrics.attack_metrics(scores, membership, num_resamples=0)["ci95"]["examples"] is None


def direct_two_level_resamples(scores, membership, num_resamples, seed):
    """Yields each "both" resample slowly: draw T targets, then N examples, with replacement (the
    rng order of `metrics`, for num_resamples <= its chunk), and list every (target, example) pair."""
    rng = np.random.default_rng(seed)
    num_targets, num_examples = membership.shape
    drawn_targets = rng.integers(0, num_targets, size=(num_resamples, num_targets))
    drawn_examples = rng.integers(0, num_examples, size=(num_resamples, num_examples))
    for targets, examples in zip(drawn_targets, drawn_examples):
        pairs = [(t, n) for t in targets for n in examples]
        yield np.array([scores[t, n] for t, n in pairs]), np.array([membership[t, n] for t, n in pairs])


def sklearn_auc_and_tpr(scores, is_member, level):
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    return roc_auc_score(is_member, scores), np.max(tpr[fpr <= level])


def test_two_level_bootstrap_equals_a_direct_loop_over_targets_then_examples():
    rng = np.random.default_rng(3)
    membership = rng.random((3, 7)) < 0.5
    scores = rng.normal(size=(3, 7)) + membership
    (figures,) = metrics.bootstrap_figures([scores], membership, "both", num_resamples=6, seed=11)
    resamples = direct_two_level_resamples(scores, membership, num_resamples=6, seed=11)
    checked = 0
    for b, (repeated_scores, repeated_members) in enumerate(resamples):
        if repeated_members.all() or not repeated_members.any():
            assert np.isnan(figures["auc"][b])
            continue
        auc, tpr = sklearn_auc_and_tpr(repeated_scores, repeated_members, 0.1)
        assert figures["auc"][b] == pytest.approx(auc)
        assert figures["tpr_at_fpr"][0.1][b] == pytest.approx(tpr)
        checked += 1
    assert checked >= 4


def test_two_level_intervals_in_attack_metrics():
    rng = np.random.default_rng(4)
    membership = rng.random((4, 500)) < 0.5
    scores = rng.normal(size=(4, 500)) + membership
    result = metrics.attack_metrics(scores, membership, num_resamples=100, seed=0)
    assert list(result["ci95"]) == ["examples", "targets", "both"]
    low, high = result["ci95"]["both"]["auc"]
    assert low < result["auc"] < high
    assert result["ci95"]["both"]["tpr_at_fpr"]["1e-05"] is None
    assert metrics.attack_metrics(scores[:1], membership[:1], num_resamples=10)["ci95"]["both"] is None


def separable_attacks(seed=5, num_targets=4, num_examples=400):
    """membership [T, N]; a strong attack (AUC ~0.86) and a weak one (AUC ~0.64), independent noise."""
    rng = np.random.default_rng(seed)
    membership = rng.random((num_targets, num_examples)) < 0.5
    strong = rng.normal(size=membership.shape) + 1.5 * membership
    weak = rng.normal(size=membership.shape) + 0.5 * membership
    return strong, weak, membership


def test_paired_difference_of_an_attack_with_itself_is_exactly_zero():
    scores, _, membership = separable_attacks()
    result = metrics.paired_difference(scores, scores, membership, num_resamples=50, seed=1)
    assert result["unit"] == "both" and result["resamples"] == 50
    entries = [result["auc"]] + [e for e in result["tpr_at_fpr"].values() if e is not None]
    assert len(entries) == 2  # AUC and TPR at 10%; 1% of ~800 non-members allows fewer than k
    for entry in entries:
        assert entry == {"difference": 0.0, "ci95": [0.0, 0.0], "p_a_better": 0.0}
        assert not metrics.beats(entry)


def test_a_clearly_stronger_attack_beats_the_weaker_and_not_the_reverse():
    strong, weak, membership = separable_attacks()
    forward = metrics.paired_difference(strong, weak, membership, num_resamples=200, seed=0)
    backward = metrics.paired_difference(weak, strong, membership, num_resamples=200, seed=0)
    expected = roc_auc_score(membership.ravel(), strong.ravel()) - roc_auc_score(
        membership.ravel(), weak.ravel()
    )
    assert forward["auc"]["difference"] == pytest.approx(expected) and expected > 0.15
    low, high = forward["auc"]["ci95"]
    assert 0 < low < expected < high and forward["auc"]["p_a_better"] == 1.0
    assert metrics.beats(forward["auc"]) and metrics.beats(forward["tpr_at_fpr"]["0.1"])
    assert backward["auc"]["ci95"][1] < 0 and backward["auc"]["p_a_better"] == 0.0
    assert not metrics.beats(backward["auc"]) and not metrics.beats(backward["tpr_at_fpr"]["0.1"])
    assert forward["tpr_at_fpr"]["1e-05"] is None and not metrics.beats(forward["tpr_at_fpr"]["1e-05"])


def test_a_higher_point_estimate_alone_does_not_beat():
    # A twin of equal strength with its own noise: a's AUC comes out a little higher here, but
    # the paired interval holds 0, so it is no win.
    strong, _, membership = separable_attacks()
    twin = np.random.default_rng(1).normal(size=strong.shape) + 1.5 * membership
    result = metrics.paired_difference(strong, twin, membership, num_resamples=200, seed=0)
    low, high = result["auc"]["ci95"]
    assert result["auc"]["difference"] > 0 and low < 0 < high and 0 < result["auc"]["p_a_better"] < 1
    assert not metrics.beats(result["auc"])


def test_one_paired_resample_equals_sklearn_on_the_repeated_data():
    strong, weak, membership = separable_attacks(seed=7, num_targets=3, num_examples=20)
    result = metrics.paired_difference(
        strong, weak, membership, num_resamples=1, seed=2, min_false_positives=1
    )
    pairs = direct_two_level_resamples(np.stack([strong, weak], -1), membership, num_resamples=1, seed=2)
    ((repeated_scores, repeated_members),) = list(pairs)
    auc_a, tpr_a = sklearn_auc_and_tpr(repeated_scores[:, 0], repeated_members, 0.1)
    auc_b, tpr_b = sklearn_auc_and_tpr(repeated_scores[:, 1], repeated_members, 0.1)
    # One resample: both ends of the interval are its difference, computed on the same rows.
    assert result["auc"]["ci95"] == pytest.approx([auc_a - auc_b] * 2)
    assert result["auc"]["p_a_better"] == float(auc_a > auc_b)
    assert result["tpr_at_fpr"]["0.1"]["ci95"] == pytest.approx([tpr_a - tpr_b] * 2)
    assert auc_a != auc_b and tpr_a != tpr_b  # the check would not see a sign error otherwise


def test_paired_difference_without_a_bootstrap_keeps_the_point_difference():
    strong, weak, membership = separable_attacks(num_targets=1)
    result = metrics.paired_difference(strong, weak, membership, num_resamples=100)
    assert result["auc"]["difference"] > 0 and result["auc"]["ci95"] is None
    assert not metrics.beats(result["auc"])  # one target cannot be resampled: no interval, no claim
    assert metrics.paired_difference(strong, weak, membership, unit="examples")["auc"]["ci95"] is not None
    with pytest.raises(ValueError, match="examples, targets, both"):
        metrics.paired_difference(strong, weak, membership, unit="models")


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both members and non-members"):
        metrics.summarize(np.zeros(3), np.ones(3, bool))


def test_intervals_cover_the_true_tpr_at_every_reported_level():
    """300 simulated audits with a known ROC (non-members N(0, 1), members N(1, 1); 4 targets of
    250 non-members and 250 members, independent scores, so resampling examples is the right
    bootstrap). At every level reported (1% allows exactly k = 10 false positives here, 10%
    allows 100) the 95% interval must hold the true TPR in 95% of the audits, up to 3 binomial
    standard deviations. At 0.1%, one false positive allowed, it misses far more often and from
    above, which is why such a level is not reported. The bias and coverage depend on the false
    positives allowed, not on the level itself (docs/results/tpr_resolution)."""
    from scipy import stats

    num_audits, shift, num_targets, per_target = 300, 1.0, 4, 250
    num_nonmembers = num_targets * per_target
    reported = [v for v in metrics.FPR_LEVELS if metrics.resolvable(v, num_nonmembers)]
    assert reported == [1e-2, 1e-1] and metrics.MIN_FALSE_POSITIVES == 1e-2 * num_nonmembers
    truth = {v: stats.norm.sf(stats.norm.isf(v) - shift) for v in metrics.FPR_LEVELS}
    covered, missed_above = dict.fromkeys(metrics.FPR_LEVELS, 0), dict.fromkeys(metrics.FPR_LEVELS, 0)
    rng = np.random.default_rng(0)
    for audit in range(num_audits):
        membership = rng.permuted(np.arange(2 * per_target) < per_target * np.ones((num_targets, 1)), axis=1)
        scores = rng.normal(size=membership.shape) + shift * membership
        intervals = metrics.bootstrap_intervals(
            scores, membership, "examples", 200, seed=audit, min_false_positives=1
        )
        for v in (1e-3, *reported):
            low, high = intervals["tpr_at_fpr"][metrics.level_key(v)]
            covered[v] += low <= truth[v] <= high
            missed_above[v] += low > truth[v]
    lowest_acceptable = 0.95 - 3 * np.sqrt(0.95 * 0.05 / num_audits)
    for v in reported:
        assert covered[v] / num_audits >= lowest_acceptable, (v, covered[v])
    assert covered[1e-3] / num_audits < lowest_acceptable - 0.05, covered[1e-3]
    assert missed_above[1e-3] > 0.75 * (num_audits - covered[1e-3]), missed_above[1e-3]
