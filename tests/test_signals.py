"""Signals against their textbook definitions, including where the naive formulas break."""

import numpy as np

from lira import signals


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
