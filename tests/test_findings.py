"""The papers' findings table: each row a paired verdict, computed with the driver's own attacks."""

import numpy as np
import pytest

from lira import findings, studies
from lira import metrics as metrics_lib
from lira.attacks import protocol
from lira.run import synthetic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("findings")
    synthetic.make_synthetic_rundir(
        logdir, num_models=12, num_examples=600, num_queries=2, signal=1.5, seed=2
    )
    return studies.load_run(logdir)


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
    results = protocol.run_attacks(
        run.signals, run.keep, run.labels, ["lira_online_fixed_var", "loss"], targets
    )
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


def test_findings_script_writes_the_table_and_refuses_a_missing_run(run, tmp_path):
    import subprocess
    import sys

    script = studies.REPO_ROOT / "experiments" / "findings.py"
    done = subprocess.run([sys.executable, str(script), f"--logdir={run.logdir}", "--num_targets=3", "--bootstrap=50"],
                          capture_output=True, text=True, cwd=studies.REPO_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    written = (run.logdir / "report" / "findings.md").read_text()
    assert "| LiRA online beats LOSS at low FPR |" in written and written.strip() in done.stdout
    missing = subprocess.run([sys.executable, str(script), f"--logdir={tmp_path / 'none'}"],
                             capture_output=True, text=True, cwd=studies.REPO_ROOT)  # fmt: skip
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "findings.py:" in missing.stderr
