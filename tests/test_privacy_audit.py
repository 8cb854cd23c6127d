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


# --- End to end: train, query and attack a run with canaries, with and without DP -------------------


def _audited_run(root, name, **changes):
    from lira import config
    from lira.run import layout
    from lira.stages import attack, query, train

    run_config = config.Config().replace(
        dataset="digits", pool_size=800, canaries=80, arch="mlp", num_shadows=8, batch_size=32, lr=0.1,
        augment="none", models_per_step=4, **changes,
    )  # fmt: skip
    logdir = train.train(run_config, root / name, progress=False)
    query.query(logdir, queries=1, progress=False)
    options = config.AttackConfig(attacks=["loss", "lira_online", "lira_offline"], num_targets=8, bootstrap=0)
    return attack.attack(logdir, options), layout.load_record(logdir), logdir


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return _audited_run(tmp_path_factory.mktemp("audit"), "plain", epochs=20)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return _audited_run(tmp_path_factory.mktemp("audit"), "dp", epochs=10, dp_noise_multiplier=1.5)


def test_a_model_without_dp_leaks_its_mislabelled_canaries(plain_run):
    metrics, record, logdir = plain_run
    assert record.dp is None and (logdir / "canaries.npy").exists()
    assert metrics["audit"] == {"method": "one_run", "significance": 0.05, "delta": 1e-5, "epsilon": None,
                                "examples": "canaries", "num_examples": 80}  # fmt: skip
    bounds = {name: entry["epsilon_lower_bound"] for name, entry in metrics["attacks"].items()}
    assert max(bounds.values()) > 1.0, bounds  # clearly positive: the model is not private


def test_dp_run_records_its_guarantee_and_no_attack_beats_it(dp_run):
    metrics, record, logdir = dp_run
    assert {"epsilon", "delta", "noise_multiplier", "clip_norm"} <= set(record.dp)
    assert record.dp["noise_multiplier"] == 1.5 and 0 < record.dp["epsilon"] < 10
    assert metrics["audit"]["epsilon"] == record.dp["epsilon"]
    for name, entry in metrics["attacks"].items():
        assert 0 <= entry["epsilon_lower_bound"] <= record.dp["epsilon"], name
    report = (logdir / "report" / "report.md").read_text()
    assert "Differential privacy" in report and "eps lower bound" in report
