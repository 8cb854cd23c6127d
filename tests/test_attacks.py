"""Each attack against a direct loop-by-loop reference, and on cases with a known answer."""

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from lira import signals
from lira.attacks import ATTACKS, AttackInputs, common, lira_attacks, protocol, rmia
from lira.run import masks

NUM_MODELS, NUM_EXAMPLES, NUM_QUERIES, NUM_CLASSES = 9, 24, 2, 3
TARGETS = [0, 4]
ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracles" / "rmia_authors.py"


def make_inputs(logits, labels, keep, targets, num_shadows_used=None, order=None, seed=0, signal=None):
    """AttackInputs of logits [M, N, Q, C] with the driver's equal-count reference selection."""
    every = signals.signals_from_logits(logits, labels, signal or signals.ProbabilitySignal())
    selection = protocol.select_references(keep, targets, num_shadows_used, seed, order)
    return AttackInputs(
        signals=every, targets=np.asarray(targets), labels=labels, is_in=selection.is_in, is_out=selection.is_out,
        offline_out=selection.offline_out, seeds=[seed + t for t in targets],
        populations=[np.flatnonzero(~keep[t]) for t in targets],
        order=protocol.reference_order(len(keep), seed) if order is None else np.asarray(order),
    )  # fmt: skip


def random_case(seed=0, num_models=NUM_MODELS, targets=TARGETS, **kwargs):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES)
    logits = rng.normal(0, 2, size=(num_models, NUM_EXAMPLES, NUM_QUERIES, NUM_CLASSES))
    keep = masks.make_keep(num_models, NUM_EXAMPLES, 0.5, seed)
    return make_inputs(logits, labels, keep, targets, **kwargs), logits, labels, keep


def selected(inputs, kind, row, n):
    """Model indices of target row `row`'s references of `kind` for example n, by a loop."""
    mask = inputs.mask(kind)
    return [m for m in range(mask.shape[1]) if mask[row, m, n]]


def floored_var(values):
    return max(np.var(values, ddof=1), common.variance_floor(np.mean(values)))


def pooled_loop(values, inputs, kind, row):
    squares, dof, means = 0.0, 0, []
    for n in range(NUM_EXAMPLES):
        for q in range(NUM_QUERIES):
            group = [values[m, n, q] for m in selected(inputs, kind, row, n)]
            means.append(np.mean(group))
            if len(group) > 1:
                squares += sum((v - np.mean(group)) ** 2 for v in group)
                dof += len(group) - 1
    return max(squares / max(dof, 1), common.variance_floor(np.array(means)).max()), dof


def loop_lira(inputs, online, fixed, student):
    """The LiRA scores [T, N] example by example, query by query, with scipy's densities."""
    phi = inputs.signals.phi.astype(np.float64)
    scores = np.zeros((len(inputs.targets), NUM_EXAMPLES))
    for row, target in enumerate(inputs.targets):
        pooled = {kind: pooled_loop(phi, inputs, kind, row) for kind in ("in", "out", "offline_out")}

        def fit(kind, n, q, row=row, pooled=pooled):
            values = [phi[m, n, q] for m in selected(inputs, kind, row, n)]
            variance, dof = pooled[kind] if fixed else (floored_var(values), len(values) - 1)
            if student:
                return stats.t(dof, np.mean(values), np.sqrt(variance * (1 + 1 / len(values))))
            return stats.norm(np.mean(values), np.sqrt(variance))

        for n in range(NUM_EXAMPLES):
            for q in range(NUM_QUERIES):
                x = phi[target, n, q]
                if online:
                    term = fit("in", n, q).logpdf(x) - fit("out", n, q).logpdf(x)
                else:
                    term = fit("offline_out", n, q).logcdf(x)
                scores[row, n] += term / NUM_QUERIES
    return scores


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("student", [False, True])
def test_lira_matches_loop_reference(online, fixed, student):
    inputs, *_ = random_case(seed=1)
    likelihood = "student_t" if student else "gaussian"
    helper = lira_attacks._online if online else lira_attacks._offline
    scores = helper(inputs, fixed_variance=fixed, likelihood=likelihood)
    np.testing.assert_allclose(scores, loop_lira(inputs, online, fixed, student), rtol=1e-7, atol=1e-9)
    if not (student and fixed):  # the attacks: Gaussian, or Student-t with per-example variances
        mode = "online" if online else "offline"
        name = f"lira_{mode}_student" if student else f"lira_{mode}{'_fixed_var' if fixed else ''}"
        np.testing.assert_array_equal(ATTACKS[name].fn(inputs), scores)


