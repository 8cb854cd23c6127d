"""Metrics against hand-computed cases and against sklearn on repeated data."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

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


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both members and non-members"):
        metrics.summarize(np.zeros(3), np.ones(3, bool))
