"""Audit models trained anywhere, from Python: their logits in, the attacks' scores and figures out.

    import lira.api
    result = lira.api.audit(logits, keep, labels)                # [M, N, (Q,) C], [M, N], [N]
    print(result.table())                                         # the attack table, with intervals
    result.compare("rmia_online", "lira_online")["tpr_at_fpr"]["0.001"]
    result.plot_roc("roc.png")

The same protocol as the attack stage (lira/attacks/protocol.py): models 0..T-1 are the targets
in turn, every other model a reference; the same metrics (lira/metrics.py: TPR only at levels
the non-members can resolve, bootstrap intervals). The arrays are checked first
(lira.run.external): non-finite logits, probabilities given as logits, labels outside [0, C) and
masks that do not match are refused in one line before any attack runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lira import metrics as metrics_lib
from lira.attacks import probability_signal
from lira.attacks.protocol import (
    AttackResult,
    check_attack_names,
    check_options,
    run_attacks,
    runnable_attacks,
)
from lira.report import plots, tables
from lira.run import external
from lira.run.reader import Run
from lira.signals import signals_from_logits
from lira.stages.attack import audit_metrics


@dataclasses.dataclass(frozen=True)
class Audit:
    """What `audit` found. metrics: as the attack stage's metrics.json ("attacks": {name: AUC,
    TPR at each resolvable FPR level, intervals, per-target figures}); results: {name:
    AttackResult} (scores float [T, N], larger = more likely a member); run: the attacked arrays."""

    run: Run
    results: dict[str, AttackResult]
    metrics: dict

    @property
    def targets(self) -> list[int]:
        return self.metrics["targets"]

    @property
    def membership(self) -> np.ndarray:
        """bool [T, N]: the truth the scores are judged against (keep's target rows)."""
        return self.run.keep[self.targets]

    def scores(self, attack: str) -> np.ndarray:
        """float [T, N]: `attack`'s score of every example against every target."""
        return self.results[self._known(attack)].scores

    def tpr_at(self, attack: str, fpr: float = 1e-3) -> float | None:
        """Pooled TPR at an FPR level (one of lira.metrics.FPR_LEVELS), None where not resolvable."""
        return self.metrics["attacks"][self._known(attack)]["tpr_at_fpr"][metrics_lib.level_key(fpr)]

    def table(self) -> str:
        """The attack table (markdown), with the 95% intervals."""
        return tables.markdown_table(self.metrics)

    def compare(self, a: str, b: str, num_resamples: int = 1000, seed: int = 0, unit: str = "both") -> dict:
        """Attack a minus attack b on the same targets and examples, with a paired bootstrap
        interval (lira.metrics.paired_difference; `lira.metrics.beats` reads it)."""
        least = self.metrics["attacks"][self._known(a)]["min_false_positives"]
        return metrics_lib.paired_difference(
            self.scores(a), self.scores(b), self.membership, num_resamples, seed, unit, least
        )

    def plot_roc(self, path: str | Path, log_scale: bool = True) -> Path:
        """Every attack's ROC over all targets' scores, pooled, saved to `path` (log-log by default:
        the low-FPR regime is the one that matters)."""
        curves = {
            name: metrics_lib.roc_curve(result.scores.ravel(), self.membership.ravel())[:2]
            for name, result in self.results.items()
        }
        labels = {name: f"{name} (AUC={self.metrics['attacks'][name]['auc']:.3f})" for name in curves}
        plots.roc_curves(curves, labels, Path(path), log_scale)
        return Path(path)

    def _known(self, attack: str) -> str:
        if attack not in self.results:
            raise ValueError(f"{attack!r} was not run; the audit ran {', '.join(self.results)}.")
        return attack


def audit(
    logits,
    keep,
    labels,
    *,
    attacks: list[str] | tuple[str, ...] = ("all",),
    num_targets: int = 4,
    num_shadows_used: int | None = None,
    options: dict[str, dict] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    min_false_positives: int | None = None,
    binary_logit: bool = False,
    from_probabilities: bool = False,
    strict: bool = False,
) -> Audit:
    """Runs `attacks` against models 0..num_targets-1, each with the other models as references.

    logits: float [M, N, C] or [M, N, Q, C] (Q augmented queries of each example, the same for
    every model); keep: bool [M, N], keep[m, j] = model m trained on example j; labels: int [N].
    options: {attack: {option: value}} (lira.attacks.ATTACKS[name].options lists them).
    binary_logit, from_probabilities: see lira.run.external.check_arrays. An attack the models
    lack the references for is left out, its reason in metrics["skipped"] (strict: refused).
    """
    logits, keep, labels = external.check_arrays(
        logits, keep, labels, binary_logit=binary_logit, from_probabilities=from_probabilities
    )
    options = options or {}
    names = check_attack_names(list(attacks))
    check_options(names, options)
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}.")
    targets = list(range(min(num_targets, len(keep))))
    names, skipped = runnable_attacks(keep, targets, names, num_shadows_used, seed, strict=strict)
    signals = signals_from_logits(logits, labels, probability_signal(names, options))
    run = Run(keep=keep, labels=labels, signals=signals)
    results = run_attacks(run, names, targets, num_shadows_used, seed, options)
    metrics = audit_metrics(results, keep, signals.num_queries, bootstrap, seed, min_false_positives)
    metrics.update(num_shadows_used=num_shadows_used, seed=seed, attack_options=options, skipped=skipped)
    return Audit(run, results, metrics)