def test_student_t_log_cdf_stays_finite_and_matches_scipy_where_representable():
    values = np.array([-3.0, -50.0, -1e3, -1e40, 2.0])
    dof = np.array([5.0, 5.0, 30.0, 3.0, 7.0])
    result = lira_attacks.student_t_log_cdf(values, dof)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result[:3], stats.t.logcdf(values[:3], dof[:3]), rtol=1e-6)
    assert result[3] < -200 and result[4] == pytest.approx(stats.t.logcdf(2.0, 7.0))


def test_equal_counts_give_members_and_nonmembers_the_same_number_of_references():
    inputs, _, _, keep = random_case(seed=2)
    num_in = keep.sum(axis=0)
    assert (num_in == 4).all()  # 9 models: 4 IN and 5 OUT per example
    expected = {"in": 3, "out": 3, "offline_out": 4}  # min(IN, OUT) - 1 of each kind; OUT - 1 offline
    for kind, count in expected.items():
        assert (inputs.mask(kind).sum(axis=1) == count).all(), kind
    for row, target in enumerate(inputs.targets):
        assert not inputs.is_in[row, target].any() and not inputs.offline_out[row, target].any()


def test_loss_baselines_match_loop_reference():
    inputs, *_ = random_case(seed=3)
    ce = inputs.signals.ce.astype(np.float64).mean(axis=-1)
    expected = {
        name: np.zeros((len(TARGETS), NUM_EXAMPLES)) for name in ("loss", "calibrated_loss", "attack_r")
    }
    for row, target in enumerate(TARGETS):
        for n in range(NUM_EXAMPLES):
            outs = sorted(ce[m, n] for m in selected(inputs, "offline_out", row, n))
            own = ce[target, n]
            expected["loss"][row, n] = -own
            expected["calibrated_loss"][row, n] = -(own - np.mean(outs))
            padded = [0.0, *outs, 1000.0]  # Ye et al.'s dummy smallest and largest losses
            expected["attack_r"][row, n] = 1 - np.interp(own, padded, np.linspace(0, 1, len(padded)))
    for name, values in expected.items():
        np.testing.assert_allclose(ATTACKS[name].fn(inputs), values, rtol=1e-7, atol=1e-12, err_msg=name)


def test_attack_r_is_continuous_not_a_count():
    inputs, *_ = random_case(seed=3)
    scores = ATTACKS["attack_r"].fn(inputs)
    assert len(np.unique(scores)) > 0.9 * scores.size  # a count of 3 references would give 4 values


def test_taylor_soft_margin_is_the_authors_formula():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (50, 10)), rng.integers(0, 10, 50)
    taylor = lambda v: sum(v**i / math.factorial(i) for i in range(4))  # n = 4 terms: a cubic
    for row, label in zip(logits, labels):
        u = row / 2.0
        expected = taylor(u[label] - 0.6) / (
            taylor(u[label] - 0.6) + sum(taylor(u[c]) for c in range(10) if c != label)
        )
        assert signals.taylor_soft_margin(row, label) == pytest.approx(expected, rel=1e-12)
    softmax = signals.ProbabilitySignal("softmax", temperature=1.0)(logits, labels)
    np.testing.assert_allclose(softmax, signals.softmax(logits)[np.arange(50), labels])


@pytest.fixture
def fractions(monkeypatch):
    """The vote fractions RMIA computes before it breaks ties, recorded call by call."""
    seen = []
    original = rmia.break_ties
    monkeypatch.setattr(
        rmia,
        "break_ties",
        lambda fraction, tie_breaker: seen.append(fraction) or original(fraction, tie_breaker),
    )
    return seen


