"""The attack stage: every attack against each target model, with leave-one-out references.

Protocol (DESIGN.md): models 0..T-1 are the targets in turn; a target's references are all the
other models, in one fixed order (a permutation of the model indices drawn from `seed`, with
the target removed). With `num_shadows_used = K`:
- attacks with IN and OUT references (online) use the first K references of that order;
- attacks with OUT references only (offline) use, for each example, the first K references of
  that order that are OUT for it.
The same choice holds for every attack, so attacks are compared on the same shadow models.

The target's own signals reach an attack only as `target`; `References` are built from the
other models' rows, so no statistic of a target's references can depend on its outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lira import metrics as metrics_lib
from lira import rundir
from lira.attacks import ATTACKS, AttackContext, References, option_names
from lira.signals import Signals, run_signals


@dataclasses.dataclass
class AttackResult:
    """scores float [T, N] (larger = more likely member); row i is the attack on model targets[i],
    whose membership truth is keep[targets[i]]."""

    scores: np.ndarray
    targets: list[int]


def check_attack_names(attacks: list[str]) -> list[str]:
    """Expands "all" and rejects unknown names, listing the valid ones."""
    if list(attacks) == ["all"]:
        return list(ATTACKS)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"Unknown attacks {unknown}; choose from {sorted(ATTACKS)} or 'all'.")
    return list(dict.fromkeys(attacks))


def check_options(attacks: list[str], attack_options: dict[str, dict]) -> None:
    for name, options in attack_options.items():
        if name not in attacks:
            continue  # options of an attack not run are ignored, so one option set serves any --attacks
        unknown = set(options) - set(option_names(name))
        if unknown:
            raise ValueError(f"{name} has no options {sorted(unknown)}; it takes {option_names(name)}.")


def reference_order(num_models: int, seed: int) -> np.ndarray:
    """The fixed order int [M] in which references are taken (the same for every target)."""
    return np.random.default_rng(seed).permutation(num_models)


def reference_rows(order: np.ndarray, target: int) -> np.ndarray:
    """Reference model indices of `target`: every other model, in the fixed order. [M - 1]."""
    return order[order != target]


def first_out_per_example(reference_keep: np.ndarray, num_shadows_used: int | None) -> np.ndarray:
    """bool [R, N]: per example (column), the first K references that are OUT for it."""
    is_out = ~reference_keep
    if num_shadows_used is None:
        return is_out
    return is_out & (np.cumsum(is_out, axis=0) <= num_shadows_used)


def check_references(keep: np.ndarray, targets: list[int], attacks: list[str], num_shadows_used: int | None,
                     seed: int) -> None:  # fmt: skip
    """Fails, before any work, if some attack lacks the references it needs for some example."""
    num_models = keep.shape[0]
    if num_shadows_used is not None and not 1 <= num_shadows_used <= num_models - 1:
        raise ValueError(
            f"num_shadows_used={num_shadows_used}, but each target has {num_models - 1} references "
            f"({num_models} models); choose 1..{num_models - 1}."
        )
    if num_models < 2 and any(ATTACKS[name].references != "none" for name in attacks):
        raise ValueError(f"Attacks with references need >= 2 models; the run has {num_models}.")
    order = reference_order(num_models, seed)
    for target in targets:
        rows = reference_rows(order, target)
        online_keep = keep[rows[:num_shadows_used]]
        num_out_available = (~keep[rows]).sum(axis=0)
        for name in attacks:
            spec = ATTACKS[name]
            if spec.references == "out":
                if num_shadows_used is not None and num_out_available.min() < num_shadows_used:
                    example = int(np.argmin(num_out_available))
                    raise ValueError(
                        f"num_shadows_used={num_shadows_used} is too large for offline attack {name}: for target "
                        f"{target}, example {example} has only {num_out_available[example]} OUT references."
                    )
                num_in = np.zeros(keep.shape[1], int)
                num_out = np.minimum(num_out_available, num_shadows_used or num_models)
            elif spec.references == "in_and_out":
                num_in, num_out = online_keep.sum(axis=0), (~online_keep).sum(axis=0)
            else:
                continue
            for kind, count, needed in (("IN", num_in, spec.min_in), ("OUT", num_out, spec.min_out)):
                if count.min() < needed:
                    example = int(np.argmin(count))
                    raise ValueError(
                        f"{name} needs >= {needed} {kind} references per example, but for target {target} "
                        f"example {example} has {count[example]} (of {len(online_keep)} references used); "
                        "train more shadow models or raise num_shadows_used."
                    )
                if spec.pooled and needed and count.max() < 2:
                    raise ValueError(
                        f"{name} pools one {kind} variance from examples with >= 2 {kind} references, but for "
                        f"target {target} no example has more than {count.max()}; train more shadow models "
                        "or raise num_shadows_used."
                    )


def _target_seed(seed: int, target: int) -> int:
    return int(np.random.SeedSequence([seed, target]).generate_state(1)[0])


def run_attacks(signals: Signals, keep: np.ndarray, labels: np.ndarray, attacks: list[str], targets: list[int],
                num_shadows_used: int | None = None, seed: int = 0,
                attack_options: dict[str, dict] | None = None) -> dict[str, AttackResult]:  # fmt: skip
    """Scores of every attack against every target. signals: [M, N, Q] arrays; keep bool [M, N]."""
    attack_options = attack_options or {}
    attacks = check_attack_names(attacks)
    check_options(attacks, attack_options)
    check_references(keep, targets, attacks, num_shadows_used, seed)
    order = reference_order(keep.shape[0], seed)
    scores = {name: np.empty((len(targets), keep.shape[1])) for name in attacks}
    for row, target in enumerate(targets):
        rows = reference_rows(order, target)
        assert target not in rows  # leave-one-out, by construction
        reference_signals = signals.select(rows)  # a copy: nothing below can reach the target's rows
        reference_keep = keep[rows]
        online = References(
            reference_signals.select(slice(0, num_shadows_used)),
            reference_keep[:num_shadows_used],
            ~reference_keep[:num_shadows_used],
        )
        offline = References(
            reference_signals,
            np.zeros_like(reference_keep),
            first_out_per_example(reference_keep, num_shadows_used),
        )
        context = AttackContext(
            labels=labels, seed=_target_seed(seed, target), population=np.flatnonzero(~keep[target])
        )
        target_signals = signals.select(target)
        for name in attacks:
            spec = ATTACKS[name]
            references = offline if spec.references == "out" else online
            result = np.asarray(spec.fn(target_signals, references, context, **attack_options.get(name, {})))
            bad = np.flatnonzero(~np.isfinite(result))
            if len(bad):
                raise FloatingPointError(
                    f"{name} gave {len(bad)} non-finite scores against target {target} (examples "
                    f"{rundir.format_ranges(bad.tolist()[:20])}...); check that model's logits."
                )
            scores[name][row] = result
    return {name: AttackResult(scores[name], list(targets)) for name in attacks}


def audit_metrics(results: dict[str, AttackResult], keep: np.ndarray, num_queries: int, bootstrap: int = 200,
                  seed: int = 0) -> dict:  # fmt: skip
    """The metrics.json dict: figures per attack, pooling all targets (see lira.metrics)."""
    targets = next(iter(results.values())).targets if results else []
    return {
        "num_models": int(keep.shape[0]),
        "num_targets": len(targets),
        "num_queries": int(num_queries),
        "num_examples": int(keep.shape[1]),
        "targets": list(targets),
        "attacks": {
            name: metrics_lib.attack_metrics(result.scores, keep[result.targets], bootstrap, seed)
            for name, result in results.items()
        },
    }


def run_audit(logdir: Path, attacks: list[str], *, num_targets: int = 4, num_shadows_used: int | None = None,
              seed: int = 0, bootstrap: int = 200,
              attack_options: dict[str, dict] | None = None) -> tuple[dict, dict[str, AttackResult]]:  # fmt: skip
    """Loads a run directory, runs `attacks` and returns (metrics dict, {name: AttackResult}).

    Everything that can be checked from keep.npy alone (attack names, options, reference
    counts) is checked before any logits are read.
    """
    attack_options = attack_options or {}
    attacks = check_attack_names(attacks)
    check_options(attacks, attack_options)
    keep = rundir.load_keep(logdir)
    labels = rundir.load_labels(logdir)
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}.")
    targets = list(range(min(num_targets, keep.shape[0])))
    check_references(keep, targets, attacks, num_shadows_used, seed)
    signals = run_signals(logdir, with_softmax=any(ATTACKS[a].needs_softmax for a in attacks))
    results = run_attacks(signals, keep, labels, attacks, targets, num_shadows_used, seed, attack_options)
    metrics = audit_metrics(results, keep, signals.phi.shape[-1], bootstrap, seed)
    metrics.update(num_shadows_used=num_shadows_used, seed=seed, attack_options=attack_options)
    return metrics, results
