"""What an attack sees, and the statistics over reference models that attacks share.

An attack is a function `fn(inputs, **options) -> scores float [T, N]`, larger = more likely a
member of the target's training set, for all T targets at once. It sees one `AttackInputs`:

- `signals`: the membership signals of every model of the run, arrays [M, N, Q];
- `targets` int [T] and, per target, which models are its references for each example:
  `is_in`, `is_out` bool [T, M, N] (online attacks) and `offline_out` bool [T, M, N] (offline
  attacks). The driver (`lira.attacks.protocol`) builds them: never the target's own row, and the same
  number of IN as OUT references for every example (equal counts, docs/attacks.md);
- `labels` int [N], a seed per target, and per target its known non-members (RMIA's population).

Statistics over references are masked reductions over the model axis, computed for every
target from one pass over the signals (`reference_moments`), in chunks of examples so that no
[T, M, N, Q] temporary exists. A target's own values enter none of them: its row is False in
every mask, and the numerical shift used for stable variances is another model's value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lira.signals import Signals

# A standard deviation smaller than float32's rounding error at the signal's magnitude is not a
# measurement: the signals are float32. Variances are floored at (FLOAT32_EPS * max(1, |mean|))^2,
# which turns a zero-variance case (every reference gave the same value) into a sharp but finite
# test instead of a division by zero, and leaves every measurable variance untouched.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
EXAMPLE_CHUNK = 2048  # examples per chunk of the masked reductions: [chunk, T, M] weights


@dataclasses.dataclass
class AttackInputs:
    """The attack stage's view of a run, for T targets at once (see the module docstring).

    signals: Signals [M, N, Q] of every model; targets: int [T]; labels: int [N];
    is_in, is_out, offline_out: bool [T, M, N]; seeds: int [T]; populations: T int arrays;
    order: int [M], the fixed reference order the driver took references in.
    """

    signals: Signals
    targets: np.ndarray
    labels: np.ndarray
    is_in: np.ndarray
    is_out: np.ndarray
    offline_out: np.ndarray
    seeds: list[int]
    populations: list[np.ndarray]
    order: np.ndarray
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_targets(self) -> int:
        return len(self.targets)

    def target_values(self, name: str) -> np.ndarray:
        """The targets' own signal `name`: [T, N, Q] (float64)."""
        return getattr(self.signals, name)[self.targets].astype(np.float64)

    def mask(self, kind: str) -> np.ndarray:
        """ "in", "out" (online) or "offline_out": bool [T, M, N]."""
        return {"in": self.is_in, "out": self.is_out, "offline_out": self.offline_out}[kind]

    def moments(self, name: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean [T, N, Q], unbiased variance [T, N, Q] (floored), count [T, N]) of signal `name`
        over the references of `kind`; computed once per run of the attacks and shared."""
        mean, variance, count = self._raw_moments(name, kind)
        return mean, variance, count

    def pooled_variance(self, name: str, kind: str) -> np.ndarray:
        """One variance per target [T], pooled over all examples and queries from per-example-
        centred values: each (example, query) group adds its squared deviations and count - 1
        degrees of freedom, so differences between examples' means do not inflate it. Groups
        with one reference add nothing. Floored like the per-example variances."""
        mean, variance, count = self._raw_moments(name, kind)
        degrees = np.maximum(count - 1, 0)[..., None].astype(np.float64)  # [T, N, 1]
        squared = np.sum(degrees * variance, axis=(1, 2))
        dof = degrees.sum(axis=(1, 2)) * mean.shape[-1]
        return np.maximum(squared / np.maximum(dof, 1), variance_floor(mean).max(axis=(1, 2)))

    def _raw_moments(self, name: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = ("moments", name, kind)
        if key not in self._cache:
            shift = shift_models(self.targets, self.order)
            self._cache[key] = reference_moments(getattr(self.signals, name), self.mask(kind), shift)
        return self._cache[key]

    def query_mean_values(self, name: str) -> np.ndarray:
        """Signal `name` averaged over queries, every model: [M, N] float64 (cached)."""
        key = ("query_mean", name)
        if key not in self._cache:
            self._cache[key] = getattr(self.signals, name).astype(np.float64).mean(axis=-1)
        return self._cache[key]


def shift_models(targets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """int [T]: for each target, the first model of `order` other than itself. Its values are
    subtracted before squaring (a shift keeps float64 sums of squares exact when a signal's spread
    is tiny next to its size), and it is never the target, so no target value enters."""
    first, second = order[0], order[1]
    return np.where(np.asarray(targets) == first, second, first)


def variance_floor(mean: np.ndarray) -> np.ndarray:
    return (FLOAT32_EPS * np.maximum(1.0, np.abs(mean))) ** 2


def reference_moments(values: np.ndarray, mask: np.ndarray, shift: np.ndarray,
                      chunk: int = EXAMPLE_CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Masked mean and unbiased variance over the model axis, for every target.

    values: float [M, N, Q]; mask: bool [T, M, N]; shift: int [T], a model per target whose
    values are subtracted first. Returns mean [T, N, Q], variance [T, N, Q] (ddof=1, not
    floored; needs count >= 2, else 0) and count int [T, N].

    Per chunk of examples the sums are batched matrix products [c, T, M] @ [c, M, Q] in float64:
    one pass over the signals serves every target.
    """
    num_targets, num_models, num_examples = mask.shape
    num_queries = values.shape[-1]
    count = mask.sum(axis=1)
    mean = np.empty((num_targets, num_examples, num_queries))
    variance = np.empty_like(mean)
    for start in range(0, num_examples, chunk):
        stop = min(start + chunk, num_examples)
        block = np.ascontiguousarray(values[:, start:stop].astype(np.float64).transpose(1, 0, 2))  # [c, M, Q]
        weights = np.ascontiguousarray(
            mask[:, :, start:stop].transpose(2, 0, 1), dtype=np.float64
        )  # [c, T, M]
        for model in np.unique(shift):
            rows = np.flatnonzero(shift == model)
            centred = block - block[:, model : model + 1]
            sums = np.matmul(weights[:, rows], centred)  # [c, t, Q]
            squares = np.matmul(weights[:, rows], centred * centred)
            n = count[rows, start:stop].T[..., None].astype(np.float64)  # [c, t, 1]
            centre_mean = sums / np.maximum(n, 1)
            deviations = np.maximum(squares - sums * centre_mean, 0.0)
            mean[rows, start:stop] = (centre_mean + block[:, model : model + 1]).transpose(1, 0, 2)
            variance[rows, start:stop] = (deviations / np.maximum(n - 1, 1)).transpose(1, 0, 2)
    return mean, variance, count


def masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the references selected by `mask`, every target: values [M, N], mask [T, M, N]
    -> [T, N] (float64)."""
    count = np.maximum(mask.sum(axis=1), 1)
    return np.einsum("tmn,mn->tn", mask, values.astype(np.float64), optimize=True) / count


def log_normal_density(x: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    return -0.5 * np.log(2 * np.pi * variance) - (x - mean) ** 2 / (2 * variance)
