"""Empirical epsilon lower bounds (lira/audit.py) against jax-privacy's own answers, and the
attack stage's "audit" in metrics.json."""

import dp_accounting
import numpy as np
import pytest
from jax_privacy import auditing

from lira import audit


def _gaussian_scores(mu, num_targets, num_examples, seed=0):
    """IN ~ N(mu, 1), OUT ~ N(0, 1): an attack that is exactly a test of the mu-GDP Gaussian
    mechanism, whose epsilon at any delta no valid lower bound may exceed."""
    rng = np.random.default_rng(seed)
    member = rng.random((num_targets, num_examples)) < 0.5
    return rng.normal(size=member.shape) + mu * member, member


def _gdp_epsilon(mu, delta):
    return (
        dp_accounting.pld.PLDAccountant().compose(dp_accounting.GaussianDpEvent(1.0 / mu)).get_epsilon(delta)
    )


def test_clopper_pearson_is_tight_but_valid_on_many_gaussian_scores():
    # jax-privacy's own known answer: with lots of samples, a large significance and delta, the
    # bound comes within 20% of the true epsilon from below.
    scores, member = _gaussian_scores(1.0, 1, 400_000)
    bound = audit.epsilon_lower_bound(scores, member, "clopper_pearson", significance=0.2, delta=0.1)
    true = _gdp_epsilon(1.0, 0.1)
    assert bound < true
    assert bound == pytest.approx(true, rel=0.2)


@pytest.mark.parametrize("method", audit.METHODS)
def test_bounds_grow_with_the_signal_and_never_pass_the_true_epsilon(method):
    bounds = []
    for mu in (0.0, 1.0, 2.0, 4.0):
        scores, member = _gaussian_scores(mu, 4, 1000, seed=int(mu))
        bound = audit.epsilon_lower_bound(scores, member, method, 0.05, 1e-5)
        if mu:
            assert bound < _gdp_epsilon(mu, 1e-5)
        bounds.append(bound)
    assert bounds[0] < 0.2  # no signal, (almost) no bound
    assert bounds[1] < bounds[2] < bounds[3] and bounds[3] > 2


def test_one_run_is_the_libraries_per_target_bound_with_bonferroni_over_targets():
    scores, member = _gaussian_scores(2.0, 3, 600, seed=1)
    expected = max(
        auditing.CanaryScoreAuditor(s[m], s[~m]).epsilon_one_run(0.05 / 3, 1e-5)
        for s, m in zip(scores, member)
    )
    assert audit.epsilon_lower_bound(scores, member, "one_run", 0.05, 1e-5) == pytest.approx(expected)
    one = audit.epsilon_lower_bound(scores[:1], member[:1], "one_run", 0.05, 1e-5)
    assert one == pytest.approx(
        auditing.CanaryScoreAuditor(scores[0][member[0]], scores[0][~member[0]]).epsilon_one_run(0.05, 1e-5)
    )


def test_clopper_pearson_pools_target_example_pairs():
    scores, member = _gaussian_scores(2.0, 3, 600, seed=2)
    expected = auditing.CanaryScoreAuditor(scores[member], scores[~member]).epsilon_clopper_pearson(
        0.05, 1e-5
    )
    assert audit.epsilon_lower_bound(scores, member, "clopper_pearson", 0.05, 1e-5) == pytest.approx(expected)


def test_nan_scores_count_as_least_member_like_and_one_sided_targets_are_skipped():
    scores, member = _gaussian_scores(3.0, 2, 400, seed=3)
    scores[0, :10] = np.nan
    assert np.isfinite(audit.epsilon_lower_bound(scores, member))
    member[1] = True  # a target with no OUT examples gives no bound of its own
    assert audit.epsilon_lower_bound(scores, member) >= 0
    assert audit.epsilon_lower_bound(scores[1:], member[1:]) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="bayes"), "Unknown audit method 'bayes'; valid: one_run, clopper_pearson"),
        (dict(significance=0.5), "significance must be in"),
        (dict(delta=0.0), "delta must be in"),
    ],
)
def test_bad_audit_options_are_named(kwargs, message):
    scores, member = _gaussian_scores(1.0, 1, 10)
    with pytest.raises(ValueError, match=message):
        audit.epsilon_lower_bound(scores, member, **kwargs)
