"""The attack stage as a library call: every attack against each target model, the metrics and
the report (what experiments/attack.py runs). The protocol itself is lira/attacks/protocol.py.

    from lira import config
    from lira.stages import attack
    metrics = attack.attack("exp/demo", config.AttackConfig(attacks=["lira_online"], num_targets=8))
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np

from lira import audit, data, report
from lira import metrics as metrics_lib
from lira.attacks import ATTACKS, probability_signal
from lira.attacks.protocol import (
    AttackResult,
    check_attack_names,
    check_options,
    check_references,
    run_attacks,
)
from lira.attacks.signals import Signals, run_signals
from lira.config import AttackConfig
from lira.run import layout
from lira.training import augment


def attack(logdir: str | Path, config: AttackConfig) -> dict:
    """Runs config.attacks on the run in `logdir` and writes report/: metrics.json,
    scores/NAME.npy (float [T, N]), the plots and tables. Returns the metrics dict."""
    config.validate()
    logdir = Path(logdir)
    metrics, results = run_audit(
        logdir, config.attacks, num_targets=config.num_targets, num_shadows_used=config.num_shadows_used,
        seed=config.seed, bootstrap=config.bootstrap, attack_options=config.options(),
        min_false_positives=config.min_false_positives,
        audit_method=config.audit_method, audit_significance=config.audit_significance,
        audit_delta=config.audit_delta, audit_attacks=config.audit_attacks,
    )  # fmt: skip
    report_dir = logdir / layout.REPORT_DIR
    layout.save_json(report_dir / layout.METRICS, metrics)
    for name, result in results.items():
        layout.save_npy(report_dir / layout.SCORES_DIR / f"{name}.npy", result.scores)
    record = layout.load_record(logdir)
    keep = layout.load_keep(logdir)
    report.write_report(
        report_dir, results, metrics, labels=layout.load_labels(logdir), keep=keep, record=record,
        train_log=layout.read_jsonl(logdir / layout.TRAIN_LOG), images=_pool_images(record),
        gradient_norms=gradient_norms(logdir, record, keep, metrics["targets"]) if metrics.get("whitebox") else None,
    )  # fmt: skip
    return metrics


def gradient_norms(logdir: Path, record: layout.RunRecord, keep: np.ndarray, targets: list[int]) -> dict:
    """{layer or "whole model": (log10 loss-gradient norms [T * N], is_member [T * N])} on the
    targets' examples, plain query: what report/gradient_norms.png draws."""
    names = [*record.whitebox["layers"], "whole model"]
    norms = np.stack(
        [np.load(layout.whitebox_path(logdir, t, "norms"), mmap_mode="r")[:, 0] for t in targets]
    )
    values = np.log10(np.maximum(norms, 1e-30)).reshape(-1, len(names))  # [T * N, L + 1]
    member = keep[targets].ravel()
    return {name: (values[:, i], member) for i, name in enumerate(names)}


def _pool_images(record: layout.RunRecord) -> np.ndarray | None:
    """The pool's images for the report, or None: a missing dataset must not stop the report."""
    try:
        return data.load_raw_images(record.config.data.dataset, record.config.data.data_dir,
                                    record.config.data.pool_size)  # fmt: skip
    except Exception as error:  # any failure here costs only the image grid
        print(f"No images for the report ({type(error).__name__}: {error}).")
        return None


def audit_metrics(results: dict[str, AttackResult], keep: np.ndarray, num_queries: int, bootstrap: int = 200,
                  seed: int = 0, min_false_positives: int | None = None) -> dict:  # fmt: skip
    """The metrics.json dict: figures per attack, pooling all targets (see lira.metrics; TPR only
    at levels allowing min_false_positives, default lira.metrics.MIN_FALSE_POSITIVES). Attacks
    are measured in parallel threads (numpy releases the GIL in the bootstrap's array work)."""
    targets = next(iter(results.values())).targets if results else []
    least = metrics_lib.MIN_FALSE_POSITIVES if min_false_positives is None else min_false_positives
    measure = lambda result: metrics_lib.attack_metrics(
        result.scores, keep[result.targets], bootstrap, seed, least
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4)) as pool:
        figures = list(pool.map(measure, results.values()))
    return {
        "num_models": int(keep.shape[0]),
        "num_targets": len(targets),
        "num_queries": int(num_queries),
        "num_examples": int(keep.shape[1]),
        "targets": list(targets),
        "attacks": {name: {**entry, **results[name].info} for name, entry in zip(results, figures)},
    }


