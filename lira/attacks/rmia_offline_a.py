"""RMIA's offline a fitted from reference models alone (`--rmia_offline_a=auto`).

Offline RMIA has no IN reference for an example, so it guesses the mean over IN and OUT models
as p = ((1 + a) p_out + (1 - a)) / 2 (lira/attacks/rmia.py). The authors pick a by simulating the
attack on reference models: here each of the target's first OFFLINE_A_MODELS references (in
the reference order) is attacked offline in the target's place, with the other references' OUT
models only, and a is the grid value with the highest mean AUC over them. They are attacked on
the target's population alone (its non-members outside the canaries, which the attack already
takes as known): no example the target trained on and no canary enters the fit (the protocol's
canary rule, whose reference counts follow the target's membership, never applies). Neither the
target's outputs enter nor any model's output on an example it trained on, except the attacked
reference's own, whose membership the auditor knows (it trained it).

AUC, not TPR at a low FPR: one model's few thousand non-members resolve a low FPR only coarsely.
Several references, because on one the AUC moves little with a and its maximum wanders from
model to model. Each is attacked on at most OFFLINE_A_EXAMPLES examples (a seeded subsample),
so the fit costs a bounded number of pairwise votes whatever the pool's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from lira.attacks.common import AttackInputs

OFFLINE_A_GRID = np.linspace(0.0, 1.0, 11)  # the a values tried
OFFLINE_A_MODELS = 4  # reference models attacked in turn; their AUCs are averaged
OFFLINE_A_EXAMPLES = 4096  # examples each is attacked on, at most


@dataclasses.dataclass
class PseudoTarget:
    """A reference model attacked offline in the target's place: its index, membership bool [N],
    references bool [M, N], and the examples it can be attacked on bool [N]."""

    model: int
    is_member: np.ndarray
    references: np.ndarray
    usable: np.ndarray


def pseudo_target(inputs: AttackInputs, row: int, rank: int = 0) -> PseudoTarget:
    """The target's reference number `rank` (0-based) in the reference order.

    The driver gives the offline attack, per example, the first c OUT references in that order
    (lira/attacks/protocol.py), so where c > rank this model is among them exactly where it is
    OUT: that is its membership. Its own references are the first c - 1 OUT models of the
    others: the same models whether it trained on the example or not (equal counts, as for the
    target). It is attacked on the target's population where c >= max(2, rank + 1) (`usable`)."""
    order = inputs.order[inputs.order != inputs.targets[row]]
    selected = inputs.offline_out[row]  # [M, N]
    count = selected.sum(axis=0)
    model = int(order[rank])
    others = np.delete(order, rank)
    references = np.zeros_like(selected)
    references[others] = selected[others] & (np.cumsum(selected[others], axis=0) <= count - 1)
    usable = np.zeros(len(count), bool)
    usable[inputs.populations[row]] = True
    return PseudoTarget(model, ~selected[model], references, usable & (count >= max(2, rank + 1)))


def pseudo_targets(inputs: AttackInputs, row: int) -> list[PseudoTarget]:
    """The first OFFLINE_A_MODELS references of target row `row` that can be attacked: with
    members and non-members among their usable examples. Raises if none can."""
    fits = [pseudo_target(inputs, row, rank) for rank in range(min(OFFLINE_A_MODELS, len(inputs.order) - 1))]
    fits = [fit for fit in fits if 0 < fit.is_member[fit.usable].sum() < fit.usable.sum()]
    if not fits:
        raise ValueError(
            f"--rmia_offline_a=auto attacks target {inputs.targets[row]}'s first reference models offline, with the "
            "other OUT references of each example: it needs 2 OUT references per example (one is the attacked "
            f"model), and there are at most {int(inputs.offline_out[row].sum(axis=0).max())} (--num_shadows_used=1 "
            "or too few models). Give a number in [0, 1] (the authors' CIFAR-10 value is 0.3) or more references."
        )
    return fits


def fit_offline_a(inputs: AttackInputs, probability: np.ndarray, reference_mean: Callable,
                  attack_scores: Callable) -> tuple[np.ndarray, list[list[int]]]:  # fmt: skip
    """-> (a [T], the models attacked for each target), running the offline attack as RMIA does
    (lira/attacks/rmia.py, with its options): probability [M, N, Q], as the attack reads it;
    reference_mean(mask bool [J, M, N]) -> [J, N, Q], the mean p over each mask's models;
    attack_scores(ratio [n, Q], population int [P] (indices into the n), seed) -> scores [n]."""
    fitted, attacked = np.empty(inputs.num_targets), []
    for row in range(inputs.num_targets):
        fits = pseudo_targets(inputs, row)
        mean = reference_mean(np.stack([fit.references for fit in fits]))
        rng = np.random.default_rng(inputs.seeds[row])
        auc = np.zeros(len(OFFLINE_A_GRID))
        for fit, reference in zip(fits, mean):
            used = np.flatnonzero(fit.usable)
            if len(used) > OFFLINE_A_EXAMPLES:
                used = np.sort(rng.choice(used, OFFLINE_A_EXAMPLES, replace=False))
            observed, member = probability[fit.model, used].astype(np.float64), fit.is_member[used]
            for i, a in enumerate(OFFLINE_A_GRID):
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = observed / ((1.0 + a) / 2 * reference[used] + (1.0 - a) / 2)
                scores = attack_scores(ratio, np.flatnonzero(~member), inputs.seeds[row])
                auc[i] += roc_auc_score(member, scores) / len(fits)
        fitted[row] = OFFLINE_A_GRID[int(np.argmax(auc))]
        attacked.append([fit.model for fit in fits])
    return fitted, attacked
