"""The attack protocol: every attack against each target model, with leave-one-out references.

Protocol (docs/attacks.md): models 0..T-1 are the targets in turn; a target's references are all the
other models, in one fixed order (a permutation of the model indices drawn from `seed`, with
the target removed). Equal reference counts: with balanced masks a member of the target has one
IN reference fewer than a non-member and one OUT reference more, so the counts alone would
reveal membership and bias every count-dependent statistic. So, per example n:

- online attacks use the first n IN and the first n OUT references in that order, with
  n = min(#IN, #OUT) - 1 counted over all M models (M/2 - 1 with balanced masks): the same for
  members and non-members of the target, whatever the masks;
- offline attacks use the first #OUT - 1 OUT references (M/2 - 1 with balanced masks): the
  count a non-member of the target has, so a member's extra OUT reference is left out;
- with `num_shadows_used = K`, online attacks draw only on the first K references of the order
  (n is then also at most min(#IN, #OUT) among those K), and offline attacks use at most K OUT
  references per example.

The LiRA code truncates to the smallest count and the RMIA code keeps `num_ref_models // 2` of
each kind; this is the same rule, applied once, here, for every attack.

Canaries (the `canaries` columns, drawn independently per model: lira/run/masks.py) follow
another rule, because the one-run privacy audit needs every guess about a target's canary to
depend on the target's output alone, never on its membership. Their references' counts are
independent of the target's membership, so nothing needs equalising, and any count that adds the
target's own entry would leak it: online attacks use the first min(#IN, #OUT) references, offline
attacks every OUT reference (at most K of each), counted over the references alone. A canary with
fewer references than an attack needs (a column of coin flips can be all IN) is not an error:
that attack gives it the target's lowest score (never guessed a member), and its result's info
counts them as `unscored_canaries`. RMIA's population is the target's non-members outside the
canaries.

The target's own signals reach an attack only as the target: its row is False in every
reference mask, which `run_attacks` asserts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

import numpy as np

from lira.attacks import ATTACKS, BLACK_BOX, WHITE_BOX, AttackInputs, option_names, probability_signal
from lira.run.reader import Run


@dataclasses.dataclass
class AttackResult:
    """scores float [T, N] (larger = more likely member); row i is the attack on model targets[i],
    whose membership truth is keep[targets[i]]. info: what the attack chose from the data (for
    example RMIA's fitted offline a per target), for the report."""

    scores: np.ndarray
    targets: list[int]
    info: dict = dataclasses.field(default_factory=dict)


def check_attack_names(attacks: list[str], whitebox: bool = False) -> list[str]:
    """Expands "all" (the white-box attacks too when `whitebox`: the run has white-box signals)
    and rejects unknown names, listing the valid ones, and white-box attacks without `whitebox`."""
    if list(attacks) == ["all"]:
        return BLACK_BOX + (WHITE_BOX if whitebox else [])
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"Unknown attacks {unknown}; choose from {sorted(ATTACKS)} or 'all'.")
    blind = [a for a in attacks if ATTACKS[a].needs_whitebox and not whitebox]
    if blind:
        raise ValueError(
            f"{', '.join(blind)} {'needs' if len(blind) == 1 else 'need'} white-box signals, which this run has "
            "not: run experiments/inference.py --whitebox on it first."
        )
    return list(dict.fromkeys(attacks))


def check_options(attacks: list[str], attack_options: dict[str, dict]) -> None:
    for name, options in attack_options.items():
        if name not in attacks:
            continue  # options of an attack not run are ignored, so one option set serves any --attacks
        unknown = set(options) - set(option_names(name))
        if unknown:
            raise ValueError(f"{name} has no options {sorted(unknown)}; it takes {option_names(name)}.")
    probability_signal(attacks, attack_options)  # RMIA's signal options are valid and agree


def reference_order(num_models: int, seed: int) -> np.ndarray:
    """The fixed order int [M] in which references are taken (the same for every target)."""
    return np.random.default_rng(seed).permutation(num_models)