def loop_rmia(inputs, offline, gamma, offline_a, trim):
    """Fractions [T, N] by a direct loop: scipy's trimmed mean per query, LR per query, and for
    each pair (x, z) a majority of the per-query tests."""
    p = inputs.signals.probability.astype(np.float64)
    kinds = ("offline_out",) if offline else ("in", "out")
    out = np.zeros((len(inputs.targets), NUM_EXAMPLES))
    for row, target in enumerate(inputs.targets):
        ratio = np.zeros((NUM_EXAMPLES, NUM_QUERIES))
        for n in range(NUM_EXAMPLES):
            models = sorted(m for kind in kinds for m in selected(inputs, kind, row, n))
            for q in range(NUM_QUERIES):
                reference = stats.trim_mean([p[m, n, q] for m in models], trim)
                if offline:
                    reference = (1 + offline_a) / 2 * reference + (1 - offline_a) / 2
                ratio[n, q] = np.float32(p[target, n, q] / reference)
        population = inputs.populations[row]
        for x in range(NUM_EXAMPLES):
            wins = [
                2
                * sum(
                    np.float32(ratio[x, q]) * np.float32(1 / ratio[z, q]) >= gamma for q in range(NUM_QUERIES)
                )
                > NUM_QUERIES
                for z in population  # x too, where it is a non-member: one function of x's ratios
            ]
            out[row, x] = np.mean(wins)
    return out


@pytest.mark.parametrize("name", ["rmia_online", "rmia_offline"])
@pytest.mark.parametrize("trim", [0.2, 0.0])
def test_rmia_fractions_match_the_pairwise_loop(name, trim, fractions):
    inputs, *_ = random_case(seed=4, num_models=11)
    gamma, a = 1.3, 0.4
    options = {"gamma": gamma, "trim": trim} | ({"offline_a": a} if name == "rmia_offline" else {})
    ATTACKS[name].fn(inputs, **options)
    expected = loop_rmia(inputs, name == "rmia_offline", gamma, a, trim)
    np.testing.assert_allclose(np.stack(fractions), expected, rtol=1e-12)
    assert 0 < expected.mean() < 1


def test_rmia_breaks_ties_without_reordering_distinct_fractions():
    fraction = np.array([0.5, 0.25, 0.5, 1.0, 0.25, 0.5])
    tie_breaker = np.array([3.0, 9.0, 1.0, -5.0, 2.0, 2.0])
    scores = rmia.break_ties(fraction, tie_breaker)
    assert len(np.unique(scores)) == len(scores)
    assert list(np.argsort(scores)) == [4, 1, 2, 5, 0, 3]


def test_rmia_mean_aggregation_is_one_test_on_query_averaged_probabilities(fractions):
    inputs, *_ = random_case(seed=5)
    ATTACKS["rmia_online"].fn(inputs, aggregation="mean", trim=0.0)
    averaged = signals.Signals(
        inputs.signals.phi[..., :1], inputs.signals.ce[..., :1],
        inputs.signals.probability.mean(axis=-1, keepdims=True).astype(np.float32), inputs.signals.probability_signal,
    )  # fmt: skip
    single = AttackInputs(**{**vars(inputs), "signals": averaged, "_cache": {}})
    ATTACKS["rmia_online"].fn(single, trim=0.0)
    assert len(fractions) == 2 * len(TARGETS)  # one per target and call
    np.testing.assert_allclose(fractions[: len(TARGETS)], fractions[len(TARGETS) :], atol=1e-12)


