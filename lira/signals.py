"""Membership signals computed from logits: the quantities every attack is a statistic of.

All functions take logits `[..., C]` and integer labels that broadcast against `[...]`, and
return `[...]`. They are computed once per run (`run_signals`), streaming one model's logits
file at a time, so that the attack stage never holds the full `[M, N, Q, C]` logits in memory.

- logit-scaled confidence  phi = z_y - logsumexp_{y' != y} z_{y'}
  LiRA's signal (Carlini et al. 2022): it is log(p_y / (1 - p_y)) but computed without ever
  forming 1 - p_y, which rounds to 0 for a confident model and would make phi infinite.
- cross-entropy  CE = logsumexp(z) - z_y
- RMIA's probability: p_y of softmax(z / T) by default, or the authors' soft-margin Taylor softmax (`ProbabilitySignal`)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

RMIA_SIGNALS = ("taylor", "softmax")  # ProbabilitySignal.kind


def _logsumexp(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """logsumexp that tolerates -inf entries (masked classes) in every position but one."""
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.log(np.sum(np.exp(values - peak), axis=axis)) + np.squeeze(peak, axis)


def _floating(logits) -> np.ndarray:
    """Logits as floats of their own precision, float32 at least: a run's float32 logits files are
    read without a float64 copy (the signals are stored as float32), float64 inputs stay exact."""
    logits = np.asarray(logits)
    return logits.astype(np.result_type(logits.dtype, np.float32), copy=False)


def _true_class(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (z_y [...], one-hot mask of the true class [..., C])."""
    labels = np.broadcast_to(np.asarray(labels), logits.shape[:-1])
    is_true = labels[..., None] == np.arange(logits.shape[-1])
    true_logit = np.take_along_axis(logits, labels[..., None].astype(np.intp), axis=-1)[..., 0]
    return true_logit, is_true


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi [...] from logits [..., C]: the true logit minus the logsumexp of the others."""
    logits = _floating(logits)
    true_logit, is_true = _true_class(logits, labels)
    others = np.where(is_true, -np.inf, logits)
    return true_logit - _logsumexp(others)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """CE [...] from logits [..., C]."""
    logits = _floating(logits)
    true_logit, _ = _true_class(logits, labels)
    return _logsumexp(logits) - true_logit


def taylor_soft_margin(logits: np.ndarray, labels: np.ndarray, temperature: float = 2.0, margin: float = 0.6,
                       terms: int = 4) -> np.ndarray:  # fmt: skip
    """RMIA's probability signal as its authors' configs compute it (ml_privacy_meter,
    research/2024_rmia/signals.py, 'taylor-soft-margin'): with u = z / temperature and the
    truncated exponential t(v) = sum_{i < terms} v^i / i! (`terms` terms: a cubic for 4),

        p = t(u_y - margin) / (t(u_y - margin) + sum_{c != y} t(u_c)).

    logits [..., C], labels broadcasting to [...] -> p [...]. Exactly their formula, which for an
    even number of terms is not a positive function everywhere (their choice, kept)."""
    u = np.asarray(logits, dtype=np.float64) / temperature  # float64: the ratio is ill-conditioned where
    # t(u_y - m) + sum_{c != y} t(u_c) nears 0 (t is a cubic), and float32 there is off by 0.2%
    true_logit, _ = _true_class(u, labels)

    def truncated_exp(v):  # Horner: 1 + v (1 + v/2 (1 + v/3 (...)))
        total = np.ones_like(v)
        for i in range(terms - 1, 0, -1):
            total = 1.0 + v / i * total
        return total

    true_term = truncated_exp(true_logit - margin)
    others = np.sum(truncated_exp(u), axis=-1) - truncated_exp(true_logit)
    return true_term / (true_term + others)


@dataclasses.dataclass(frozen=True)
class ProbabilitySignal:
    """Which probability RMIA compares: "taylor" (the authors' soft-margin Taylor softmax, their
    CIFAR-10 defaults) or "softmax" (p_y = softmax(z / temperature)_y; temperature 1 is the
    plain probability). margin and terms apply to "taylor" only."""

    kind: str = "softmax"  # the attack stage's defaults (RMIA's options take them from here)
    temperature: float = 2.0
    margin: float = 0.6
    terms: int = 4

    def __post_init__(self):
        if self.kind not in RMIA_SIGNALS:
            raise ValueError(f"Unknown RMIA signal {self.kind!r}; valid: {', '.join(RMIA_SIGNALS)}.")
        if not self.temperature > 0 or self.terms < 1:
            raise ValueError(
                f"RMIA's signal needs temperature > 0 and terms >= 1, got {self.temperature}, {self.terms}."
            )

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.kind == "taylor":
            return taylor_soft_margin(logits, labels, self.temperature, self.margin, self.terms)
        return np.exp(-cross_entropy(np.asarray(logits, dtype=np.float64) / self.temperature, labels))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Prediction vectors [..., C]: Shokri et al.'s attack features."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


@dataclasses.dataclass
class Signals:
    """Per-model membership signals of a run.

    phi, ce: float32 [M, N, Q].
    probability: float32 [M, N, Q], RMIA's probability signal (`probability_signal` says which),
      or None when no RMIA attack runs.
    logits: model index -> float32 [N, Q, C], that model's logits (memory-mapped from the run
      directory): Shokri's attack reads prediction vectors of a sample of (model, example)
      pairs from them, so the [M, N, Q, C] stack is never held in memory.
    grad: float32 [M, N, Qw], the white-box signal: -log of the per-example loss-gradient norm
      over all parameters (larger = more member-like, as for phi), or None for a black-box run.
    whitebox: model index -> (norms float32 [N, Qw, L + 1], features float32 [N, Qw, F]), that
      model's white-box files, memory-mapped (the attack model of Nasr et al. reads them).
    """

    phi: np.ndarray
    ce: np.ndarray
    probability: np.ndarray | None = None
    probability_signal: ProbabilitySignal | None = None
    logits: Callable[[int], np.ndarray] | None = None
    grad: np.ndarray | None = None
    whitebox: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def num_queries(self) -> int:
        return self.phi.shape[-1]

    def select_queries(self, indices: list[int]) -> Signals:
        """The same signals on a subset of queries: [M, N, Q] -> [M, N, len(indices)]. The
        white-box signals have queries of their own and are left out."""
        pick = lambda array: None if array is None else np.ascontiguousarray(np.take(array, indices, axis=-1))
        logits = None if self.logits is None else (lambda m: self.logits(m)[:, indices])
        return Signals(pick(self.phi), pick(self.ce), pick(self.probability), self.probability_signal, logits)


def model_signals(logits: np.ndarray, labels: np.ndarray,
                  probability_signal: ProbabilitySignal | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Signals of one model: logits float [N, Q, C], labels int [N] -> {name: float32 [N, Q]}.

    The same values as the functions above, with one pass over the [N, Q, C] logits where they
    would take several (the attack stage reads M of these files): the cross-entropy comes from
    phi through CE = log(1 + exp(-phi)) (phi is log(p / (1 - p)), so 1 + exp(-phi) = 1 / p),
    which is exact and needs no second logsumexp.
    """
    labels = np.asarray(labels)[:, None]
    phi = logit_scaled_confidence(logits, labels)
    out = {"phi": phi.astype(np.float32), "ce": np.logaddexp(0.0, -phi).astype(np.float32)}
    if probability_signal is not None:
        out["probability"] = probability_signal(logits, labels).astype(np.float32)
    return out


def signals_from_logits(logits: np.ndarray, labels: np.ndarray,
                        probability_signal: ProbabilitySignal | None = None) -> Signals:  # fmt: skip
    """Signals of logits held in memory: logits float [M, N, Q, C], labels int [N]."""
    per_model = [model_signals(one, labels, probability_signal) for one in logits]
    stack = lambda name: np.stack([one[name] for one in per_model]) if name in per_model[0] else None
    return Signals(stack("phi"), stack("ce"), stack("probability"), probability_signal,
                   lambda m: np.asarray(logits[m], dtype=np.float32))  # fmt: skip
