"""lira.api.audit and lira.run.external: arrays from elsewhere, audited as the attack stage would."""

import numpy as np
import pytest

from lira import api, config
from lira import metrics as metrics_lib
from lira.run import external, layout, records
from lira.run.synthetic import make_synthetic_rundir
from lira.stages import attack

ATTACKS = ["loss", "lira_online", "lira_offline", "rmia_online"]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """(logdir, logits [M, N, Q, C], keep, labels) of a synthetic run with a planted signal."""
    logdir = tmp_path_factory.mktemp("run")
    make_synthetic_rundir(logdir, num_models=10, num_examples=200, num_queries=2, signal=2.0)
    keep, labels = records.load_keep(logdir), records.load_labels(logdir)
    logits = np.stack([np.load(layout.logits_path(logdir, m)) for m in range(len(keep))])
    return logdir, logits, keep, labels


def test_audit_equals_the_attack_stage(arrays):
    logdir, logits, keep, labels = arrays
    result = api.audit(logits, keep, labels, attacks=ATTACKS, num_targets=3, bootstrap=20)
    metrics = attack.attack(logdir, config.AttackConfig(attacks=ATTACKS, num_targets=3, bootstrap=20))
    for name in ATTACKS:
        stage_scores = np.load(logdir / layout.REPORT_DIR / layout.SCORES_DIR / f"{name}.npy")
        np.testing.assert_array_equal(result.scores(name), stage_scores)
        assert result.metrics["attacks"][name]["auc"] == metrics["attacks"][name]["auc"]
        assert result.metrics["attacks"][name]["ci95"] == metrics["attacks"][name]["ci95"]
    assert result.targets == [0, 1, 2]
    np.testing.assert_array_equal(result.membership, keep[:3])


def test_audit_finds_the_planted_signal_and_compares(arrays, tmp_path):
    _, logits, keep, labels = arrays
    result = api.audit(logits[..., 0, :], keep, labels, attacks=["loss", "lira_online"], num_targets=4)
    assert result.metrics["num_queries"] == 1
    difference = result.compare("lira_online", "loss", num_resamples=50)
    assert result.metrics["attacks"]["lira_online"]["auc"] > 0.7  # the planted signal is found
    direct = (
        metrics_lib.summarize(result.scores("lira_online"), result.membership)["auc"]
        - (metrics_lib.summarize(result.scores("loss"), result.membership)["auc"])
    )
    assert difference["auc"]["difference"] == pytest.approx(direct)
    assert "lira_online" in result.table()
    assert result.tpr_at("lira_online", 0.1) is not None
    assert result.plot_roc(tmp_path / "roc.png").stat().st_size > 0
    with pytest.raises(ValueError, match="'rmia_online' was not run"):
        result.scores("rmia_online")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda lo, k, la: (lo[:, :, 0, :1], k, la), "one column"),
        (lambda lo, k, la: (lo, k[:-1], la), r"keep must be \[M=10, N=200\]"),
        (lambda lo, k, la: (lo, k, np.where(np.arange(len(la)) == 7, -1, la)), r"labels -1 \(example 7\) outside the 3 classes 0\.\.2: labels must be in \[0, C\)"),
        (lambda lo, k, la: (lo, k, np.where(np.arange(len(la)) == 3, 3, la)), r"labels 3 \(example 3\) outside the 3 classes 0\.\.2"),
        (lambda lo, k, la: (np.where(np.arange(200)[None, :, None, None] == 5, np.nan, lo), k, la),
         r"not finite for model 0 at examples \[5\]"),
        (lambda lo, k, la: (np.exp(lo) / np.exp(lo).sum(-1, keepdims=True), k, la), "look like probabilities"),
        (lambda lo, k, la: (lo, k.astype(int) * 2, la), "bool or 0/1"),
    ],
)  # fmt: skip
def test_bad_arrays_are_refused_before_any_attack(arrays, change, message):
    _, logits, keep, labels = arrays
    with pytest.raises(ValueError, match=message):
        api.audit(*change(logits, keep, labels), attacks=["loss"])


def test_conversions_on_request(arrays):
    _, logits, keep, labels = arrays
    binary = (labels % 2).astype(np.int32)
    z = logits[..., 1:2] - logits[..., 0:1]
    converted, _, _ = external.check_arrays(z, keep, binary, binary_logit=True)
    assert converted.shape == logits.shape[:3] + (2,)
    np.testing.assert_allclose(converted[..., 1] - converted[..., 0], z[..., 0], rtol=1e-6)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    back, _, _ = external.check_arrays(probabilities, keep, labels, from_probabilities=True)
    # log-softmax differs from the logits by a per-row constant: the same softmax
    shifted = back - back[..., :1]
    np.testing.assert_allclose(shifted, logits - logits[..., :1], atol=1e-4)


def test_an_attack_short_of_references_is_left_out_with_its_reason(tmp_path):
    """4 models: each example has one IN and one OUT reference per target, enough for RMIA, not
    for LiRA's per-example variances (2 of each); the stage and the API run the rest."""
    make_synthetic_rundir(tmp_path, num_models=4, num_examples=60)
    names = ["loss", "lira_online", "rmia_online"]
    metrics = attack.attack(
        tmp_path, config.AttackConfig(attacks=names, num_targets=2, bootstrap=0), progress=False
    )
    assert list(metrics["attacks"]) == ["loss", "rmia_online"]
    assert "needs >= 2 IN references" in metrics["skipped"]["lira_online"]
    report = (tmp_path / layout.REPORT_DIR / "report.md").read_text()
    assert "Not run: lira_online, lira_online needs >= 2 IN references" in report
    with pytest.raises(ValueError, match="lira_online needs >= 2 IN references"):
        attack.attack(
            tmp_path, config.AttackConfig(attacks=names, num_targets=2, strict=True), progress=False
        )
    logits = np.stack([np.load(layout.logits_path(tmp_path, m)) for m in range(4)])
    keep, labels = records.load_keep(tmp_path), records.load_labels(tmp_path)
    result = api.audit(logits, keep, labels, attacks=names, num_targets=2, bootstrap=0)
    assert list(result.results) == ["loss", "rmia_online"] and "lira_online" in result.metrics["skipped"]
    with pytest.raises(ValueError, match="No attack can run on these models: lira_online"):
        api.audit(logits, keep, labels, attacks=["lira_online"], num_targets=2)