def reference_rows(order: np.ndarray, target: int) -> np.ndarray:
    """Reference model indices of `target`: every other model, in the fixed order. [M - 1]."""
    return order[order != target]


@dataclasses.dataclass
class Selection:
    """Which models are a target's references for each example: bool [T, M, N] each."""

    is_in: np.ndarray
    is_out: np.ndarray
    offline_out: np.ndarray


def _first(mask: np.ndarray, count: np.ndarray) -> np.ndarray:
    """bool [R, N]: per column, the first `count` [N] True entries of mask [R, N]."""
    return mask & (np.cumsum(mask, axis=0) <= count)


def canary_columns(num_examples: int, canaries: np.ndarray | None) -> np.ndarray:
    """bool [N]: which pool examples are canaries (columns of keep drawn independently per model)."""
    independent = np.zeros(num_examples, bool)
    if canaries is not None:
        independent[np.asarray(canaries, dtype=np.int64)] = True
    return independent


def select_references(keep: np.ndarray, targets: list[int], num_shadows_used: int | None = None,
                      seed: int = 0, order: np.ndarray | None = None,
                      canaries: np.ndarray | None = None) -> Selection:  # fmt: skip
    """The reference masks of every target (module docstring): equal counts, and counts from the
    references alone on the `canaries` (int [K]). keep: bool [M, N]; `order` (a permutation of
    the models) replaces the seeded reference order."""
    num_models, num_examples = keep.shape
    order = reference_order(num_models, seed) if order is None else np.asarray(order)
    independent = canary_columns(num_examples, canaries)
    num_in_all = keep.sum(axis=0)
    balanced = np.minimum(num_in_all, num_models - num_in_all) - 1  # [N], as a member or non-member has
    offline_count = num_models - num_in_all - 1
    balanced[independent] = num_models  # no cap: the references' own counts decide
    offline_count[independent] = num_models
    if num_shadows_used is not None:
        offline_count = np.minimum(offline_count, num_shadows_used)
    shape = (len(targets), num_models, num_examples)
    selection = Selection(np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool))
    for row, target in enumerate(targets):
        rows = reference_rows(order, target)
        used = rows[:num_shadows_used]
        used_keep = keep[used]
        count = np.minimum(np.minimum(used_keep.sum(axis=0), (~used_keep).sum(axis=0)), balanced)
        selection.is_in[row, used] = _first(used_keep, count)
        selection.is_out[row, used] = _first(~used_keep, count)
        selection.offline_out[row, rows] = _first(~keep[rows], offline_count)
    return selection


def check_references(keep: np.ndarray, targets: list[int], attacks: list[str], num_shadows_used: int | None,
                     seed: int, canaries: np.ndarray | None = None) -> Selection:  # fmt: skip
    """Fails, before any work, if some attack lacks the references it needs for some example
    other than a canary (module docstring), or RMIA a population; returns the reference selection
    it checked."""
    selection, problems = reference_problems(keep, targets, attacks, num_shadows_used, seed, canaries)
    if problems:
        raise ValueError(next(iter(problems.values())))
    return selection


def runnable_attacks(keep: np.ndarray, targets: list[int], attacks: list[str], num_shadows_used: int | None,
                     seed: int, canaries: np.ndarray | None = None,
                     strict: bool = False) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """(the attacks this run has the references for, {attack: why not} for the others), so that one
    attack short of references does not stop the others. Raises ValueError when `strict` and some
    attack cannot run, when none can, and for a flag no attack can run with (num_shadows_used
    beyond the models)."""
    _, skipped = reference_problems(keep, targets, attacks, num_shadows_used, seed, canaries)
    runnable = [name for name in attacks if name not in skipped]
    if skipped and (strict or not runnable):
        name, reason = next(iter(skipped.items()))
        raise ValueError(reason if strict else f"No attack can run on these models: {name}: {reason}")
    return runnable, skipped


