"""Logits of models lira did not train, checked before any attack reads them.

    logits, keep, labels = external.check_arrays(logits, keep, labels)

What a pipeline of one's own (PyTorch, scikit-learn, a JAX loop) hands over is the same three
arrays the run directory holds: every model's logits on the audit pool, which model trained on
which example, and the labels. Mistakes there do not fail: they give wrong numbers. A softmax
output passed as logits still ranks examples, a label of -1 indexes the last class, a model
with one output column has no "other classes" to compare against. So each is refused here, in
one line that names the array, the model and the example, or converted when the caller says so.
"""

from __future__ import annotations

import numpy as np

from lira.run import layout

# Rows that sum to 1 within this, with every value in [0, 1], are taken for probabilities.
PROBABILITY_TOLERANCE = 1e-3
# What a probability of 0 becomes when probabilities are converted to log-probabilities.
MIN_PROBABILITY = 1e-12


def check_arrays(logits, keep, labels, *, binary_logit: bool = False, from_probabilities: bool = False):
    """(logits float32 [M, N, Q, C], keep bool [M, N], labels int32 [N]) from what a user gives.

    logits: [M, N, C] (one query per example) or [M, N, Q, C]. keep: [M, N], bool or 0/1.
    labels: [N] integers in [0, C). `binary_logit`: logits of shape [..., 1] hold one binary
    classifier's logit z for class 1 and become [0, z] (the same softmax). `from_probabilities`:
    logits that are probabilities (each row in [0, 1], summing to 1) become their logarithms;
    without it they are refused. Raises ValueError naming the array and what would be valid.
    """
    logits = np.asarray(logits)
    if logits.ndim == 3:
        logits = logits[:, :, None, :]
    if logits.ndim != 4:
        raise ValueError(f"logits must be [M, N, C] or [M, N, Q, C]; got shape {logits.shape}.")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be floating point; got dtype {logits.dtype}.")
    num_models, num_examples, _, num_classes = logits.shape
    keep = _keep(keep, num_models, num_examples)
    if num_classes == 1:
        if not binary_logit:
            raise ValueError(
                "logits have one column (C = 1): if they are one binary classifier's logit for class 1, "
                "pass binary_logit=True (--binary_logit) to use [0, z]; otherwise give all C >= 2 logits."
            )
        logits = np.concatenate([np.zeros_like(logits), logits], axis=-1)
        num_classes = 2
    _finite(logits)
    if _are_probabilities(logits):
        if not from_probabilities:
            raise ValueError(
                "logits look like probabilities (every row in [0, 1], summing to 1): pass from_probabilities=True "
                "(--from_probabilities) to use their logarithms, or give the pre-softmax logits."
            )
        logits = np.log(np.maximum(logits, MIN_PROBABILITY))
    labels = _labels(labels, num_examples, num_classes)
    return logits.astype(np.float32), keep, labels


def _keep(keep, num_models: int, num_examples: int) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.shape != (num_models, num_examples):
        raise ValueError(
            f"keep must be [M={num_models}, N={num_examples}] like the logits; got {keep.shape}."
        )
    if keep.dtype != bool:
        if not np.isin(keep, (0, 1)).all():
            raise ValueError(f"keep must be bool or 0/1; got values {np.unique(keep)[:5].tolist()}.")
        keep = keep.astype(bool)
    return keep


def _labels(labels, num_examples: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
        raise ValueError(f"labels must be [N={num_examples}] like the logits; got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
    problem = layout.labels_outside(labels, num_classes)
    if problem:
        raise ValueError(f"{problem}: labels must be in [0, C) for the logits' C = {num_classes} classes.")
    return labels.astype(np.int32)


def _finite(logits: np.ndarray) -> None:
    bad = ~np.isfinite(logits).all(axis=(2, 3))  # [M, N]
    if bad.any():
        models = np.flatnonzero(bad.any(axis=1))
        examples = np.flatnonzero(bad[models[0]])
        raise ValueError(
            f"logits are not finite for model {models[0]} at examples {examples[:5].tolist()}"
            f"{' ...' if len(examples) > 5 else ''} ({len(models)} models affected)."
        )


def _are_probabilities(logits: np.ndarray) -> bool:
    if logits.min() < 0 or logits.max() > 1:
        return False
    return bool(np.all(np.abs(logits.sum(axis=-1, dtype=np.float64) - 1) < PROBABILITY_TOLERANCE))
