"""Empirical epsilon lower bounds (lira/audit.py) against jax-privacy's own answers, the
correction for the choice among attacks and targets, the null (no membership signal: a bound
> 0 in at most alpha of the runs), and the attack stage's "audit" in metrics.json."""

import dp_accounting
import numpy as np
import pytest
from helpers import audit_run
from jax_privacy import auditing

from lira import audit
from lira.attacks.protocol import AttackResult


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


def test_audit_attacks_must_be_among_the_attacks_run():
    from lira import config

    config.AttackConfig(attacks=["loss", "lira_online"], audit_attacks=["loss"]).validate()
    config.AttackConfig(attacks=["all"], audit_attacks=["loss"]).validate()
    with pytest.raises(ValueError, match="--audit_attacks=rmia_online: name attacks among --attacks=loss"):
        config.AttackConfig(attacks=["loss"], audit_attacks=["rmia_online"]).validate()


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


def _gaussian_attacks(shifts, num_targets, num_examples, seed=0):
    """{name: AttackResult} of one simulated attack per shift (IN ~ N(shift, 1), OUT ~ N(0, 1)) on
    the same membership bool [T, K]; each attack's noise is its own."""
    rng = np.random.default_rng(seed)
    member = rng.random((num_targets, num_examples)) < 0.5
    results = {
        f"shift_{shift:g}": AttackResult(
            rng.normal(size=member.shape) + shift * member, list(range(num_targets))
        )
        for shift in shifts
    }
    return results, member


def test_the_reported_bound_is_bonferroni_over_attacks_and_targets():
    results, member = _gaussian_attacks([0.5, 1.0, 2.0], num_targets=3, num_examples=500, seed=4)
    audited = audit.audit(results, member, np.arange(500), "one_run", 0.05, 1e-5)
    for name, result in results.items():  # direct: each (attack, target) at 0.05 / (3 attacks x 3 targets)
        direct = max(
            auditing.CanaryScoreAuditor(s[m], s[~m]).epsilon_one_run(0.05 / 9, 1e-5)
            for s, m in zip(result.scores, member)
        )
        assert audited["bounds"][name] == pytest.approx(direct)
    assert audited["epsilon_lower_bound"] == max(audited["bounds"].values()) > 0
    assert audited["attack"] == "shift_2"
    assert audited["epsilon_lower_bound"] < _gdp_epsilon(2.0, 1e-5)  # below the truth
    assert "3 attacks and 3 targets" in audited["correction"] and "0.00556" in audited["correction"]
    uncorrected = audit.epsilon_lower_bound(results["shift_2"].scores, member, "one_run", 0.05, 1e-5)
    assert audited["epsilon_lower_bound"] < uncorrected  # the correction costs something
    pooled = audit.audit(results, member, np.arange(500), "clopper_pearson", 0.05, 1e-5)
    scores = results["shift_1"].scores
    direct = auditing.CanaryScoreAuditor(scores[member], scores[~member]).epsilon_clopper_pearson(
        0.05 / 3, 1e-5
    )
    assert pooled["bounds"]["shift_1"] == pytest.approx(direct)
    assert "3 attacks" in pooled["correction"]


def test_under_the_null_a_positive_bound_is_reported_in_at_most_alpha_of_the_runs():
    # No membership signal: 5 attacks' scores independent of membership (and of each other, the
    # worst case for the union bound), 2 targets x 100 canaries. The reported bound must be > 0 in
    # at most alpha of the runs (binomial tolerance); the uncorrected maximum of the attacks is not.
    runs, alpha, num_attacks, num_targets, num_canaries = 200, 0.05, 5, 2, 100
    rng = np.random.default_rng(11)
    reported = uncorrected = 0
    for _ in range(runs):
        member = rng.random((num_targets, num_canaries)) < 0.5
        results = {
            f"attack_{i}": AttackResult(rng.normal(size=member.shape), list(range(num_targets)))
            for i in range(num_attacks)
        }
        audited = audit.audit(results, member, np.arange(num_canaries), "one_run", alpha, 1e-5)
        reported += audited["epsilon_lower_bound"] > 0
        uncorrected += (
            max(audit.epsilon_lower_bound(r.scores, member, "one_run", alpha, 1e-5) for r in results.values())
            > 0
        )
    assert reported / runs <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)
    assert uncorrected / runs > alpha  # the test can fail: without the correction the rate is ~3x alpha


def test_premise_says_when_the_one_run_bound_is_a_theorem():
    from lira.run import masks

    canaries = np.arange(50)
    keep = masks.make_keep(8, 200, 0.5, seed=0, canaries=canaries)
    assert audit.premise("one_run", keep, canaries, 0.5) is None
    assert "no canaries" in audit.premise("one_run", keep, np.zeros(0, int), 0.5)
    assert "pooled" in audit.premise("clopper_pearson", keep, canaries, 0.5)
    assert "assumes 1/2" in audit.premise("one_run", masks.make_keep(8, 200, 0.3, 0, canaries), canaries, 0.3)
    balanced = masks.make_keep(8, 200, 0.5, seed=0)  # canaries drawn as before the fix
    assert "retrain" in audit.premise("one_run", balanced, canaries, 0.5)