def reference_problems(keep: np.ndarray, targets: list[int], attacks: list[str], num_shadows_used: int | None,
                       seed: int, canaries: np.ndarray | None = None) -> tuple[Selection | None, dict[str, str]]:  # fmt: skip
    """(the reference selection, {attack: why it cannot run}) for every attack at once, the
    selection drawn once. The problems are in the order the checks run (the first is what
    check_references raises). A num_shadows_used beyond the models raises: no attack can run."""
    num_models = keep.shape[0]
    independent = canary_columns(keep.shape[1], canaries)
    if num_shadows_used is not None and not 1 <= num_shadows_used <= num_models - 1:
        raise ValueError(
            f"num_shadows_used={num_shadows_used}, but each target has {num_models - 1} references "
            f"({num_models} models); choose 1..{num_models - 1}."
        )
    problems: dict[str, str] = {}
    with_references = [name for name in attacks if ATTACKS[name].references != "none"]
    if num_models < 2:
        for name in with_references:
            problems[name] = f"Attacks with references need >= 2 models; the run has {num_models}."
        if problems:  # nothing to select references from
            return None, problems
    offline = [name for name in attacks if ATTACKS[name].references == "out"]
    if num_shadows_used is not None and offline:
        available = num_models - keep.sum(axis=0) - 1  # OUT references every example has, member or not
        available[independent] = num_models  # a canary may have fewer: it is left unscored
        if available.min() < num_shadows_used:
            example = int(np.argmin(available))
            for name in offline:
                problems.setdefault(
                    name,
                    f"num_shadows_used={num_shadows_used} is too large for offline attack {name}: example {example} "
                    f"has only {available[example]} OUT references for a target that is not trained on it "
                    f"(equal counts for members and non-members); choose at most {available.min()}.",
                )
    selection = select_references(keep, targets, num_shadows_used, seed, canaries=canaries)
    rmia = [name for name in attacks if ATTACKS[name].needs_probability and name not in problems]
    if rmia:
        empty = next((t for t in targets if not population(keep, t, independent).size), None)
        if empty is not None:
            for name in rmia:
                problems[name] = (
                    f"RMIA needs a population, but target {empty} trained on every pool example outside "
                    "the canaries; use a larger --pool_size or fewer --canaries."
                )
    for name in with_references:
        if name not in problems:
            problem = _count_problem(name, selection, independent, targets, num_shadows_used, num_models)
            if problem is not None:
                problems[name] = problem
    return selection, problems


def _count_problem(name: str, selection: Selection, independent: np.ndarray, targets: list[int],
                   num_shadows_used: int | None, num_models: int) -> str | None:  # fmt: skip
    """Why attack `name` lacks the IN/OUT references it needs for some example other than a
    canary, or None."""
    spec = ATTACKS[name]
    if spec.references == "out":
        counts = {"OUT": selection.offline_out.sum(axis=1)}
        needed = {"OUT": spec.min_out}
    else:
        counts = {"IN": selection.is_in.sum(axis=1), "OUT": selection.is_out.sum(axis=1)}
        needed = {"IN": spec.min_in, "OUT": spec.min_out}
    for kind, count in counts.items():  # count: [T, N]
        count = np.where(independent, np.iinfo(count.dtype).max, count)  # canaries may be short
        if count.min() < needed[kind]:
            row, example = np.unravel_index(np.argmin(count), count.shape)
            return (
                f"{name} needs >= {needed[kind]} {kind} references per example, but for target "
                f"{targets[row]} example {example} has {count[row, example]} (equal IN/OUT counts, "
                f"{num_shadows_used or num_models - 1} references used); train more shadow models or "
                "raise num_shadows_used."
            )
        # An offline test pools around the global mean when no example has two (lira_attacks).
        if spec.pooled and spec.references != "out" and count.max(axis=1).min() < 2:
            row = int(np.argmin(count.max(axis=1)))
            return (
                f"{name} pools one {kind} variance from examples with >= 2 {kind} references, but for "
                f"target {targets[row]} no example has more than {count[row].max()}; train more shadow "
                "models or raise num_shadows_used."
            )
    return None


