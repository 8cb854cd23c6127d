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
  when every example has a single reference (offline, K = 1), the values are pooled around
  their global mean instead (nothing else is left to centre on);
- offline is one-sided only; the reference code's two-sided test is not offered.

Beyond the reference code, `lira_online_student` and `lira_offline_student` (per-example
variances) replace the plug-in Gaussian by the posterior predictive of a new value given n
references (flat prior on the mean and log variance): a Student-t with n - 1 degrees of freedom,
centre m and scale s * sqrt(1 + 1/n). A Gaussian fitted to 7 values and used as if its mean and
variance were known gives a new value too little probability in its tails; the predictive does
not. For Gaussian signals it makes the offline test exactly calibrated under the null. Use them
when each example has fewer than about 30 references of a kind (M below about 64); with more,
the two agree. The fixed-variance attacks keep the Gaussian: with pooled variances the degrees of
freedom are the pooled ones, so the predictive would differ from it only by the 1 + 1/n (the
helpers `_online` and `_offline` still take either likelihood).

Reference counts are equal for members and non-members (lira.attacks.protocol), so none of these has a
protocol bias: with no membership signal every one gives AUC 0.5 and TPR = FPR (tested).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from lira.attacks.common import AttackInputs, log_normal_density, variance_floor

LIKELIHOODS = ("gaussian", "student_t")


def _check(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"Unknown LiRA likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}.")


def _fit(inputs: AttackInputs, kind: str, fixed_variance: bool, signal: str = "phi"):
    """(mean [T, N, Q], variance [T, N, Q] or [T, 1, 1], count [T, N, 1], degrees of freedom)."""
    mean, variance, count = inputs.moments(signal, kind)
    count = count[..., None].astype(np.float64)
    if fixed_variance:
        variance = inputs.pooled_variance(signal, kind)
        dof = np.maximum(count[..., 0] - 1, 0).sum(axis=1) * mean.shape[-1]  # [T]
        single = dof == 0  # one reference per example (offline at K = 1): nothing to centre on
        if single.any():
            global_variance, global_dof = _global_variance(mean, count)
            variance, dof = np.where(single, global_variance, variance), np.where(single, global_dof, dof)
        variance, dof = variance[:, None, None], dof[:, None, None].astype(np.float64)
    else:
        dof = count - 1
    return mean, variance, count, dof


