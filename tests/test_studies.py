"""lira.studies, the notebooks' sweeps and selections, against direct loop-by-loop references."""

import itertools
import warnings

import numpy as np
import pytest

from lira import metrics as metrics_lib
from lira import notebook, report, studies
from lira.attacks import ATTACKS, protocol
from lira.report import tables
from lira.run import synthetic
from lira.run.views import query_offsets


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """M = 6 models, N = 30 examples, Q = 18 queries, a planted signal."""
    logdir = tmp_path_factory.mktemp("synthetic")
    synthetic.make_synthetic_rundir(logdir, num_models=6, num_examples=30, num_queries=18, signal=1.5, seed=3)
    return notebook.load_run(logdir)


def test_query_indices_pick_the_same_views():
    for available, count in [(1, 1), (2, 1), (2, 2), (18, 1), (18, 2), (18, 18), (162, 2), (162, 18)]:
        views, wanted = query_offsets(available), query_offsets(count)
        expected = []
        for view in wanted:  # the first position on the available axis holding that view
            expected.append(next(i for i, v in enumerate(views) if v == view))
        got = studies.query_indices(available, count)
        assert got == expected and [views[i] for i in got] == wanted
    assert studies.query_indices(18, 1) == [4]  # (no mirror, 0, 0) sits in the middle of the 3x3 grid
    for available, count in [(1, 2), (2, 18), (18, 162)]:
        with pytest.raises(ValueError, match=f"{count} queries need views"):
            studies.query_indices(available, count)


def test_separation_and_gaussians_match_a_loop(run):
    plain = studies.plain_query(run)
    assert query_offsets(run.num_queries)[plain] == (False, 0, 0)
    separation = studies.separation(run)
    entries = studies.example_gaussians(run, range(run.keep.shape[1]))
    for j, entry in enumerate(entries):
        phi_in = [float(run.signals.phi[m, j, plain]) for m in range(run.num_models) if run.keep[m, j]]
        phi_out = [float(run.signals.phi[m, j, plain]) for m in range(run.num_models) if not run.keep[m, j]]
        mean_in, mean_out = sum(phi_in) / len(phi_in), sum(phi_out) / len(phi_out)
        var_in = sum((v - mean_in) ** 2 for v in phi_in) / (len(phi_in) - 1)
        var_out = sum((v - mean_out) ** 2 for v in phi_out) / (len(phi_out) - 1)
        expected = abs(mean_in - mean_out) / ((var_in + var_out) / 2) ** 0.5
        assert separation[j] == pytest.approx(expected, rel=1e-6)
        assert entry["example"] == j and entry["label"] == run.labels[j]
        np.testing.assert_allclose(entry["in"], phi_in)
        np.testing.assert_allclose(entry["out"], phi_out)
        assert entry["mean_in"] == pytest.approx(mean_in) and entry["std_out"] == pytest.approx(var_out**0.5)
    easy, hard = studies.easy_and_hard(run, count=3)
    ranked = sorted(range(len(separation)), key=lambda j: -separation[j])
    assert list(easy) == ranked[:3] and set(hard) == set(ranked[-3:])
    assert separation[hard[0]] == separation.min()


