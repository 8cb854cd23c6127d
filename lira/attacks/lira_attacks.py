"""LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles").

The signal is the logit-scaled confidence phi [.., N, Q]. For each example and each query, the
IN and OUT reference models' phi are modelled as Gaussians; the score is the log-likelihood
ratio of the target's phi under them (online), or how far the target's phi sits above the OUT
Gaussian (offline, one-sided: a member's confidence is higher, never lower). Scores are
averaged over the Q queries (augmentations), as in the paper.

Deliberate differences from the reference code (tensorflow/privacy, mi_lira_2021):
- means are means (the reference code uses medians) and variances are unbiased (ddof=1);
- the fixed-variance variants pool each of the IN and OUT variances from per-example-centred
  values; the reference code takes the uncentred IN std for both;
- offline is one-sided only; the reference code's two-sided test is not offered.

Small-M caveat: with balanced masks every example is IN for exactly M/2 models, so under
leave-one-out a member of the target has M/2 - 1 IN references and M/2 OUT ones, a non-member
the reverse. The Gaussian fitted to fewer values fits a new value worse on average, which pushes
online scores of members down: with no membership signal at all we measured AUC ~0.47 at M = 12
and ~0.49 at M = 32 (synthetic data). It vanishes as M grows; read small-M online figures with it
in mind.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from lira.attacks.common import (
    AttackContext,
    References,
    log_normal_density,
    masked_moments,
    pooled_variance,
)
from lira.signals import Signals


def _online(target: Signals, references: References, fixed_variance: bool) -> np.ndarray:
    phi = references.signals.phi
    mean_in, variance_in, _ = masked_moments(phi, references.is_in)
    mean_out, variance_out, _ = masked_moments(phi, references.is_out)
    if fixed_variance:
        variance_in = pooled_variance(phi, references.is_in, mean_in)
        variance_out = pooled_variance(phi, references.is_out, mean_out)
    x = target.phi.astype(np.float64)
    ratio = log_normal_density(x, mean_in, variance_in) - log_normal_density(x, mean_out, variance_out)
    return ratio.mean(axis=-1)


def _offline(target: Signals, references: References, fixed_variance: bool) -> np.ndarray:
    phi = references.signals.phi
    mean_out, variance_out, _ = masked_moments(phi, references.is_out)
    if fixed_variance:
        variance_out = pooled_variance(phi, references.is_out, mean_out)
    x = target.phi.astype(np.float64)
    return log_ndtr((x - mean_out) / np.sqrt(variance_out)).mean(axis=-1)


def lira_online(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """mean_q [log N(phi_q; mu_in, s_in^2) - log N(phi_q; mu_out, s_out^2)], per example and query
    moments. target.phi [N, Q], references phi [R, N, Q] -> scores [N]."""
    return _online(target, references, fixed_variance=False)


def lira_online_fixed_var(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """lira_online with one IN and one OUT variance pooled over all examples: steadier with few
    references (the paper's recommendation below about 64 shadow models)."""
    return _online(target, references, fixed_variance=True)


def lira_offline(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """mean_q log Phi((phi_q - mu_out) / s_out): needs only OUT references, so references can be
    trained once, before the examples to audit are known."""
    return _offline(target, references, fixed_variance=False)


def lira_offline_fixed_var(target: Signals, references: References, context: AttackContext) -> np.ndarray:
    """lira_offline with one OUT variance pooled over all examples."""
    return _offline(target, references, fixed_variance=True)
