"""Differentially private shadow training (DP-SGD): the guarantee of the trainer's sampling and noise.

The pieces come from the field's libraries, not from code of ours:

- batches: jax_privacy.batch_selection.CyclicPoissonSampling (one cycle, truncated) in the
  trainer (lira/training/sampling.py): at every step each IN example of a model is drawn
  independently with probability q = B / n, where B is --batch_size and n = round(pkeep * N) the
  expected IN-set size; a draw of more than `max_batch_size` examples keeps a uniformly random
  `max_batch_size` of them, and the step pads it to that fixed size.
- clipping: jax_privacy.clipped_grad, per example, to --dp_clip_norm (lira/training/dpsgd.py).
- noise: jax_privacy.noise_addition.gaussian_privatizer, N(0, (sigma C)^2) on the sum of clipped
  gradients, then divided by B (the expected batch size, which reveals nothing about the draw).
- the guarantee: dp_accounting's PLD accountant on exactly that sampling,
  TruncatedSubsampledGaussianDpEvent(n_m, q, max_batch_size, sigma) per step, composed over all
  steps, under add-or-remove adjacency (the relation of a canary IN or OUT). Truncation binds
  most often for the largest IN set, so the run records the largest epsilon over its models' IN
  sizes. The default `max_batch_size` is B + 5 sqrt(B), five standard deviations of the draw
  (what truncation costs in epsilon there and at four: docs/dp.md).

The accountant depends on the trainer (its sampling and its steps per epoch), never the reverse:
non-DP training imports neither this module nor dp_accounting.
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import numpy as np

from lira.config import TrainingConfig
from lira.training import step as step_lib
from lira.training.sampling import max_batch_size, sampling_probability

# The PLD's discretisation while calibrating: the library's default, 1e-4, is much slower
# (docs/results/implementation_choices/README.md); the result is checked at the default.
_COARSE = 1e-3


@dataclasses.dataclass(frozen=True)
class Guarantee:
    """The accounted (epsilon, delta) of DP-SGD as run: config.json's "dp"."""

    epsilon: float
    delta: float
    noise_multiplier: float
    clip_norm: float
    sampling_probability: float
    expected_batch_size: int
    max_batch_size: int
    steps: int
    accountant: str = "dp_accounting PLD, truncated Poisson sampling, add-or-remove adjacency"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _event(noise_multiplier: float, dataset_size: int, q: float, max_batch: int, steps: int):
    if noise_multiplier == 0:
        return None
    if max_batch >= dataset_size:  # truncation can never happen
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
    else:
        step = dp_accounting.TruncatedSubsampledGaussianDpEvent(
            dataset_size=dataset_size, sampling_probability=q, truncated_batch_size=max_batch,
            noise_multiplier=noise_multiplier,
        )  # fmt: skip
    return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon(
    noise_multiplier: float, *, delta: float, in_sizes, q: float, max_batch: int, steps: int
) -> float:
    """The largest epsilon at `delta` over the IN-set sizes `in_sizes` (the smallest and the
    largest suffice: see the module docstring), after `steps` DP-SGD steps. inf without noise."""
    worst = 0.0
    for size in sorted({int(min(in_sizes)), int(max(in_sizes))}):
        event = _event(noise_multiplier, size, q, max_batch, steps)
        if event is None:
            return math.inf
        accountant = dp_accounting.pld.PLDAccountant()
        worst = max(worst, accountant.compose(event).get_epsilon(delta))
    return worst


def noise_for_epsilon(target_epsilon: float, *, delta: float, in_sizes, q: float, max_batch: int,
                      steps: int) -> float:  # fmt: skip
    """The smallest noise multiplier whose `epsilon` is at most target_epsilon (dp_accounting's
    calibration, a bracketed root search, on the largest IN set)."""
    size = int(max(in_sizes))
    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: dp_accounting.pld.PLDAccountant(value_discretization_interval=_COARSE),
        lambda sigma: _event(sigma, size, q, max_batch, steps),
        target_epsilon,
        delta,
        dp_accounting.ExplicitBracketInterval(0.05, 200.0),
        tol=1e-3,
    )
    # The search ran on a coarser discretisation and stops within tol of the root: step up until
    # the budget holds at full precision.
    while (
        epsilon(sigma, delta=delta, in_sizes=in_sizes, q=q, max_batch=max_batch, steps=steps) > target_epsilon
    ):
        sigma *= 1.005
    return float(sigma)


def account(config: TrainingConfig, keep: np.ndarray) -> Guarantee:
    """The guarantee of DP-SGD with `config` on the IN sets of `keep` [M, N]; with
    --dp_target_epsilon, the noise multiplier is the accountant's pick (a few seconds to a minute:
    each epsilon is one PLD composition)."""
    expected_in = round(config.pkeep * keep.shape[1])
    q = sampling_probability(config.batch_size, expected_in)
    max_batch = max_batch_size(config.batch_size, config.dp_max_batch_size)
    steps = config.epochs * step_lib.steps_per_epoch(keep.shape[1], config.pkeep, config.batch_size)
    sizes = keep.sum(axis=1)
    budget = dict(delta=config.dp_delta, in_sizes=sizes, q=q, max_batch=max_batch, steps=steps)
    sigma = config.dp_noise_multiplier
    if sigma is None:
        sigma = noise_for_epsilon(config.dp_target_epsilon, **budget)
    return Guarantee(
        epsilon=epsilon(sigma, **budget), delta=config.dp_delta, noise_multiplier=float(sigma),
        clip_norm=config.dp_clip_norm, sampling_probability=q, expected_batch_size=config.batch_size,
        max_batch_size=max_batch, steps=steps,
    )  # fmt: skip
