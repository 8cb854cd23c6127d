"""The attacks, by name: `ATTACKS[name]` is an `AttackSpec`.

Every attack is `fn(target, references, context, **options) -> scores float [N]` (larger = more
likely member; see `lira.attacks.common`). The spec tells the driver what the attack reads, so
it can choose references, check there are enough of them, and compute only the signals needed:

- references = "none": no references (the plain loss attack);
- "in_and_out": the first K references of the fixed order, each IN or OUT per example (online);
- "out": per example, the first K OUT references in that order (offline: the attack must work
  with references trained without the example).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

from lira.attacks import baselines, lira_attacks, rmia, shokri
from lira.attacks.common import AttackContext, References

__all__ = ["ATTACKS", "AttackContext", "AttackSpec", "References", "option_names"]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    fn: Callable
    references: str  # "none" | "in_and_out" | "out"
    min_in: int  # IN references each example needs
    min_out: int  # OUT references each example needs
    needs_softmax: bool = False
    pooled: bool = False  # one variance pooled over examples: some example needs 2 of each kind


ATTACKS: dict[str, AttackSpec] = {
    "loss": AttackSpec(baselines.loss, "none", 0, 0),
    "calibrated_loss": AttackSpec(baselines.calibrated_loss, "out", 0, 1),
    "attack_r": AttackSpec(baselines.attack_r, "out", 0, 1),
    "shokri": AttackSpec(shokri.shokri, "in_and_out", 1, 1, needs_softmax=True),
    # Two of each, because the per-example variances are unbiased (ddof=1). The fixed-variance
    # variants need only a mean per example, so one of each; their pooled variance needs some
    # example with two. This is why they work with very few shadow models (LiRA, Sec. VI).
    "lira_online": AttackSpec(lira_attacks.lira_online, "in_and_out", 2, 2),
    "lira_online_fixed_var": AttackSpec(lira_attacks.lira_online_fixed_var, "in_and_out", 1, 1, pooled=True),
    "lira_offline": AttackSpec(lira_attacks.lira_offline, "out", 0, 2),
    "lira_offline_fixed_var": AttackSpec(lira_attacks.lira_offline_fixed_var, "out", 0, 1, pooled=True),
    # p(u) is a mean over references: online needs one reference of either kind (min_in = 0,
    # min_out = 0 but at least one selected; checked by the driver), offline one OUT reference.
    "rmia_online": AttackSpec(rmia.rmia_online, "in_and_out", 0, 0),
    "rmia_offline": AttackSpec(rmia.rmia_offline, "out", 0, 1),
}


def option_names(name: str) -> list[str]:
    """The keyword options attack `name` accepts beyond (target, references, context)."""
    parameters = list(inspect.signature(ATTACKS[name].fn).parameters)
    return parameters[3:]
