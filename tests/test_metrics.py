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
    summary = metrics.summarize(*hand_case())
    assert summary["auc"] == pytest.approx(0.9)
    assert summary["balanced_acc"] == pytest.approx(0.85)
    assert summary["tpr_at_fpr"]["0.1"] == pytest.approx(2 / 3)
    assert summary["min_resolvable_fpr"] == pytest.approx(0.1)
    # Below 1 / 10 non-members no threshold can be told apart from FPR 0: not measured, so None.
    assert summary["tpr_at_fpr"]["0.01"] is None and summary["tpr_at_fpr"]["1e-05"] is None
    assert list(summary["tpr_at_fpr"]) == ["1e-05", "0.0001", "0.001", "0.01", "0.1"]


def test_tpr_at_fpr_takes_the_best_tpr_at_or_below_the_level():
    # FPR exactly at the level counts (<=); one more non-member above the threshold does not.
    fpr = np.array([0.0, 0.0, 0.05, 0.1, 0.15, 1.0])
    tpr = np.array([0.0, 0.2, 0.3, 0.6, 0.9, 1.0])
    assert metrics.tpr_at_fpr(fpr, tpr, 0.1, num_nonmembers=20) == 0.6
    assert metrics.tpr_at_fpr(fpr, tpr, 0.01, num_nonmembers=20) is None
    assert metrics.tpr_at_fpr(fpr, tpr, 0.05, num_nonmembers=20) == 0.3


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
        expected = metrics.summarize(scores[repeated], is_member[repeated])
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
    assert len(entries) == 3  # AUC and TPR at 1%, 10%; 1 / ~800 non-members > 0.1%
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
    result = metrics.paired_difference(strong, weak, membership, num_resamples=1, seed=2)
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