def test_vulnerability_matches_a_loop_and_the_report():
    rng = np.random.default_rng(2)
    keep = rng.random((5, 25)) < 0.5
    keep[:3, 7] = False  # no target trained on example 7 (nor on 2, 15, 21): NaN, ranked last
    untrained = [2, 7, 15, 21]
    assert list(np.flatnonzero(~keep[:3].any(axis=0))) == untrained
    targets = [0, 1, 2]
    scores = np.round(rng.normal(size=(3, 25)), 1)  # rounded: ties in scores and in catch FPR
    for row, t in enumerate(targets):  # examples 0, 1, 3, 4 beat every non-member: catch FPR 0 ...
        scores[row, [0, 1, 3, 4]] = np.where(keep[t, [0, 1, 3, 4]], [10.0, 10.1, 10.3, 10.4], -10.0)
    result = protocol.AttackResult(scores, targets)
    catch_fpr, order = studies.vulnerability(result, keep)

    def key(j):
        fprs, member_scores = [], []
        for row, t in enumerate(targets):
            if keep[t, j]:
                nonmember = [scores[row, i] for i in range(25) if not keep[t, i]]
                fprs.append(sum(s >= scores[row, j] for s in nonmember) / len(nonmember))
                member_scores.append(scores[row, j])
        median = float(np.median(fprs)) if fprs else np.inf
        return median, -float(np.mean(member_scores)) if member_scores else np.inf

    expected = sorted(range(25), key=key)  # stable, like np.lexsort
    assert list(order) == expected
    assert list(order[:4]) == [4, 3, 1, 0]  # ... so the tie is broken by the member score
    assert list(order[-4:]) == untrained and np.isnan(catch_fpr[untrained]).all()
    for j in set(range(25)) - set(untrained):
        assert catch_fpr[j] == pytest.approx(key(j)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, _, report_order = report.per_example_table({"lira_online": result}, np.zeros(25, int), keep)
    np.testing.assert_array_equal(order, report_order)


def test_default_counts():
    assert studies.default_counts(2) == [1]
    assert studies.default_counts(16) == list(range(1, 16))
    assert studies.default_counts(33) == list(range(1, 33))
    counts = studies.default_counts(64)
    assert counts == sorted(set(counts)) and counts[0] == 1 and counts[-1] == 63
    assert {1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45} <= set(counts) and len(counts) == 12


def reference_is_valid(keep, targets, attack, count, seed=0):
    """Every example has the IN and OUT references `attack` needs among those K selects."""
    spec = ATTACKS[attack]
    order = protocol.reference_order(keep.shape[0], seed)
    for target in targets:
        references = [m for m in order if m != target]
        most_in = most_out = 0
        for j in range(keep.shape[1]):
            total_in = int(keep[:, j].sum())
            if spec.references == "in_and_out":  # equal counts among the first K references
                used = references[:count]
                num_in = sum(keep[m, j] for m in used)
                num_in = num_out = min(num_in, len(used) - num_in, min(total_in, len(keep) - total_in) - 1)
            else:  # offline: K OUT references, if a non-member of the target has K
                if len(keep) - total_in - 1 < count:
                    return False
                num_in, num_out = 0, count
            if num_in < spec.min_in or num_out < spec.min_out:
                return False
            most_in, most_out = max(most_in, num_in), max(most_out, num_out)
        online = spec.references == "in_and_out"
        if spec.pooled and online and ((spec.min_in and most_in < 2) or (spec.min_out and most_out < 2)):
            return False  # online, a pooled variance needs some example with two references of a kind
    return True


def test_shadow_sweep_rows_follow_the_validity_rules(run):
    targets = [0, 1]
    rows = studies.shadow_sweep(run, counts=[1, 2, 3, 4, 5, 6], num_targets=2)
    got = {(row["attack"], row["num_shadows_used"]): row for row in rows}
    expected = {
        (a, k) for a in studies.LIRA_AND_RMIA for k in range(1, 6) if reference_is_valid(run.keep, targets, a, k)
    }  # fmt: skip
    assert set(got) == expected
    assert ("rmia_offline", 1) in got and ("rmia_online", 1) not in got and ("lira_online", 1) not in got
    assert ("lira_offline", 3) not in got
    for attack, count in itertools.product(studies.LIRA_AND_RMIA, range(1, 7)):
        assert studies.is_valid(run.keep, targets, attack, count) == ((attack, count) in expected)
    for (attack, count), row in got.items():
        scores = protocol.run_attacks(run, [attack], targets, count)[attack].scores
        figures = metrics_lib.summarize(scores, run.keep[targets])
        assert row["auc"] == pytest.approx(figures["auc"]) and row["tpr_at_fpr"] == figures["tpr_at_fpr"]


def test_query_sweep_runs_the_attacks_on_query_subsets(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=6, num_examples=30, num_queries=2, signal=1.5)
    run = notebook.load_run(tmp_path)
    rows = studies.query_sweep(run, attacks=("lira_offline", "rmia_online"), counts=(1, 2, 18), num_targets=2)
    assert [(r["attack"], r["queries"]) for r in rows] == [
        ("lira_offline", 1), ("rmia_online", 1), ("lira_offline", 2), ("rmia_online", 2),
    ]  # fmt: skip
    plain = run.with_queries([0])
    for row in rows:
        subset = plain if row["queries"] == 1 else run
        result = protocol.run_attacks(subset, [row["attack"]], [0, 1])[row["attack"]]
        assert row["auc"] == pytest.approx(metrics_lib.summarize(result.scores, run.keep[:2])["auc"])
    one_query = [r["auc"] for r in rows if r["queries"] == 1]
    assert one_query != [r["auc"] for r in rows if r["queries"] == 2]  # the subset made a difference


def fake_rows():
    level = metrics_lib.level_key(1e-3)
    return [
        {"attack": "a", "k": 1, "auc": 0.61, "tpr_at_fpr": {level: 0.0123}},
        {"attack": "a", "k": 4, "auc": 0.7, "tpr_at_fpr": {level: None}},
        {"attack": "b", "k": 4, "auc": 0.5, "tpr_at_fpr": {level: 0.0}},
    ]


def test_rows_table_marks_missing_and_unresolvable_cells():
    lines = tables.rows_table(fake_rows(), "k").splitlines()
    assert lines[0] == "| attack \\ k | 1 | 4 |"
    assert lines[2] == "| a | 0.610 / 1.23% | 0.700 / n/r |"
    assert lines[3] == "| b | - | 0.500 / 0% |"
    lines = tables.rows_table(fake_rows(), "k", columns={2, 4}).splitlines()
    assert lines[0] == "| attack \\ k | 2 | 4 |" and lines[2] == "| a | - | 0.700 / n/r |"
    series = studies.sweep_series(fake_rows(), "k", "tpr", 1e-3)
    np.testing.assert_array_equal(series["a"][0], [1, 4])
    np.testing.assert_array_equal(series["a"][1], [0.0123, np.nan])
    np.testing.assert_array_equal(studies.sweep_series(fake_rows(), "k")["b"][1], [0.5])


def test_tpr_table_marks_unresolvable_levels():
    rng = np.random.default_rng(0)
    membership = rng.random((2, 3000)) < 0.5
    scores = membership + rng.normal(size=(2, 3000))
    metrics = {
        "num_targets": 2,
        "attacks": {"x": metrics_lib.attack_metrics(scores, membership, 0), "y": metrics_lib.attack_metrics(-scores, membership, 0)},
    }  # fmt: skip
    lines = tables.tpr_table(metrics).splitlines()
    assert lines[0] == "| attack | AUC | TPR @ 0.001% FPR | TPR @ 0.01% FPR | TPR @ 0.1% FPR | TPR @ 1% FPR |"
    num_nonmembers = int((~membership).sum())  # about 3,000: only 1% allows 10 false positives
    tpr = metrics["attacks"]["x"]["tpr_at_fpr"]["0.01"]
    assert lines[2] == f"| x | {metrics['attacks']['x']['auc']:.3f} | n/r | n/r | n/r | {100 * tpr:.3g}% |"
    assert lines[3].startswith("| y | ") and lines[3].count("n/r") == 3
    assert f"{num_nonmembers:,} non-member scores" in lines[-1]


def test_compare_attacks_runs_every_attack_and_leaves_out_rmia_without_its_signal(run, tmp_path):
    metrics, results = studies.compare_attacks(run, num_targets=2)
    assert list(results) == [name for name, spec in ATTACKS.items() if not spec.needs_whitebox]
    without = notebook.load_run(run.logdir, probability_signal=None)
    assert (
        "rmia_online"
        not in studies.compare_attacks(without, attacks=("loss", "rmia_online"), num_targets=2)[1]
    )
    assert metrics["num_targets"] == 2 and metrics["attacks"]["lira_online"]["ci95"]["examples"] is None
    expected = protocol.run_attacks(run, ["rmia_online"], [0, 1])["rmia_online"]
    np.testing.assert_array_equal(results["rmia_online"].scores, expected.scores)
    fpr, tpr = studies.pooled_roc(results["loss"], run.keep)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert studies.targets_of(run, None) == list(range(6)) and studies.targets_of(run, 99) == list(range(6))
    assert "M = 6 models" in studies.describe(run) and "Q = 18 queries" in studies.describe(run)


def test_paired_comparisons_say_beats_only_when_the_interval_excludes_zero(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=8, num_examples=400, signal=1.5, seed=3)
    run = notebook.load_run(tmp_path)
    _, results = studies.compare_attacks(run, ["loss", "lira_online", "lira_online_student"], num_targets=4)
    pairs = [("lira_online_student", "lira_online"), ("lira_online", "lira_online_student")]
    rows = studies.paired_comparisons(results, run.keep, pairs, level=1e-2, num_resamples=200)
    forward, backward = rows
    # 3 references of a kind per example: the plug-in Gaussian's tails are too thin, the predictive's are not
    assert forward["beats_auc"] and not backward["beats_auc"]
    assert forward["auc"]["difference"] == pytest.approx(-backward["auc"]["difference"])
    assert forward["auc"]["ci95"][0] > 0
    table = tables.paired_table(rows)
    assert "| lira_online_student beats lira_online (" in table
    assert (
        "| lira_online | lira_online_student |" in table
        and "lira_online_student beats lira_online (AUC" in table
    )
    assert studies.paired_comparisons(results, run.keep, [("lira_online", "rmia_online")]) == []  # not run
