"""The driver: leave-one-out, num_shadows_used, checks before work, and the metrics it returns."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lira import attacks, audit, rundir, signals, synthetic
from lira.attacks import ATTACKS, AttackSpec, References


@pytest.fixture
def run(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=10, num_examples=40, signal=1.0, seed=0)
    return tmp_path


def spy(monkeypatch, references_kind):
    """Registers an attack "spy" that records the references it is given (and scores 0)."""
    seen = []

    def fn(target, references, context):
        seen.append(dataclasses.replace(references, signals=references.signals.select(slice(None))))
        return np.zeros(len(context.labels))

    monkeypatch.setitem(ATTACKS, "spy", AttackSpec(fn, references_kind, 0, 1))
    return seen


def load(run):
    return signals.run_signals(run), rundir.load_keep(run), rundir.load_labels(run)


def test_target_outputs_never_reach_its_references(run, monkeypatch):
    seen = spy(monkeypatch, "in_and_out")
    run_signals, keep, labels = load(run)
    audit.run_attacks(run_signals, keep, labels, ["spy"], targets=[0, 1])
    poisoned = signals.Signals(*(a.copy() for a in (run_signals.phi, run_signals.ce, run_signals.prob)))
    poisoned.phi[0], poisoned.ce[0], poisoned.prob[0] = 1e6, -1e6, np.nan  # only target 0's outputs change
    audit.run_attacks(poisoned, keep, labels, ["spy"], targets=[0])
    first, _, again = seen
    np.testing.assert_array_equal(first.signals.phi, again.signals.phi)
    np.testing.assert_array_equal(first.signals.ce, again.signals.ce)
    assert len(first.is_in) == 9 and np.isfinite(first.signals.prob).all()
    order = audit.reference_order(10, seed=0)
    np.testing.assert_array_equal(first.signals.phi, run_signals.phi[order[order != 0]])


def test_lira_scores_equal_the_attack_on_hand_built_leave_one_out_references(run):
    run_signals, keep, labels = load(run)
    result = audit.run_attacks(run_signals, keep, labels, ["lira_online", "lira_offline"], targets=[3])
    others = [m for m in range(10) if m != 3]  # the order of references does not matter without K
    refs = References(run_signals.select(others), keep[others], ~keep[others])
    for name in ("lira_online", "lira_offline"):
        expected = ATTACKS[name].fn(run_signals.select(3), refs, None)
        np.testing.assert_allclose(result[name].scores[0], expected, rtol=1e-10)
        assert result[name].targets == [3]


def test_num_shadows_used_picks_the_same_first_k_for_online_and_first_k_out_for_offline(run, monkeypatch):
    run_signals, keep, labels = load(run)
    order = audit.reference_order(10, seed=5)
    seen = spy(monkeypatch, "in_and_out")
    audit.run_attacks(run_signals, keep, labels, ["spy"], targets=[2], num_shadows_used=6, seed=5)
    chosen = order[order != 2][:6]
    np.testing.assert_array_equal(seen[0].signals.phi, run_signals.phi[chosen])
    np.testing.assert_array_equal(seen[0].is_in, keep[chosen])
    seen = spy(monkeypatch, "out")
    audit.run_attacks(run_signals, keep, labels, ["spy"], targets=[2], num_shadows_used=3, seed=5)
    is_out = seen[0].is_out
    assert (is_out.sum(axis=0) == 3).all() and not seen[0].is_in.any()
    rows = order[order != 2]
    for example in range(keep.shape[1]):
        first_out = [r for r, m in enumerate(rows) if not keep[m, example]][:3]
        assert np.flatnonzero(is_out[:, example]).tolist() == first_out


def test_num_shadows_used_changes_online_scores_reproducibly(run):
    run_signals, keep, labels = load(run)
    full = audit.run_attacks(run_signals, keep, labels, ["lira_online"], [0])["lira_online"].scores
    part = audit.run_attacks(run_signals, keep, labels, ["lira_online"], [0], num_shadows_used=8, seed=1)
    again = audit.run_attacks(run_signals, keep, labels, ["lira_online"], [0], num_shadows_used=8, seed=1)
    assert not np.allclose(full, part["lira_online"].scores)
    np.testing.assert_array_equal(part["lira_online"].scores, again["lira_online"].scores)


def test_errors_come_before_work_and_name_the_problem(run, monkeypatch):
    def fail(*_):
        raise AssertionError("signals were read before the checks")

    monkeypatch.setattr(audit, "run_signals", fail)
    with pytest.raises(ValueError, match="choose from"):
        audit.run_audit(run, ["lira_online", "lira_onlien"])
    with pytest.raises(ValueError, match="num_shadows_used=10"):
        audit.run_audit(run, ["loss"], num_shadows_used=10)
    with pytest.raises(
        ValueError, match=r"too large for offline attack lira_offline: for target 0, example \d+"
    ):
        audit.run_audit(run, ["lira_offline"], num_shadows_used=5)
    with pytest.raises(
        ValueError, match=r"lira_online needs >= 2 (IN|OUT) references per example, but for target"
    ):
        audit.run_audit(run, ["lira_online"], num_shadows_used=2)
    with pytest.raises(
        ValueError, match=r"lira_offline_fixed_var pools one OUT variance .* no example has more than 1"
    ):
        audit.run_audit(run, ["lira_offline_fixed_var"], num_shadows_used=1)
    with pytest.raises(ValueError, match="takes"):
        audit.run_audit(run, ["lira_online"], attack_options={"lira_online": {"gamma": 2.0}})


def test_run_audit_returns_metrics_for_every_attack(run):
    options = {"rmia_offline": {"offline_a": 0.5, "gamma": 1.5}, "shokri": {"classifier": "logreg"}}
    metrics, results = audit.run_audit(run, ["all"], num_targets=20, bootstrap=20, attack_options=options)
    assert set(results) == set(attacks.ATTACKS) and set(metrics["attacks"]) == set(attacks.ATTACKS)
    assert metrics["num_models"] == 10 and metrics["num_targets"] == 10 and metrics["num_queries"] == 2
    assert results["loss"].scores.shape == (10, 40) and results["loss"].targets == list(range(10))
    figures = metrics["attacks"]["lira_online"]
    assert len(figures["per_target"]["auc"]) == 10 and set(figures["ci95"]) == {"examples", "targets"}
    assert figures["tpr_at_fpr"]["1e-05"] is None  # 200 non-members cannot resolve 1e-5


REPO = Path(__file__).resolve().parents[1]


def run_script(*args):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=environment)


def test_attack_script_end_to_end(run):
    finished = run_script(
        "experiments/attack.py", f"--logdir={run}", "--attacks=loss,lira_online,rmia_offline,shokri",
        "--shokri_classifier=logreg", "--num_targets=2", "--bootstrap=20",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["num_targets"] == 2 and set(metrics["attacks"]) == {
        "loss",
        "lira_online",
        "rmia_offline",
        "shokri",
    }
    assert set(metrics["attacks"]["loss"]["tpr_at_fpr"]) == {"1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert np.load(run / "report" / "scores" / "lira_online.npy").shape == (2, 40)
    assert (run / "report" / "roc_log.png").exists() and "roc_log.png" in finished.stdout


def test_attack_script_rejects_unknown_attacks_before_work(run):
    finished = run_script("experiments/attack.py", f"--logdir={run}", "--attacks=lira_online,lria")
    assert finished.returncode != 0 and "choose from" in finished.stderr and "rmia_offline" in finished.stderr
    assert not (run / "report").exists()


def test_benchmark_quick(tmp_path):
    finished = run_script(
        "experiments/bench_attacks.py", "--quick", "--noisolate", "--attacks=loss,lira_online,rmia_offline",
        "--bootstrap=10", f"--json={tmp_path / 'bench.json'}", f"--workdir={tmp_path}",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert set(result["attacks"]) == {"loss", "lira_online", "rmia_offline"}
    assert result["all"]["peak_rss_gib"] > 0 and "lira_online" in finished.stdout
