"""The papers' findings table: each row a paired verdict, computed with the driver's own attacks."""

import numpy as np
import pytest
from scipy.stats import norm

from lira import findings, notebook, studies
from lira import metrics as metrics_lib
from lira.attacks import protocol
from lira.run import synthetic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("findings")
    synthetic.make_synthetic_rundir(
        logdir, num_models=12, num_examples=600, num_queries=2, signal=1.5, seed=2
    )
    return notebook.load_run(logdir)


def test_each_row_is_the_paired_bootstrap_of_the_two_attacks(run):
    claims = (
        findings.Finding("calibration wins", "test", "lira_online_fixed_var", "loss", level=1e-2),
        findings.Finding("an attack does not beat itself", "test", "loss", "loss", level=1e-2),
        findings.Finding(
            "one query against two",
            "test",
            "lira_online",
            "lira_online",
            findings.Setting(queries=1),
            findings.Setting(queries=2),
            level=1e-2,
        ),  # fmt: skip
        findings.Finding(
            "18 queries need 18", "test", "loss", "loss", findings.Setting(queries=18), level=1e-2
        ),
        findings.Finding(
            "K = 1 is too few for per-example variances",
            "test",
            "lira_online",
            "lira_online_fixed_var",
            findings.Setting(1),
            findings.Setting(1),
            level=1e-2,
        ),  # fmt: skip
    )
    rows = findings.check(run, num_targets=4, findings=claims, num_resamples=200)
    win, itself, queries, missing_queries, too_few = rows
    targets = [0, 1, 2, 3]
    results = protocol.run_attacks(run, ["lira_online_fixed_var", "loss"], targets)
    expected = metrics_lib.paired_difference(results["lira_online_fixed_var"].scores, results["loss"].scores,
                                             run.keep[targets], 200, 0, "both")  # fmt: skip
    assert win["difference"] == expected["tpr_at_fpr"]["0.01"] and win["reproduced"]
    assert win["a"] == pytest.approx(metrics_lib.summarize(results["lira_online_fixed_var"].scores,
                                                           run.keep[targets])["tpr_at_fpr"]["0.01"])  # fmt: skip
    assert itself["difference"]["difference"] == 0 and itself["reproduced"] is False
    assert queries["difference"] is not None and queries["a"] != queries["b"]
    assert missing_queries["reproduced"] is None
    moved = too_few["finding"].setting_a.num_shadows_used  # raised to the fewest K where both run, together
    assert (
        moved > 1
        and too_few["finding"].setting_b.num_shadows_used == moved
        and too_few["difference"] is not None
    )
    assert studies.is_valid(run.keep, [0, 1, 2, 3], "lira_online", moved)
    assert not studies.is_valid(run.keep, [0, 1, 2, 3], "lira_online", moved - 1)
    text = findings.table(rows, run)
    assert text.count("\n") == len(rows) + 1 and "| calibration wins | test |" in text
    assert (
        "not testable here" in text
        and "(A: all 11 references, 1 query; B: all 11 references, 2 queries)" in text
    )
    assert np.isfinite(win["difference"]["ci95"]).all()


@pytest.mark.slow
def test_findings_script_writes_the_table_and_refuses_a_missing_run(run, tmp_path):
    import subprocess
    import sys

    script = notebook.REPO_ROOT / "experiments" / "findings.py"
    done = subprocess.run([sys.executable, str(script), f"--logdir={run.logdir}", "--num_targets=3", "--bootstrap=50"],
                          capture_output=True, text=True, cwd=notebook.REPO_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    written = (run.logdir / "report" / "findings.md").read_text()
    assert "| LiRA online beats LOSS at low FPR |" in written and written.strip() in done.stdout
    missing = subprocess.run([sys.executable, str(script), f"--logdir={tmp_path / 'none'}"],
                             capture_output=True, text=True, cwd=notebook.REPO_ROOT)  # fmt: skip
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "findings.py:" in missing.stderr


def test_rmia_against_lira_at_each_k_at_a_resolvable_level_with_auc(run):
    rmia_rows = [f for f in findings.PAPER_FINDINGS if f.a.startswith("rmia_")]
    expected_pairs = []
    for mode in ("offline", "online"):
        expected_pairs += [(f"rmia_{mode}", f"lira_{mode}_fixed_var", k) for k in (1, 2, 4)]
        expected_pairs += [
            (f"rmia_{mode}", f"lira_{mode}", None),
            (f"rmia_{mode}", f"lira_{mode}_fixed_var", None),
        ]
    assert [(f.a, f.b, f.setting_a.num_shadows_used) for f in rmia_rows] == expected_pairs
    targets = [0, 1, 2, 3]  # 1,200 non-members: 0.1% FPR is 1.2 false positives, 1% is 12
    rows = findings.check(run, num_targets=4, findings=rmia_rows, num_resamples=100)
    assert all(row["level"] == 1e-2 and row["difference"] is not None for row in rows)
    offline_one = rows[0]
    assert offline_one["finding"].setting_a.num_shadows_used == 1  # runs at K = 1, not moved up
    assert offline_one["finding"].setting_b.num_shadows_used == 1
    results = protocol.run_attacks(run, ["rmia_offline", "lira_offline_fixed_var"],
                                   targets, num_shadows_used=1)  # fmt: skip
    expected = metrics_lib.paired_difference(results["rmia_offline"].scores,
                                             results["lira_offline_fixed_var"].scores, run.keep[targets], 100, 0,
                                             "both")  # fmt: skip
    assert offline_one["difference"] == expected["tpr_at_fpr"]["0.01"]
    assert offline_one["auc_difference"] == expected["auc"]
    online_one = rows[5]  # online needs one IN and one OUT of the first K: raised, together
    moved = online_one["finding"].setting_a.num_shadows_used
    assert moved > 1 and online_one["finding"].setting_b.num_shadows_used == moved
    text = findings.table(rows, run)
    assert text.count("| RMIA beats LiRA") == len(rows) and "@ 1%" in text and "@ 0.1%" not in text
    assert text.rstrip().endswith(findings.RMIA_BASELINE_NOTE) and "two-sided" in rows[0]["finding"].source
    assert "(K = 1 reference, 2 queries)" in text and "two-sided" not in online_one["finding"].source


def test_lira_offline_fixed_var_at_one_reference_pools_around_the_global_mean(run):
    targets, seed = [0, 5], 3
    assert studies.is_valid(run.keep, targets, "lira_offline_fixed_var", 1, seed)
    scores = protocol.run_attacks(run, ["lira_offline_fixed_var"], targets,
                                  num_shadows_used=1, seed=seed)["lira_offline_fixed_var"].scores  # fmt: skip
    phi = run.signals.phi.astype(np.float64)  # [M, N, Q]
    order = protocol.reference_order(run.keep.shape[0], seed)
    for row, target in enumerate(targets):
        references = [int(m) for m in order if m != target]
        chosen = []  # per example, the first reference in the order not trained on it
        for n in range(run.keep.shape[1]):
            chosen.append(next(m for m in references if not run.keep[m, n]))
        values = np.array([phi[m, n] for n, m in enumerate(chosen)])  # [N, Q]
        centre = values.mean()
        variance = sum((v - centre) ** 2 for v in values.ravel()) / (values.size - 1)
        for n in range(run.keep.shape[1]):
            expected = np.mean([norm.logcdf((phi[target, n, q] - values[n, q]) / np.sqrt(variance))
                                for q in range(phi.shape[2])])  # fmt: skip
            assert scores[row, n] == pytest.approx(expected, rel=1e-9, abs=1e-9)