@pytest.mark.skipif(
    not ORACLE.exists(), reason="the RMIA oracle (../shared/oracles) is not beside the repository"
)
@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.filterwarnings(
    "ignore::lira.attacks.rmia.InvalidProbabilityWarning"
)  # the cubic, tests/test_rmia.py
def test_rmia_taylor_variant_equals_the_authors_computation(offline, fractions):
    """Their signal (`signal="taylor"`, 4 terms), 20% trimmed mean over the first M/2 - 1 references
    of each kind (in model order), per-query test and majority vote, as the oracle transcribes
    their code: the same votes."""
    spec = importlib.util.spec_from_file_location("rmia_authors", ORACLE)
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    rng = np.random.default_rng(7)
    num_models, num_examples = 12, 60
    labels = rng.integers(0, NUM_CLASSES, num_examples)
    logits = rng.normal(0, 2, size=(num_models, num_examples, 3, NUM_CLASSES))
    logits += (
        2.0
        * masks.make_keep(num_models, num_examples, 0.5, 1)[..., None, None]
        * (labels[:, None, None] == np.arange(NUM_CLASSES))
    )
    keep = masks.make_keep(num_models, num_examples, 0.5, 1)
    theirs_signal = oracle.sm_taylor_softmax(logits, labels)
    taylor = signals.ProbabilitySignal("taylor", 2.0, 0.6, 4)
    ours = signals.signals_from_logits(logits, labels, taylor)
    np.testing.assert_allclose(ours.probability, theirs_signal, rtol=1e-6)
    for target in (0, 5):
        inputs = make_inputs(logits, labels, keep, [target], order=np.arange(num_models), signal=taylor)
        scores, _ = ATTACKS["rmia_offline" if offline else "rmia_online"].fn(inputs, signal="taylor", terms=4)
        theirs = oracle.rmia_scores(target, keep, theirs_signal.astype(np.float32), offline, self_fix=False)
        np.testing.assert_allclose(fractions[-1], theirs, atol=1e-9)
        assert np.isfinite(scores).all() and len(np.unique(scores)) == num_examples  # every tie broken


def test_online_lira_roc_matches_the_analytic_likelihood_ratio_test():
    """IN ~ N(mu + d s, s^2), OUT ~ N(mu, s^2) per example: the LR test's ROC is
    TPR = Phi(Phi^-1(FPR) + d), AUC = Phi(d / sqrt 2). With many references LiRA attains it."""
    rng = np.random.default_rng(0)
    num_models, num_examples, separation, scale = 201, 4000, 1.0, 0.7
    means = rng.normal(0, 3, num_examples)
    keep = masks.make_keep(num_models, num_examples, 0.5, 0)
    phi = (means + scale * (rng.standard_normal((num_models, num_examples)) + separation * keep))[..., None]
    phi = phi.astype(np.float32)
    selection = protocol.select_references(keep, [0])
    inputs = AttackInputs(
        signals.Signals(phi, phi), np.array([0]), np.zeros(num_examples, int), selection.is_in, selection.is_out,
        selection.offline_out, [0], [np.flatnonzero(~keep[0])], protocol.reference_order(num_models, 0),
    )  # fmt: skip
    scores = ATTACKS["lira_online"].fn(inputs)[0]
    auc = roc_auc_score(keep[0], scores)
    assert abs(auc - stats.norm.cdf(separation / np.sqrt(2))) < 0.025  # sampling sd of this AUC is ~0.007
    members, nonmembers = scores[keep[0]], scores[~keep[0]]
    threshold = np.quantile(nonmembers, 0.9)  # FPR 0.1
    analytic = stats.norm.cdf(stats.norm.ppf(0.1) + separation)
    assert abs(np.mean(members > threshold) - analytic) < 0.05  # sd ~0.011


def test_every_attack_takes_all_targets_at_once_like_one_at_a_time():
    inputs, logits, labels, keep = random_case(seed=8, targets=[0, 3, 7])
    # The black-box attacks; the white-box ones: tests/test_whitebox_attacks.py.
    for name, spec in ATTACKS.items():
        if spec.needs_whitebox:
            continue
        options = {"classifier": "logreg"} if name == "shokri" else {}
        together = spec.fn(inputs, **options)
        together = together[0] if isinstance(together, tuple) else together
        for row, target in enumerate([0, 3, 7]):
            alone = spec.fn(make_inputs(logits, labels, keep, [target], seed=0), **options)
            alone = alone[0] if isinstance(alone, tuple) else alone
            if name == "shokri":  # its seed is per target: compare the ranking of a deterministic model
                assert roc_auc_score(keep[target], alone[0]) == pytest.approx(
                    roc_auc_score(keep[target], together[row]), abs=0.15
                )
                continue
            np.testing.assert_allclose(together[row], alone[0], rtol=1e-9, atol=1e-12, err_msg=name)


