"""Loss-based baselines: the attacks LiRA and RMIA are measured against.

All read the cross-entropy signal CE [.., N, Q], averaged over the Q queries first (so a
score is about an example, not about one augmentation of it).
"""

from __future__ import annotations

import numpy as np

from lira.attacks.common import AttackContext, References, masked_mean
from lira.signals import Signals


def loss(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """Yeom et al. 2018: -CE of the target. Uses no references: a low loss means member."""
    return -target.ce.astype(np.float64).mean(axis=-1)


def calibrated_loss(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """Watson et al. 2022: -(CE_target - mean CE over OUT references), which removes how hard the
    example is for any model, leaving how much easier it is for this one."""
    target_loss = target.ce.astype(np.float64).mean(axis=-1)
    reference_loss = masked_mean(references.signals.ce.mean(axis=-1), references.is_out)
    return -(target_loss - reference_loss)


def attack_r(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """Ye et al. 2022 (Attack R, reference-model attack): the fraction of OUT references whose CE
    is >= the target's, i.e. the target's loss as a percentile of the OUT loss distribution."""
    target_loss = target.ce.astype(np.float64).mean(axis=-1)
    reference_loss = references.signals.ce.astype(np.float64).mean(axis=-1)
    at_least = references.is_out & (reference_loss >= target_loss)
    return at_least.sum(axis=0) / np.maximum(references.is_out.sum(axis=0), 1)
