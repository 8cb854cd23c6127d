"""The white-box attacks: planted signals are found, the run decides whether 'all' includes them,
and Nasr et al.'s attack network never trains on its target's outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import audit_run
from sklearn.metrics import roc_auc_score
from test_shokri import balanced_keep, make_inputs, planted_logits

from lira.attacks import ATTACKS, WHITE_BOX, nasr
from lira.run import layout, reader, records, synthetic
from lira.run.reader import read_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("planted_whitebox")
    synthetic.make_synthetic_rundir(
        logdir, num_models=12, num_examples=600, signal=1.5, seed=3, whitebox=True
    )
    return logdir


def test_all_includes_the_white_box_attacks_and_they_find_a_planted_signal(planted):
    metrics, results = audit_run(planted, ["all"], num_targets=3, bootstrap=0)
    assert set(WHITE_BOX) <= set(results) and metrics["whitebox"]["layers"] == ["layer_0", "layer_1"]
    for name in WHITE_BOX:
        assert metrics["attacks"][name]["auc"] > 0.7, (name, metrics["attacks"][name]["auc"])
    # The per-example Gaussian fits calibrate the example's difficulty; the raw norm does not.
    keep = records.load_keep(planted)
    raw = np.stack([-np.load(layout.whitebox_path(planted, t, "norms"))[..., -1].mean(-1) for t in range(3)])
    raw_auc = np.mean([roc_auc_score(keep[t], raw[t]) for t in range(3)])
    assert metrics["attacks"]["whitebox_lira_online"]["auc"] > raw_auc + 0.1


def test_a_black_box_run_leaves_them_out_and_refuses_them_by_name(tmp_path, monkeypatch, capsys):
    synthetic.make_synthetic_rundir(tmp_path, num_models=6, num_examples=60)
    metrics, _ = audit_run(tmp_path, ["all"], num_targets=1, bootstrap=0)
    assert not set(WHITE_BOX) & set(metrics["attacks"]) and "no white-box signals" in capsys.readouterr().out

    def fail(*_, **__):
        raise AssertionError("signals were read before the check")

    monkeypatch.setattr(reader.Run, "with_signals", fail)
    with pytest.raises(ValueError, match="whitebox_nasr needs white-box signals.*--whitebox"):
        audit_run(tmp_path, ["loss", "whitebox_nasr"], num_targets=1)


def test_grad_signal_is_minus_log_of_the_whole_model_norm(planted):
    signals = read_run(planted).with_signals(whitebox=True).signals
    norms, features = signals.whitebox(4)
    np.testing.assert_allclose(signals.grad[4], -np.log(norms[..., -1]), rtol=1e-6)
    assert features.shape == (600, 2, 4) and signals.grad.shape == (12, 600, 2)


def whitebox_inputs(signal: float, num_models=8, num_examples=240, num_targets=2, seed=0):
    """AttackInputs with in-memory white-box signals planted like lira.run.synthetic's."""
    keep = balanced_keep(num_models, num_examples, seed)
    labels = np.random.default_rng(seed).integers(0, 3, num_examples)
    inputs = make_inputs(planted_logits(keep, labels, 2, 3, signal, seed), labels, keep, num_targets)
    rng = np.random.default_rng(seed + 1)
    norms = np.exp(-(rng.standard_normal((num_models, num_examples, 2, 3)) + signal * keep[:, :, None, None]))
    features = rng.standard_normal((num_models, num_examples, 2, 4)) + signal * keep[:, :, None, None]
    inputs.signals.grad = -np.log(norms[..., -1]).astype(np.float32)
    inputs.signals.whitebox = lambda m: (norms[m].astype(np.float32), features[m].astype(np.float32))
    return inputs, keep, norms, features