def test_probability_signal_options_must_agree():
    from lira.attacks import probability_signal

    assert probability_signal(["loss", "lira_online"]) is None
    assert probability_signal(["rmia_online"]) == signals.ProbabilitySignal("softmax", 2.0, 0.6, 4)
    chosen = probability_signal(["rmia_online", "rmia_offline"], {"rmia_online": {"signal": "softmax", "temperature": 1.0},
                                                                  "rmia_offline": {"signal": "softmax", "temperature": 1.0}})  # fmt: skip
    assert chosen.kind == "softmax" and chosen.temperature == 1.0
    with pytest.raises(ValueError, match="one probability signal"):
        probability_signal(["rmia_online", "rmia_offline"], {"rmia_online": {"temperature": 1.0}})


def test_the_masked_moments_equal_numpy_on_each_selection():
    inputs, *_ = random_case(seed=9)
    mean, variance, count = inputs.moments("phi", "out")
    for row in range(len(TARGETS)):
        for n in range(NUM_EXAMPLES):
            values = inputs.signals.phi[selected(inputs, "out", row, n), n].astype(np.float64)
            np.testing.assert_allclose(mean[row, n], values.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(variance[row, n], values.var(axis=0, ddof=1), rtol=1e-9)
            assert count[row, n] == len(values)
    phi = inputs.signals.phi.copy()
    phi[:, 0, 0] = 1e4 + phi[:, 0, 0] * 1e-3  # a tiny spread on a large value: the shift keeps it exact
    shifted = common.reference_moments(phi, inputs.is_out, common.shift_models(inputs.targets, inputs.order))
    values = phi[selected(inputs, "out", 0, 0), 0, 0].astype(np.float64)
    assert shifted[1][0, 0, 0] == pytest.approx(values.var(ddof=1), rel=1e-6)


@pytest.mark.parametrize("num_queries", [1, 4, 162])
def test_vote_fractions_match_a_loop_for_any_number_of_queries(num_queries):
    rng = np.random.default_rng(num_queries)
    ratio = rng.lognormal(0, 1, size=(40, num_queries))
    population = np.flatnonzero(rng.random(40) < 0.5)
    fractions = rmia.vote_fractions(ratio, population, 1.5)
    r32 = ratio.astype(np.float32)
    for x in range(40):
        wins = [2 * np.sum(r32[x] * (np.float32(1) / r32[z]) >= 1.5) > num_queries for z in population]
        assert fractions[x] == pytest.approx(np.mean(wins)), x


@pytest.mark.parametrize("num_shadows_used", [None, 5])
@pytest.mark.parametrize("max_removed", [rmia.MAX_REMOVED, 0])  # 0: every chunk takes the general path
@pytest.mark.slow
def test_trimmed_reference_mean_equals_scipy_on_both_paths(num_shadows_used, max_removed, monkeypatch):
    monkeypatch.setattr(rmia, "MAX_REMOVED", max_removed)
    rng = np.random.default_rng(11)
    keep = masks.make_keep(12, 300, 0.5, 1)
    selection = protocol.select_references(keep, [0, 3, 7, 11], num_shadows_used)
    values = rng.random((12, 300, 3)).astype(np.float32)
    values[:, :30] = np.round(values[:, :30], 1)  # ties
    unrelated = rng.random((4, 12, 300)) < 0.6  # selections far apart: the general path
    for mask in (selection.is_in | selection.is_out, selection.offline_out, unrelated):
        ours = rmia.trimmed_reference_mean(values, mask, 0.2)
        for t, n in itertools.product(range(4), range(300)):
            chosen = values[mask[t, :, n], n].astype(np.float64)
            if len(chosen):
                np.testing.assert_allclose(
                    ours[t, n], stats.trim_mean(chosen, 0.2, axis=0), rtol=1e-6, atol=1e-7
                )