def _target_seed(seed: int, target: int) -> int:
    return int(np.random.SeedSequence([seed, target]).generate_state(1)[0])


def population(keep: np.ndarray, target: int, independent: np.ndarray) -> np.ndarray:
    """int [P]: RMIA's population for `target`, its non-members outside the canaries
    (`independent`, bool [N]): a canary's membership must not decide which examples x is
    compared with."""
    return np.flatnonzero(~keep[target] & ~independent)


def unscored(selection: Selection, name: str) -> np.ndarray:
    """bool [T, N]: where attack `name` has fewer references than it needs (canaries only, as
    check_references ensures)."""
    spec = ATTACKS[name]
    if spec.references == "none":
        return np.zeros(selection.is_in.shape[::2], bool)
    if spec.references == "out":
        return selection.offline_out.sum(axis=1) < spec.min_out
    return (selection.is_in.sum(axis=1) < spec.min_in) | (selection.is_out.sum(axis=1) < spec.min_out)


def attack_inputs(run: Run, targets: list[int], selection: Selection, seed: int = 0) -> AttackInputs:
    """What every attack reads, for all targets (see lira.attacks.common.AttackInputs)."""
    independent = canary_columns(run.num_examples, run.canaries)
    for mask in (selection.is_in, selection.is_out, selection.offline_out):  # leave-one-out
        assert not mask[np.arange(len(targets)), targets].any()
    return AttackInputs(
        signals=run.signals,
        targets=np.asarray(targets),
        labels=np.asarray(run.labels),
        is_in=selection.is_in,
        is_out=selection.is_out,
        offline_out=selection.offline_out,
        seeds=[_target_seed(seed, target) for target in targets],
        populations=[population(run.keep, target, independent) for target in targets],
        order=reference_order(run.num_models, seed),
    )


def run_attacks(run: Run, attacks: list[str], targets: list[int], num_shadows_used: int | None = None,
                seed: int = 0, attack_options: dict[str, dict] | None = None,
                on_done: Callable[[str, float], None] | None = None) -> dict[str, AttackResult]:  # fmt: skip
    """Scores of every attack against every target of `run` (its signals [M, N, Q], keep, labels
    and canaries: the pool examples whose keep columns are independent, module docstring).
    on_done(name, seconds) is called as each attack finishes (the stage's progress)."""
    attack_options = attack_options or {}
    attacks = check_attack_names(attacks, whitebox=run.signals.grad is not None)
    check_options(attacks, attack_options)
    selection = check_references(run.keep, targets, attacks, num_shadows_used, seed, run.canaries)
    inputs = attack_inputs(run, targets, selection, seed)
    results = {}
    for name in attacks:
        tic = time.perf_counter()
        short = unscored(selection, name)
        quiet = np.errstate(invalid="ignore", divide="ignore") if short.any() else contextlib.nullcontext()
        with quiet:  # a short canary's statistics are empty; its score is replaced below
            output = ATTACKS[name].fn(inputs, **attack_options.get(name, {}))
        scores, info = output if isinstance(output, tuple) else (output, {})
        scores = np.asarray(scores, dtype=np.float64)
        if short.any():
            lowest = np.where(short, np.inf, np.nan_to_num(scores, nan=np.inf)).min(axis=1, keepdims=True)
            scores = np.where(short, lowest, scores)
            info = {**info, "unscored_canaries": int(short.sum())}
        bad = np.argwhere(~np.isfinite(scores))
        if len(bad):
            row, example = bad[0]
            raise FloatingPointError(
                f"{name} gave {len(bad)} non-finite scores (first: target {targets[row]}, example {example}); "
                "check that model's logits."
            )
        results[name] = AttackResult(scores, list(targets), info)
        if on_done is not None:
            on_done(name, time.perf_counter() - tic)
    return results
