"""The audit report: files, table, per-example vulnerability."""

import csv

import numpy as np
import pytest

from lira import metrics as metrics_lib
from lira import report
from lira.audit import AttackResult


def fake_run(num_models=6, num_examples=40, seed=0):
    rng = np.random.default_rng(seed)
    keep = np.zeros((num_models, num_examples), bool)
    for j in range(num_examples):
        keep[rng.permutation(num_models)[: num_models // 2], j] = True
    labels = rng.integers(0, 3, num_examples).astype(np.int32)
    targets = [0, 1, 2]
    membership = keep[targets]
    perfect = np.where(membership, 1.0, 0.0) + 0.01 * rng.random(membership.shape)
    noise = rng.normal(size=membership.shape)
    results = {"lira_online": AttackResult(perfect, targets), "loss": AttackResult(noise, targets)}
    metrics = {
        "num_models": num_models, "num_targets": 3, "num_queries": 2,
        "attacks": {n: metrics_lib.attack_metrics(r.scores, membership, num_resamples=20) for n, r in results.items()},
    }  # fmt: skip
    return results, metrics, labels, keep


def test_catch_fpr_matches_direct_count():
    rng = np.random.default_rng(1)
    scores, membership = rng.normal(size=(3, 30)), rng.random((3, 30)) < 0.5
    got = report.catch_fpr(scores, membership)
    for t in range(3):
        for j in range(30):
            if membership[t, j]:
                nonmember = scores[t, ~membership[t]]
                assert got[t, j] == pytest.approx(np.mean(nonmember >= scores[t, j]))
            else:
                assert np.isnan(got[t, j])


def test_per_example_order_puts_exposed_examples_first():
    results, _, labels, keep = fake_run()
    scores = results["lira_online"].scores.copy()
    membership = keep[[0, 1, 2]]
    scores[:] = 0.0
    exposed = int(np.flatnonzero(membership.any(axis=0))[0])
    scores[:, exposed] = np.where(membership[:, exposed], 10.0, 0.0)
    results["lira_online"] = AttackResult(scores, [0, 1, 2])
    header, rows, order = report.per_example_table(results, labels, keep)
    assert order[0] == exposed and rows[0][0] == exposed
    assert rows[0][header.index("catch_fpr")] == 0.0
    assert rows[0][header.index("in_count")] == keep[:, exposed].sum()


def test_format_table_marks_unresolvable_levels():
    _, metrics, _, _ = fake_run()
    text = report.format_table(metrics)
    assert "n/r" in text  # 1e-5 cannot be resolved with ~60 non-members
    assert "lira_online" in text and "100.00%" in text  # the perfect attack catches everyone at 10% FPR


@pytest.mark.parametrize("with_images", [True, False])
def test_write_report_files(tmp_path, with_images):
    results, metrics, labels, keep = fake_run()
    images = np.random.default_rng(0).integers(0, 255, (keep.shape[1], 8, 8, 3), dtype=np.uint8)
    config = {"flags": {"dataset": "digits", "arch": "cnn32", "epochs": 2}, "data": {"num_examples": 40}}
    train_log = [
        {"model": m, "epoch": e, "loss": 1.0, "train_acc": 0.5 + e / 10, "test_acc": 0.4}
        for m in range(6)
        for e in (1, 2)
    ]
    report.write_report(tmp_path, results, metrics, labels=labels, keep=keep, config=config, train_log=train_log,
                        images=images if with_images else None)  # fmt: skip
    for name in ["roc.png", "roc_log.png", "histograms.png", "per_class.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "vulnerable_examples.png").exists() == with_images
    with open(tmp_path / "per_example.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {"example", "label", "in_count", "catch_fpr", "score_loss"} <= set(rows[0])
    fprs = [float(r["catch_fpr"]) for r in rows if r["catch_fpr"]]
    assert fprs == sorted(fprs)
    markdown = (tmp_path / "report.md").read_text()
    assert "| lira_online |" in markdown and "![roc_log.png](roc_log.png)" in markdown
    assert "train 70.0% ± 0.0" in markdown  # last epoch's accuracy
