"""Null calibration: with no membership signal at all, every attack is at chance.

The logits (and the white-box signals) of these runs do not depend on membership (a per-example difficulty shared by all
models plus independent per-model noise; lira.run.synthetic with signal=0), the masks are balanced
and every model is a target in turn. Then a score can only separate members from non-members
through the protocol: with unequal IN/OUT reference counts (a member of the target has one IN
reference fewer than a non-member) online LiRA gave AUC ~0.445 at M = 8 and ~0.478 at M = 12.
With equal counts every attack must give AUC 0.5 and TPR = FPR at every level.
"""

import numpy as np
import pytest

from lira.attacks import ATTACKS
from lira.run import synthetic
from lira.stages import attack

NUM_EXAMPLES = 3000
LEVELS = (1e-2, 1e-3)


def tpr_bound(level: float, num_members: int, num_nonmembers: int) -> float:
    """4.5 standard deviations of TPR - FPR at a threshold set on the non-members: the members'
    binomial count and the threshold's own sampling error add."""
    return 4.5 * np.sqrt(level * (1 - level) * (1 / num_members + 1 / num_nonmembers))


@pytest.fixture(scope="module", params=[8, 12, 16])
def null_audit(request, tmp_path_factory):
    num_models = request.param
    logdir = tmp_path_factory.mktemp(f"null_{num_models}")
    synthetic.make_synthetic_rundir(logdir, num_models=num_models, num_examples=NUM_EXAMPLES, signal=0.0,
                                    seed=num_models, whitebox=True)  # fmt: skip
    metrics, _ = attack.run_audit(logdir, ["all"], num_targets=num_models, bootstrap=0)
    return num_models, metrics


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_is_at_chance_without_a_membership_signal(null_audit, name):
    num_models, metrics = null_audit
    figures = metrics["attacks"][name]
    assert abs(figures["auc"] - 0.5) <= 0.01, (num_models, name, figures["auc"])
    for level in LEVELS:
        tpr = figures["tpr_at_fpr"][str(level)]
        bound = tpr_bound(level, figures["num_members"], figures["num_nonmembers"])
        assert abs(tpr - level) <= bound, (num_models, name, level, tpr, bound)
