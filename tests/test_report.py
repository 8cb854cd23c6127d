"""The audit report: files, tables, per-example vulnerability, per-class threshold."""

import csv

import numpy as np
import pytest
from matplotlib import image as mpl_image

from lira import metrics as metrics_lib
from lira import report
from lira.attacks.protocol import AttackResult
from lira.run import layout, records
from lira.run.reader import Run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["roc.png", "roc_log.png", "histograms.png", "per_class.png"]


def fake_run(num_models=6, num_examples=40, seed=0):
    """Two attacks on 3 targets: lira_online separates members perfectly, loss is noise."""
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


def fake_config_and_log(num_models=6):
    config = records.RunRecord.from_json({
        "flags": {"dataset": "digits", "arch": "cnn32", "epochs": 2, "num_shadows": num_models},
        "data": {"name": "digits", "num_examples": 40, "num_classes": 3, "input_shape": [8, 8, 3]},
        "git_commit": "0123456789abcdef",
        "inference": {"queries": 2},
    })  # fmt: skip
    # Rows out of epoch order: the last epoch must win, not the last row.
    train_log = [
        {"model": m, "epoch": e, "loss": 1.0, "train_acc": 0.5 + e / 10, "test_acc": 0.4}
        for e in (2, 1)
        for m in range(num_models)
    ]
    return config, train_log


def test_catch_fpr_matches_direct_count():
    rng = np.random.default_rng(1)
    scores, membership = rng.normal(size=(3, 30)), rng.random((3, 30)) < 0.5
    got = metrics_lib.catch_fpr(scores, membership)
    for t in range(3):
        for j in range(30):
            if membership[t, j]:
                nonmember = scores[t, ~membership[t]]
                assert got[t, j] == pytest.approx(np.mean(nonmember >= scores[t, j]))
            else:
                assert np.isnan(got[t, j])


def test_per_example_table_hand_computed_case():
    # Target 0: members 0, 1; non-members score 0.5, 0.3 -> catch FPR of example 0 is 0, of 1 is 1.
    # Target 1: members 0, 2; non-members score 0.8, 0.6 -> example 0: 1, example 2: 0.5.
    # Medians: 0 -> 0.5, 1 -> 1, 2 -> 0.5, 3 -> none. Examples 0 and 2 tie; 2's member score is higher.
    keep = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], bool)
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.6]])
    results = {"loss": AttackResult(-scores, [0, 1]), "lira_online": AttackResult(scores, [0, 1])}
    header, rows, order = report.per_example_table(results, np.array([0, 1, 0, 1]), keep)
    assert report.main_attack(results) == "lira_online"
    assert order.tolist() == [2, 0, 1, 3] and [r[0] for r in rows] == [2, 0, 1, 3]
    column = {name: [r[header.index(name)] for r in rows] for name in header}
    assert column["catch_fpr"][:3] == [0.5, 0.5, 1.0] and np.isnan(column["catch_fpr"][3])
    assert column["in_count"] == [2, 2, 1, 1] and column["in_targets"] == [1, 2, 1, 0]
    assert all(np.isnan(column["caught_at_0.1%_fpr"]))  # 2 non-members cannot resolve FPR 0.1%
    assert column["score_loss"] == pytest.approx([-0.6, -0.55, -0.45, -0.45])


def test_caught_at_fpr_when_resolvable():
    rng = np.random.default_rng(0)
    membership = rng.random((1, 4000)) < 0.5  # ~2000 non-members resolve FPR 0.1%
    scores = membership + 0.01 * rng.random(membership.shape)
    keep = np.concatenate([membership, ~membership])
    header, rows, _ = report.per_example_table(
        {"lira_online": AttackResult(scores, [0])}, np.zeros(4000, np.int32), keep
    )
    caught = [r[header.index("caught_at_0.1%_fpr")] for r in rows]
    members = int(membership.sum())
    assert caught[:members] == [1.0] * members and all(np.isnan(caught[members:]))


def test_per_example_order_puts_exposed_examples_first():
    results, _, labels, keep = fake_run()
    membership = keep[[0, 1, 2]]
    scores = np.zeros(membership.shape)
    exposed = int(np.flatnonzero(membership.any(axis=0))[0])
    scores[:, exposed] = np.where(membership[:, exposed], 10.0, 0.0)
    results["lira_online"] = AttackResult(scores, [0, 1, 2])
    header, rows, order = report.per_example_table(results, labels, keep)
    assert order[0] == exposed and rows[0][0] == exposed
    assert rows[0][header.index("catch_fpr")] == 0.0
    assert rows[0][header.index("in_count")] == keep[:, exposed].sum()


def hand_metrics(ci95):
    tprs = {"1e-05": None, "0.0001": None, "0.001": 0.0004, "0.01": 0.032, "0.1": 0.5}
    entry = {"auc": 0.71234, "balanced_acc": 0.64, "tpr_at_fpr": tprs, "min_resolvable_fpr": 0.001}
    if ci95 is not None:
        entry["ci95"] = ci95
    return {"num_models": 8, "num_targets": 2, "num_queries": 1, "attacks": {"lira_online": entry}}


@pytest.mark.parametrize("nested", [True, False])
def test_format_table_cells(nested):
    intervals = {"auc": [0.7, 0.73], "tpr_at_fpr": {"0.01": [0.021, 0.045], "1e-05": None}}
    text = report.format_table(
        hand_metrics({"examples": intervals, "targets": None} if nested else intervals)
    )
    header, row = text.splitlines()[1], text.splitlines()[3]
    assert header.split()[4:] == ["TPR@0.001%", "TPR@0.01%", "TPR@0.1%", "TPR@1%", "TPR@10%"]
    cells = [c.strip() for c in row.split("  ") if c.strip()]
    assert cells == ["lira_online", "0.712 [0.700, 0.730]", "0.640", "n/r", "n/r", "0.04%", "3.20% [2.10, 4.50]",
                     "50.0%"]  # fmt: skip
    assert "not resolvable" in text and "1/#non-members = 0.001" in text