def _global_variance(mean: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance [T], degrees of freedom [T]) of the reference values over all examples and
    queries, around their global mean (ddof=1). mean: [T, N, Q]; count: [T, N, 1].

    With one reference per example its value is the example's mean, so no deviation from an
    example's own mean exists to pool; the spread across examples is what is left. This is what
    lets an offline LiRA run at K = 1 (the RMIA paper's one-reference case). It includes the
    differences between examples' means, so it is wider than a per-example-centred pool."""
    has = np.broadcast_to(count > 0, mean.shape)
    values = np.where(has, mean, 0.0)
    number = has.sum(axis=(1, 2)).astype(np.float64)
    centre = values.sum(axis=(1, 2)) / np.maximum(number, 1)
    squared = np.where(has, (mean - centre[:, None, None]) ** 2, 0.0).sum(axis=(1, 2))
    variance = squared / np.maximum(number - 1, 1)
    return np.maximum(variance, variance_floor(centre)), np.maximum(number - 1, 0)


def _log_density(x, mean, variance, count, dof, likelihood):
    if likelihood == "gaussian":
        return log_normal_density(x, mean, variance)
    scale = np.sqrt(variance * (1.0 + 1.0 / count))
    return stats.t.logpdf(x, np.maximum(dof, 1), loc=mean, scale=scale)


def student_t_log_cdf(value: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """log P(T <= value) for a Student-t with `dof` degrees of freedom, finite far into the lower
    tail: where the CDF underflows, its asymptote log(pdf(t) |t| / dof) (relative error
    O(1/t^2), and only used where the CDF is below float64's range)."""
    value, dof = np.broadcast_arrays(np.asarray(value, np.float64), np.asarray(dof, np.float64))
    with np.errstate(divide="ignore"):
        direct = np.log(special.stdtr(dof, value))
    tail = stats.t.logpdf(value, dof) + np.log(np.abs(value) / dof + 1e-300)
    return np.where(np.isfinite(direct), direct, tail)


def _online(inputs: AttackInputs, fixed_variance: bool, likelihood: str, signal: str = "phi") -> np.ndarray:
    _check(likelihood)
    x = inputs.target_values(signal)
    log_in = _log_density(x, *_fit(inputs, "in", fixed_variance, signal), likelihood)
    log_out = _log_density(x, *_fit(inputs, "out", fixed_variance, signal), likelihood)
    return (log_in - log_out).mean(axis=-1)


def _offline(inputs: AttackInputs, fixed_variance: bool, likelihood: str, signal: str = "phi") -> np.ndarray:
    _check(likelihood)
    x = inputs.target_values(signal)
    mean, variance, count, dof = _fit(inputs, "offline_out", fixed_variance, signal)
    if likelihood == "gaussian":
        return special.log_ndtr((x - mean) / np.sqrt(variance)).mean(axis=-1)
    scale = np.sqrt(variance * (1.0 + 1.0 / count))
    return student_t_log_cdf((x - mean) / scale, np.maximum(dof, 1)).mean(axis=-1)


def lira_online(inputs: AttackInputs) -> np.ndarray:
    """mean_q [log N(phi_q; mu_in, s_in^2) - log N(phi_q; mu_out, s_out^2)], per example and query
    moments over the target's IN and OUT references. -> scores [T, N]."""
    return _online(inputs, fixed_variance=False, likelihood="gaussian")


def lira_online_fixed_var(inputs: AttackInputs) -> np.ndarray:
    """lira_online with one IN and one OUT variance pooled over all examples: steadier with few
    references (the paper's recommendation below about 64 shadow models)."""
    return _online(inputs, fixed_variance=True, likelihood="gaussian")


def lira_offline(inputs: AttackInputs) -> np.ndarray:
    """mean_q log Phi((phi_q - mu_out) / s_out): needs only OUT references, so references can be
    trained once, before the examples to audit are known."""
    return _offline(inputs, fixed_variance=False, likelihood="gaussian")


def lira_offline_fixed_var(inputs: AttackInputs) -> np.ndarray:
    """lira_offline with one OUT variance pooled over all examples."""
    return _offline(inputs, fixed_variance=True, likelihood="gaussian")


def lira_online_student(inputs: AttackInputs) -> np.ndarray:
    """lira_online with the Student-t posterior predictive (module docstring)."""
    return _online(inputs, fixed_variance=False, likelihood="student_t")


def lira_offline_student(inputs: AttackInputs) -> np.ndarray:
    """lira_offline with the Student-t posterior predictive (module docstring)."""
    return _offline(inputs, fixed_variance=False, likelihood="student_t")


# White-box LiRA: the same per-example Gaussian tests on -log of the loss-gradient norm
# (Signals.grad), the calibrated white-box signal: a member's gradient is smaller than the
# same example's gradient in models that did not train on it.


def whitebox_lira_online(inputs: AttackInputs) -> np.ndarray:
    """lira_online on -log ||grad_theta loss(x, y)|| instead of phi."""
    return _online(inputs, fixed_variance=False, likelihood="gaussian", signal="grad")


def whitebox_lira_online_fixed_var(inputs: AttackInputs) -> np.ndarray:
    """lira_online_fixed_var on -log ||grad_theta loss(x, y)||."""
    return _online(inputs, fixed_variance=True, likelihood="gaussian", signal="grad")


def whitebox_lira_offline(inputs: AttackInputs) -> np.ndarray:
    """lira_offline on -log ||grad_theta loss(x, y)||."""
    return _offline(inputs, fixed_variance=False, likelihood="gaussian", signal="grad")
