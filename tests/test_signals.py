"""Signals against their textbook definitions, including where the naive formulas break."""

import numpy as np
import pytest

from lira.attacks import signals
from lira.run import layout, synthetic


def test_signals_match_definitions_on_moderate_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7, 2, 4))  # [M, N, Q, C]
    labels = rng.integers(0, 4, 7)[:, None]  # [N, 1] broadcasts against [M, N, Q]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_true = np.take_along_axis(probs, np.broadcast_to(labels, (5, 7, 2))[..., None], -1)[..., 0]
    softmax_signal = signals.ProbabilitySignal("softmax", temperature=1.0)
    np.testing.assert_allclose(softmax_signal(logits, labels), p_true, rtol=1e-12)
    cooler = np.exp(logits / 2) / np.exp(logits / 2).sum(-1, keepdims=True)
    p_cool = np.take_along_axis(cooler, np.broadcast_to(labels, (5, 7, 2))[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        signals.ProbabilitySignal("softmax", temperature=2.0)(logits, labels), p_cool, rtol=1e-12
    )
    np.testing.assert_allclose(signals.cross_entropy(logits, labels), -np.log(p_true), rtol=1e-12)
    np.testing.assert_allclose(
        signals.logit_scaled_confidence(logits, labels), np.log(p_true / (1 - p_true)), rtol=1e-9
    )
    np.testing.assert_allclose(signals.softmax(logits), probs, rtol=1e-12)


def test_confidence_is_finite_and_exact_where_the_naive_formula_breaks():
    logits = np.array([[200.0, 0.0, 0.0], [0.0, 200.0, 0.0], [1000.0, 999.0, -5.0]])
    labels = np.array([0, 0, 0])
    phi = signals.logit_scaled_confidence(logits, labels)
    # log(p / (1 - p)) is inf for row 0 (1 - p rounds to 0); the true value is 200 - log 2.
    np.testing.assert_allclose(phi, [200 - np.log(2), -np.logaddexp(200, 0), 1.0 - np.log1p(np.exp(-1004))])
    ce = signals.cross_entropy(logits, labels)
    assert np.all(np.isfinite(ce)) and np.isclose(ce[1], 200 + np.log1p(2 * np.exp(-200)))


def test_run_signals_streams_each_model_like_model_signals(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10, num_queries=2, num_classes=4)
    run = signals.run_signals(tmp_path, signals.ProbabilitySignal())
    labels = layout.load_labels(tmp_path)
    assert run.phi.shape == (3, 10, 2) and run.probability.shape == (3, 10, 2) and run.phi.dtype == np.float32
    for m in range(3):
        logits = np.load(layout.logits_path(tmp_path, m))
        one = signals.model_signals(logits, labels, signals.ProbabilitySignal())
        for name in ("phi", "ce", "probability"):
            np.testing.assert_array_equal(getattr(run, name)[m], one[name])
        np.testing.assert_array_equal(run.logits(m), logits)  # prediction vectors, read back on demand
    assert signals.run_signals(tmp_path).probability is None
    with pytest.raises(ValueError, match="Unknown RMIA signal 'sofmax'"):
        signals.ProbabilitySignal("sofmax")


def test_run_signals_names_missing_and_misshapen_files(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10)
    layout.logits_path(tmp_path, 1).unlink()
    with pytest.raises(layout.RunDirError, match="models 1"):
        signals.run_signals(tmp_path)
    layout.save_npy(layout.logits_path(tmp_path, 1), np.zeros((9, 2, 3), np.float32))
    with pytest.raises(layout.RunDirError, match="00001.npy has shape"):
        signals.run_signals(tmp_path)


def test_model_signals_equal_the_definitions():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(50, 3, 6))
    logits[0, 0] = [300.0, -5, 0, 1, 2, 3]  # a saturated model: 1 - p rounds to 0
    labels = rng.integers(0, 6, 50)
    labels[0] = 0
    one = signals.model_signals(logits, labels, signals.ProbabilitySignal("taylor"))
    np.testing.assert_allclose(
        one["phi"], signals.logit_scaled_confidence(logits, labels[:, None]), rtol=1e-6
    )
    np.testing.assert_allclose(
        one["ce"], signals.cross_entropy(logits, labels[:, None]), rtol=1e-5, atol=1e-30
    )
    np.testing.assert_allclose(
        one["probability"], signals.taylor_soft_margin(logits, labels[:, None]), rtol=1e-6
    )
    assert np.isfinite(one["phi"]).all() and one["phi"][0, 0] > 290