def run_audit(logdir: Path, attacks: list[str], *, num_targets: int = 4, num_shadows_used: int | None = None,
              seed: int = 0, bootstrap: int = 200, attack_options: dict[str, dict] | None = None,
              audit_method: str = "one_run", audit_significance: float = 0.05,
              audit_delta: float | None = None,
              audit_attacks: list[str] | None = None,
              min_false_positives: int | None = None) -> tuple[dict, dict[str, AttackResult]]:  # fmt: skip
    """Loads a run directory, runs `attacks` and returns (metrics dict, {name: AttackResult}).

    Everything that can be checked from keep.npy alone (attack names, options, reference
    counts) is checked before any logits are read. The metrics hold each attack's empirical
    epsilon lower bound (lira.audit) and the run's accounted epsilon (None without DP).
    """
    attack_options = attack_options or {}
    keep = layout.load_keep(logdir)
    labels = layout.load_labels(logdir)
    canaries = layout.load_canaries(logdir)  # independent keep columns: their own reference rule
    whitebox = set(range(keep.shape[0])) <= set(layout.available_whitebox(logdir))
    if list(attacks) == ["all"] and not whitebox:
        print(f"Note: {logdir} has no white-box signals, so 'all' leaves out the white-box attacks "
              "(experiments/inference.py --whitebox computes them).")  # fmt: skip
    attacks = check_attack_names(attacks, whitebox)
    check_options(attacks, attack_options)
    audited = check_audit_attacks(audit_attacks, attacks)
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}.")
    targets = list(range(min(num_targets, keep.shape[0])))
    check_references(keep, targets, attacks, num_shadows_used, seed, canaries)
    needs_whitebox = any(ATTACKS[name].needs_whitebox for name in attacks)
    signals = run_signals(logdir, probability_signal(attacks, attack_options), whitebox=needs_whitebox)
    results = run_attacks(
        signals, keep, labels, attacks, targets, num_shadows_used, seed, attack_options, canaries
    )
    metrics = audit_metrics(results, keep, signals.phi.shape[-1], bootstrap, seed, min_false_positives)
    metrics.update(num_shadows_used=num_shadows_used, seed=seed, attack_options=attack_options)
    if needs_whitebox:
        metrics["whitebox"] = layout.load_record(logdir).whitebox
    metrics["models"] = model_accuracy(
        signals, keep, labels, layout.read_jsonl(Path(logdir) / layout.TRAIN_LOG)
    )
    audited_results = {name: results[name] for name in audited}
    metrics["audit"] = privacy_audit(
        logdir, audited_results, keep, audit_method, audit_significance, audit_delta
    )
    for name, bound in metrics["audit"].pop("bounds").items():
        metrics["attacks"][name]["epsilon_lower_bound"] = bound
    return metrics, results


def check_audit_attacks(audit_attacks: list[str] | None, attacks: list[str]) -> list[str]:
    """The attacks the privacy audit bounds: `audit_attacks` (all of `attacks` when empty), which
    must be among the attacks run."""
    if not audit_attacks:
        return list(attacks)
    missing = [name for name in audit_attacks if name not in attacks]
    if missing:
        raise ValueError(
            f"--audit_attacks={','.join(audit_attacks)}: {', '.join(missing)} not among the attacks run "
            f"({', '.join(attacks)}); name some of those."
        )
    return list(dict.fromkeys(audit_attacks))


def privacy_audit(logdir: Path, results: dict[str, AttackResult], keep: np.ndarray, method: str,
                  significance: float, delta: float | None) -> dict:  # fmt: skip
    """metrics.json's "audit": {"method", "significance", "delta", "epsilon" (accounted; None
    without DP), "examples" ("canaries" or "pool"), "num_examples", "correction" (how the choice
    among attacks and targets is paid for), "epsilon_lower_bound" and "attack" (the largest bound,
    whose), "theorem" (whether the one-run premise holds), "caveat" (why not, or None), "bounds"
    {attack: bound}}. Every bound holds at confidence 1 - significance jointly (lira/audit.py)."""
    record = layout.load_record(logdir)
    canaries = layout.load_canaries(logdir)
    examples = canaries if len(canaries) else np.arange(keep.shape[1])
    delta = record.config.training.dp_delta if delta is None else delta
    audited = audit.audit(results, keep, examples, method, significance, delta)
    caveat = audit.premise(method, keep, canaries, record.config.training.pkeep)
    return {
        "method": method,
        "significance": significance,
        "delta": delta,
        "epsilon": record.dp["epsilon"] if record.dp else None,
        "examples": "canaries" if len(canaries) else "pool",
        "num_examples": int(len(examples)),
        "correction": audited["correction"],
        "epsilon_lower_bound": audited["epsilon_lower_bound"],
        "attack": audited["attack"],
        "theorem": caveat is None,
        "caveat": caveat,
        "bounds": audited["bounds"],
    }


def model_accuracy(signals: Signals, keep: np.ndarray, labels: np.ndarray, train_log: list[dict]) -> dict:
    """How well the attacked models fit, mean over all M models (fractions):

    train_acc: accuracy on each model's own training examples (IN), plain query, BatchNorm in
      inference mode, from the logits: how much of its training half the model memorized;
    test_acc: the test accuracy the training stage logged at each model's last epoch (None if
      it logged none).
    """
    plain = augment.query_offsets(signals.num_queries).index((False, 0, 0)) if signals.num_queries > 1 else 0
    train = [
        float(np.mean(np.argmax(signals.logits(m)[keep[m], plain], axis=-1) == labels[keep[m]]))
        for m in range(keep.shape[0])
    ]
    logged = layout.final_accuracies(train_log)
    return {
        "train_acc": float(np.mean(train)),
        "test_acc": logged["test_acc"][0] if "test_acc" in logged else None,
    }