def test_nasr_never_trains_on_its_target():
    # Poison model 0's white-box outputs on half the examples. Target 0's scores on the other
    # half depend only on its network, so they stay identical unless a poisoned output was
    # trained on. Target 1 has model 0 as a reference: its scores must change (the poison does
    # reach a training set that includes it, so this test can see a leak).
    inputs, keep, norms, features = whitebox_inputs(1.0)
    clean = nasr.whitebox_nasr(inputs, max_train=10**6)
    half = np.arange(keep.shape[1]) % 2 == 0
    norms[0, half] *= 1e6
    features[0, half] += 1e3
    dirty = nasr.whitebox_nasr(inputs, max_train=10**6)
    np.testing.assert_array_equal(dirty[0, ~half], clean[0, ~half])
    assert not np.array_equal(dirty[0, half], clean[0, half])
    assert not np.array_equal(dirty[1], clean[1])


@pytest.mark.parametrize("use", [["gradients"], ["activations"], ["loss", "label"]])
@pytest.mark.slow
def test_nasr_inputs_each_carry_the_signal_they_should(use):
    inputs, keep, *_ = whitebox_inputs(2.0)
    scores = nasr.whitebox_nasr(inputs, use=use)
    auc = np.mean([roc_auc_score(keep[t], scores[t]) for t in range(2)])
    assert auc > 0.75, (use, auc)
    with pytest.raises(ValueError, match="Unknown Nasr inputs"):
        nasr.whitebox_nasr(inputs, use=["weights"])


@pytest.mark.slow
def test_attack_script_reports_gradient_norms(planted, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [f"--logdir={planted}", "--attacks=loss,whitebox_lira_online,whitebox_nasr", "--nasr_inputs=gradients",
            "--num_targets=2", "--bootstrap=10"]  # fmt: skip
    result = subprocess.run([sys.executable, "experiments/attack.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = planted / "report"
    assert (report / "gradient_norms.png").stat().st_size > 10_000
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["attack_options"]["whitebox_nasr"] == {"use": ["gradients"]}
    assert "gradient_norms.png" in (report / "report.md").read_text()
    header = (report / "per_example.csv").read_text().splitlines()[0]
    assert "score_whitebox_nasr" in header
    assert all(ATTACKS[name].needs_whitebox for name in WHITE_BOX)


def test_whitebox_comparison_pairs_each_white_box_attack_with_the_best_black_box_one(planted):
    from lira import notebook, studies

    run = notebook.load_run(planted, whitebox=True)
    metrics, rows = studies.whitebox_comparison(run, num_targets=3, level=0.1, num_resamples=50)
    assert [row["a"] for row in rows] == WHITE_BOX and len({row["b"] for row in rows}) == 1
    best = rows[0]["b"]
    assert best in studies.WHITEBOX_RIVALS and not ATTACKS[best].needs_whitebox
    key = "0.1"  # 1% allows fewer than metrics.MIN_FALSE_POSITIVES false positives here
    assert metrics["attacks"][best]["tpr_at_fpr"][key] == max(
        metrics["attacks"][name]["tpr_at_fpr"][key] for name in studies.WHITEBOX_RIVALS
    )
    with pytest.raises(ValueError, match="load_run"):
        studies.whitebox_comparison(notebook.load_run(planted), num_targets=1)


@pytest.mark.slow
def test_whitebox_script_writes_its_table(planted):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [f"--logdir={planted}", "--num_targets=2", "--bootstrap=20", "--level=0.01"]
    result = subprocess.run([sys.executable, "experiments/whitebox.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = (planted / "report" / "whitebox.md").read_text()
    assert "whitebox_nasr" in text and "paired 95% verdict" in text


@pytest.mark.parametrize("name", WHITE_BOX)
def test_white_box_attacks_take_all_targets_at_once_like_one_at_a_time(name):
    together, *_ = whitebox_inputs(1.0, num_targets=3)
    alone, *_ = whitebox_inputs(1.0, num_targets=1)
    scores_together, scores_alone = ATTACKS[name].fn(together), ATTACKS[name].fn(alone)
    if name == "whitebox_nasr":  # a network per target, seeded per target: compare rankings
        keep = balanced_keep(8, 240, 0)
        assert roc_auc_score(keep[0], scores_alone[0]) == pytest.approx(roc_auc_score(keep[0], scores_together[0]),
                                                                         abs=0.05)  # fmt: skip
    else:
        np.testing.assert_allclose(scores_together[0], scores_alone[0], rtol=1e-9, atol=1e-12)