def _synthetic_canary_run(logdir, signal, canaries=40):
    from lira.run import layout, masks, synthetic

    chosen = np.arange(0, 2 * canaries, 2)
    keep = masks.make_keep(8, 400, 0.5, seed=1, canaries=chosen)
    synthetic.make_synthetic_rundir(logdir, num_models=8, num_examples=400, num_queries=1, signal=signal,
                                    seed=1, keep=keep)  # fmt: skip
    if canaries:
        layout.save_npy(logdir / layout.CANARIES, chosen.astype(np.int32))
    return keep, chosen


def test_the_attack_stage_reports_the_corrected_bound_and_whether_it_is_a_theorem(tmp_path):

    names = ["loss", "lira_online", "lira_offline", "rmia_online"]
    keep, canaries = _synthetic_canary_run(tmp_path / "canaries", signal=4.0)
    metrics, results = audit_run(tmp_path / "canaries", names, num_targets=8, bootstrap=0)
    record = metrics["audit"]
    assert record["examples"] == "canaries" and record["num_examples"] == 40
    assert record["theorem"] is True and record["caveat"] is None
    assert "4 attacks and 8 targets" in record["correction"]
    bounds = {name: metrics["attacks"][name]["epsilon_lower_bound"] for name in names}
    expected = audit.audit(results, keep, canaries, "one_run", 0.05, 1e-5)
    assert bounds == pytest.approx(expected["bounds"])
    assert record["epsilon_lower_bound"] == max(bounds.values()) > 0 and record["attack"] == max(
        bounds, key=bounds.get
    )
    assert (
        metrics["attacks"]["lira_online"].get("unscored_canaries", 0) > 0
    )  # 8 models: some coin flips fall short
    # One attack named in advance pays no correction for the others.
    named, _ = audit_run(tmp_path / "canaries", names, num_targets=8, bootstrap=0, audit_attacks=["loss"])
    assert "1 attacks and 8 targets" in named["audit"]["correction"] and named["audit"]["attack"] == "loss"
    assert named["attacks"]["loss"]["epsilon_lower_bound"] > bounds["loss"]
    assert all("epsilon_lower_bound" not in named["attacks"][name] for name in names[1:])
    with pytest.raises(ValueError, match="--audit_attacks=rmia_offline: name attacks among --attacks=loss"):
        audit_run(tmp_path / "canaries", names, audit_attacks=["rmia_offline"])
    _synthetic_canary_run(tmp_path / "pool", signal=4.0, canaries=0)
    pool, _ = audit_run(tmp_path / "pool", ["loss"], num_targets=2, bootstrap=0)
    assert pool["audit"]["examples"] == "pool" and pool["audit"]["theorem"] is False
    assert (
        "no canaries" in pool["audit"]["caveat"] and "1 attacks and 2 targets" in pool["audit"]["correction"]
    )


# --- End to end: train, query and attack a run with canaries, with and without DP -------------------


def _audited_run(root, name, **changes):
    from lira import config
    from lira.config import QueryConfig
    from lira.run import records
    from lira.stages import attack, query, train

    run_config = config.Config().replace(
        dataset="digits", pool_size=800, canaries=80, arch="mlp", num_shadows=8, batch_size=32, lr=0.1,
        augment="none", models_per_step=4, **changes,
    )  # fmt: skip
    logdir = train.train(root / name, run_config, progress=False)
    query.query(logdir, QueryConfig(queries=1), progress=False)
    options = config.AttackConfig(attacks=["loss", "lira_online", "lira_offline"], num_targets=8, bootstrap=0)
    return attack.attack(logdir, options), records.load_record(logdir), logdir


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return _audited_run(tmp_path_factory.mktemp("audit"), "plain", epochs=20)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return _audited_run(tmp_path_factory.mktemp("audit"), "dp", epochs=10, dp_noise_multiplier=1.5)


@pytest.mark.slow
def test_a_model_without_dp_leaks_its_mislabelled_canaries(plain_run):
    metrics, record, logdir = plain_run
    assert record.dp is None and (logdir / "canaries.npy").exists()
    bounds = {name: entry["epsilon_lower_bound"] for name, entry in metrics["attacks"].items()}
    assert metrics["audit"] == {
        "method": "one_run", "significance": 0.05, "delta": 1e-5, "epsilon": None, "examples": "canaries",
        "num_examples": 80, "theorem": True, "caveat": None, "epsilon_lower_bound": max(bounds.values()),
        "attack": max(bounds, key=bounds.get),
        "correction": "Bonferroni over 3 attacks and 8 targets: each target's bound at significance 0.05 / 24 = 0.00208",
    }  # fmt: skip
    column_sums = np.load(logdir / "keep.npy")[:, np.load(logdir / "canaries.npy")].sum(axis=0)
    assert len(np.unique(column_sums)) > 1  # the canaries' columns are coin flips, not balanced
    assert max(bounds.values()) > 1.0, bounds  # clearly positive: the model is not private


@pytest.mark.slow
def test_dp_run_records_its_guarantee_and_no_attack_beats_it(dp_run):
    metrics, record, logdir = dp_run
    assert {"epsilon", "delta", "noise_multiplier", "clip_norm"} <= set(record.dp)
    assert record.dp["noise_multiplier"] == 1.5 and 0 < record.dp["epsilon"] < 10
    assert metrics["audit"]["epsilon"] == record.dp["epsilon"]
    for name, entry in metrics["attacks"].items():
        assert 0 <= entry["epsilon_lower_bound"] <= record.dp["epsilon"], name
    report = (logdir / "report" / "report.md").read_text()
    assert "Differential privacy" in report and "eps lower bound" in report
