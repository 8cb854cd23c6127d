"""Membership signals computed from logits: the quantities every attack is a statistic of.

All functions take logits `[..., C]` and integer labels that broadcast against `[...]`, and
return `[...]`. They are computed once per run (`run_signals`), streaming one model's logits
file at a time, so that the attack stage never holds the full `[M, N, Q, C]` logits in memory.

- logit-scaled confidence  phi = z_y - logsumexp_{y' != y} z_{y'}
  LiRA's signal (Carlini et al. 2022): it is log(p_y / (1 - p_y)) but computed without ever
  forming 1 - p_y, which rounds to 0 for a confident model and would make phi infinite.
- cross-entropy  CE = logsumexp(z) - z_y
- true-class probability  p_y = softmax(z)_y = exp(-CE)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lira import rundir


def _logsumexp(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """logsumexp that tolerates -inf entries (masked classes) in every position but one."""
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.log(np.sum(np.exp(values - peak), axis=axis)) + np.squeeze(peak, axis)


def _true_class(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (z_y [...], one-hot mask of the true class [..., C])."""
    labels = np.broadcast_to(np.asarray(labels), logits.shape[:-1])
    is_true = labels[..., None] == np.arange(logits.shape[-1])
    true_logit = np.take_along_axis(logits, labels[..., None].astype(np.intp), axis=-1)[..., 0]
    return true_logit, is_true


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi [...] from logits [..., C]: the true logit minus the logsumexp of the others."""
    logits = np.asarray(logits, dtype=np.float64)
    true_logit, is_true = _true_class(logits, labels)
    others = np.where(is_true, -np.inf, logits)
    return true_logit - _logsumexp(others)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """CE [...] from logits [..., C]."""
    logits = np.asarray(logits, dtype=np.float64)
    true_logit, _ = _true_class(logits, labels)
    return _logsumexp(logits) - true_logit


def true_class_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p_y [...] from logits [..., C], as exp(-CE) so it is exactly consistent with the loss."""
    return np.exp(-cross_entropy(logits, labels))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Prediction vectors [..., C]: Shokri et al.'s attack features."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


@dataclasses.dataclass
class Signals:
    """Per-model membership signals of a run (or of one model, with the leading axis dropped).

    phi, ce, prob: float32 [M, N, Q].
    softmax: float32 [M, N, Q, C], only when an attack needs prediction vectors (Shokri);
      it is C times larger than the others, so it is not computed by default.
    """

    phi: np.ndarray
    ce: np.ndarray
    prob: np.ndarray
    softmax: np.ndarray | None = None

    def select(self, index) -> Signals:
        """Indexes every array along its leading axes (`index` is a model index or a list of them)."""
        pick = lambda array: None if array is None else array[index]
        return Signals(pick(self.phi), pick(self.ce), pick(self.prob), pick(self.softmax))


def model_signals(logits: np.ndarray, labels: np.ndarray, with_softmax: bool = False) -> Signals:
    """Signals of one model: logits float [N, Q, C], labels int [N] -> Signals with [N, Q] arrays."""
    labels = np.asarray(labels)[:, None]
    ce = cross_entropy(logits, labels)
    return Signals(
        phi=logit_scaled_confidence(logits, labels).astype(np.float32),
        ce=ce.astype(np.float32),
        prob=np.exp(-ce).astype(np.float32),
        softmax=softmax(logits).astype(np.float32) if with_softmax else None,
    )


def run_signals(logdir: Path, with_softmax: bool = False, model_indices: list[int] | None = None) -> Signals:
    """Signals [M, N, Q] of every model of a run directory (or of `model_indices`).

    Streams one logits file at a time (read fully, converted, released), so peak memory is the
    output plus one model's logits, not the [M, N, Q, C] stack. Files are checked against
    keep.npy and labels.npy first, so a missing or mis-shaped file is named before any work.
    """
    keep = rundir.load_keep(logdir)
    labels = rundir.load_labels(logdir)
    num_models, num_examples = keep.shape
    if labels.shape != (num_examples,):
        raise rundir.RunDirError(f"labels.npy has shape {labels.shape} but keep.npy has N={num_examples}.")
    if model_indices is None:
        model_indices = list(range(num_models))
    missing = [m for m in model_indices if not rundir.logits_path(logdir, m).exists()]
    if missing:
        raise rundir.RunDirError(
            f"{len(missing)} logits files are missing in {Path(logdir) / rundir.LOGITS_DIR} "
            f"(models {rundir.format_ranges(missing)}); run experiments/inference.py --logdir={logdir}."
        )
    shapes = {m: np.load(rundir.logits_path(logdir, m), mmap_mode="r").shape for m in model_indices}
    first = shapes[model_indices[0]]
    for m, shape in shapes.items():
        if len(shape) != 3 or shape[0] != num_examples or shape != first:
            raise rundir.RunDirError(
                f"{rundir.logits_path(logdir, m)} has shape {shape}; expected [N={num_examples}, Q, C] "
                f"like model {model_indices[0]}'s {first}."
            )
    _, num_queries, num_classes = first
    shape = (len(model_indices), num_examples, num_queries)
    out = Signals(
        phi=np.empty(shape, np.float32),
        ce=np.empty(shape, np.float32),
        prob=np.empty(shape, np.float32),
        softmax=np.empty((*shape, num_classes), np.float32) if with_softmax else None,
    )
    for row, m in enumerate(model_indices):
        one = model_signals(np.load(rundir.logits_path(logdir, m)), labels, with_softmax)
        out.phi[row], out.ce[row], out.prob[row] = one.phi, one.ce, one.prob
        if with_softmax:
            out.softmax[row] = one.softmax
    return out