def test_format_table_without_optional_fields():
    metrics = hand_metrics(None)
    del metrics["attacks"]["lira_online"]["min_resolvable_fpr"]
    metrics["attacks"]["loss"] = {"auc": 0.5, "tpr_at_fpr": {"0.1": 0.1}}  # no balanced_acc, fewer levels
    text = report.format_table(metrics)
    assert "[" not in text and "Brackets" not in text  # no intervals to show
    assert "n/r" in text and "not resolvable" in text
    loss_row = next(line for line in text.splitlines() if line.startswith("loss"))
    assert "n/a" in loss_row and "10.0%" in loss_row
    resolved = hand_metrics(None)
    resolved["attacks"]["lira_online"]["tpr_at_fpr"] = {"0.1": 0.25}
    assert "n/r" not in report.format_table(resolved) and "25.0%" in report.format_table(resolved)


def test_pooled_threshold_flags_at_most_the_level():
    scores = np.concatenate([np.arange(100.0), [50.0, 50.0]])
    is_member = np.arange(102) >= 100  # the two members tie with non-member 50
    threshold = metrics_lib.pooled_threshold(scores, is_member, 0.05)
    assert threshold == 94.0 and (scores[~is_member] > threshold).sum() == 5
    assert metrics_lib.pooled_threshold(scores, is_member, 1.0) == -np.inf


@pytest.mark.parametrize("with_images", [True, False])
def test_write_report_files(tmp_path, with_images):
    results, metrics, labels, keep = fake_run()
    images = np.random.default_rng(0).integers(0, 255, (keep.shape[1], 8, 8, 3), dtype=np.uint8)
    config, train_log = fake_config_and_log()
    run = Run(keep, labels, record=config, train_log=train_log)
    report.write_report(tmp_path, results, metrics, run, images=images if with_images else None,
                        class_names=["ant", "bee", "cow"])  # fmt: skip
    for name in FIGURES + (["vulnerable_examples.png"] if with_images else []):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
        assert min(mpl_image.imread(tmp_path / name).shape[:2]) > 100
    assert (tmp_path / "vulnerable_examples.png").exists() == with_images
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    with open(tmp_path / "per_example.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and sorted(int(r["example"]) for r in rows) == list(range(40))
    assert {
        "example",
        "label",
        "in_count",
        "in_targets",
        "catch_fpr",
        "score_lira_online",
        "score_loss",
    } <= set(rows[0])
    fprs = [float(r["catch_fpr"]) for r in rows if r["catch_fpr"]]
    assert fprs == sorted(fprs) and fprs[0] == 0.0  # the perfect attack catches members at FPR 0
    assert all(not r["catch_fpr"] for r in rows[len(fprs) :])  # never a member of a target: last
    assert all(int(r["in_count"]) == keep[:, int(r["example"])].sum() for r in rows)
    markdown = (tmp_path / "report.md").read_text()
    assert report.markdown_table(metrics) in markdown and "| lira_online | 1.000" in markdown
    for name in FIGURES:
        assert f"]({name})" in markdown
    assert ("](vulnerable_examples.png)" in markdown) == with_images
    assert "train 70.0% ± 0.0, test 40.0% ± 0.0" in markdown  # each model's last epoch
    assert "not resolvable" in markdown and "`cnn32`" in markdown and "M = 6" in markdown


def test_write_report_removes_a_stale_grid(tmp_path):
    results, metrics, labels, keep = fake_run()
    config, train_log = fake_config_and_log()
    images = np.zeros((40, 8, 8, 1), np.uint8)
    run = Run(keep, labels, record=config, train_log=train_log)
    report.write_report(tmp_path, results, metrics, run, images=images)
    assert (tmp_path / "vulnerable_examples.png").exists()
    report.write_report(tmp_path, results, metrics, run, images=None)
    assert not (tmp_path / "vulnerable_examples.png").exists()
    assert "vulnerable_examples.png" not in (tmp_path / "report.md").read_text()


def test_write_report_rejects_mismatched_inputs_before_writing(tmp_path):
    results, metrics, labels, keep = fake_run()
    config, train_log = fake_config_and_log()
    with pytest.raises(ValueError, match="N=40"):
        run = Run(keep, labels[:-1], record=config, train_log=train_log)
        report.write_report(tmp_path / "a", results, metrics, run)
    with pytest.raises(ValueError, match="images"):
        images = np.zeros((39, 8, 8, 1), np.uint8)
        run = Run(keep, labels, record=config, train_log=train_log)
        report.write_report(tmp_path / "b", results, metrics, run, images=images)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_model_accuracies_use_each_models_last_epoch():
    log = [{"model": 0, "epoch": 2, "train_acc": 0.9, "test_acc": 0.7},
           {"model": 0, "epoch": 1, "train_acc": 0.1, "test_acc": 0.1},
           {"model": 1, "epoch": 2, "train_acc": 0.7, "test_acc": None}]  # fmt: skip
    accuracy = layout.final_accuracies(log)
    assert accuracy["models"] == 2 and accuracy["train_acc"] == pytest.approx(
        (0.8, np.std([0.9, 0.7], ddof=1))
    )
    assert accuracy["test_acc"] == (0.7, 0.0)
    assert layout.final_accuracies([]) == {"models": 0}
