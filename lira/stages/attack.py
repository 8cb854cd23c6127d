"""The attack stage as a library call: every attack against each target model, the metrics and
the report (what experiments/attack.py runs). The protocol itself is lira/attacks/protocol.py.

    from lira import config
    from lira.stages import attack
    metrics = attack.attack("exp/demo", config.AttackConfig(attacks=["lira_online"], num_targets=8))
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lira import audit, data, report
from lira import metrics as metrics_lib
from lira.attacks import ATTACKS, options_from_flags, probability_signal
from lira.attacks.protocol import (
    AttackResult,
    check_attack_names,
    check_options,
    run_attacks,
    runnable_attacks,
)
from lira.config import AttackConfig
from lira.run import layout, lock, records, temporaries, verify, views
from lira.run.reader import Run, read_run
from lira.stages import preflight


def attack(logdir: str | Path, config: AttackConfig, progress: bool = True) -> dict:
    """Runs config.attacks on the run in `logdir` and writes report/: metrics.json,
    scores/NAME.npy (float [T, N]), the plots and tables. Returns the metrics dict.

    Under the lock .report.lock (a second attack on the run is refused in one line naming the
    holder), the report is written whole into a fresh hidden folder beside report/ and then put
    in its place (lira.run.temporaries.replace_dir): no file of an earlier report survives beside
    the new metrics.json, and a killed attack leaves the earlier report as it was."""
    config.validate()
    verify.check_logdir(logdir)
    check_attack_names(config.attacks, whitebox=True)  # unknown names and bad options: before any reading
    options_from_flags(config.options)
    run = read_run(logdir)
    with lock.acquire(run.logdir / ".report.lock", what=f"The report of {run.logdir}"):
        temporaries.remove_stale(run.logdir)
        metrics, results = run_audit(run, config, progress)
        new_report = temporaries.create_dir(run.logdir, layout.REPORT_DIR)
        try:
            layout.save_json(new_report / layout.METRICS, metrics)
            for name, result in results.items():
                layout.save_npy(new_report / layout.SCORES_DIR / f"{name}.npy", result.scores)
            norms = gradient_norms(run, metrics["targets"]) if metrics.get("whitebox") else None
            report.write_report(
                new_report, results, metrics, run, images=_pool_images(run.record), gradient_norms=norms
            )
            temporaries.replace_dir(new_report, run.logdir / layout.REPORT_DIR)
        finally:
            shutil.rmtree(new_report, ignore_errors=True)  # nothing once moved in
    return metrics


def gradient_norms(run: Run, targets: list[int]) -> dict:
    """{layer or "whole model": (log10 loss-gradient norms [T * N], is_member [T * N])} on the
    targets' examples, plain query: what report/gradient_norms.png draws."""
    names = [*run.record.whitebox["layers"], "whole model"]
    norms = np.stack(
        [np.load(layout.whitebox_path(run.logdir, t, "norms"), mmap_mode="r")[:, 0] for t in targets]
    )
    values = np.log10(np.maximum(norms, 1e-30)).reshape(-1, len(names))  # [T * N, L + 1]
    member = run.keep[targets].ravel()
    return {name: (values[:, i], member) for i, name in enumerate(names)}


def _pool_images(record: records.RunRecord) -> np.ndarray | None:
    """The pool's images for the report, or None: a missing dataset must not stop the report, and
    models trained elsewhere name no dataset lira could load."""
    if record.external:
        return None
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


def run_audit(run: Run, config: AttackConfig, progress: bool = False) -> tuple[dict, dict[str, AttackResult]]:
    """Runs config.attacks on `run` (read_run: its signals are read here, once the checks pass)
    and returns (metrics dict, {name: AttackResult}).

    Everything that can be checked from keep.npy alone (attack names, options, reference
    counts) is checked before any logits are read. An attack the run lacks the references for
    is left out, its reason in metrics["skipped"] (config.strict: refused instead). The metrics
    hold each attack's empirical epsilon lower bound (lira.audit) and the run's accounted epsilon
    (None without DP). progress: a bar over the attacks and a line as each finishes.
    """
    config.validate()
    preflight.check_attack(run)
    attack_options = options_from_flags(config.options)
    whitebox = run.has_whitebox()
    if list(config.attacks) == ["all"] and not whitebox:
        print(f"Note: {run.logdir} has no white-box signals, so 'all' leaves out the white-box attacks "
              "(experiments/inference.py --whitebox computes them).")  # fmt: skip
    attacks = check_attack_names(config.attacks, whitebox)
    check_options(attacks, attack_options)
    audited = check_audit_attacks(config.audit_attacks, attacks)
    targets = list(range(min(config.num_targets, run.num_models)))
    attacks, skipped = runnable_attacks(
        run.keep, targets, attacks, config.num_shadows_used, config.seed, run.canaries, config.strict
    )
    for name, reason in skipped.items():
        print(f"Note: {name} left out: {reason}")
    if not any(name in attacks for name in audited):
        print(
            f"Note: none of the audited attacks ({', '.join(audited)}) runs; the audit bounds every attack that does."
        )
    audited = [name for name in audited if name in attacks] or attacks
    needs_whitebox = any(ATTACKS[name].needs_whitebox for name in attacks)
    run = run.with_signals(probability_signal(attacks, attack_options), whitebox=needs_whitebox)
    with tqdm(total=len(attacks), unit="attack", disable=not progress, dynamic_ncols=True) as bar:

        def done(name: str, seconds: float) -> None:
            bar.update()
            if progress:
                bar.write(f"{name}: scored {len(targets)} targets in {seconds:.1f} s")

        results = run_attacks(
            run, attacks, targets, config.num_shadows_used, config.seed, attack_options, on_done=done
        )
    metrics = audit_metrics(results, run.keep, run.num_queries, config.bootstrap, config.seed,
                            config.min_false_positives)  # fmt: skip
    metrics.update(num_shadows_used=config.num_shadows_used, seed=config.seed, attack_options=attack_options,
                   skipped=skipped)  # fmt: skip
    if needs_whitebox:
        metrics["whitebox"] = run.record.whitebox
    metrics["models"] = model_accuracy(run)
    metrics["audit"] = privacy_audit(run, {name: results[name] for name in audited}, config)
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


def privacy_audit(run: Run, results: dict[str, AttackResult], config: AttackConfig) -> dict:
    """metrics.json's "audit": {"method", "significance", "delta", "epsilon" (accounted; None
    without DP), "examples" ("canaries" or "pool"), "num_examples", "correction" (how the choice
    among attacks and targets is paid for), "epsilon_lower_bound" and "attack" (the largest bound,
    whose), "theorem" (whether the one-run premise holds), "caveat" (why not, or None), "bounds"
    {attack: bound}}. Every bound holds at confidence 1 - significance jointly (lira/audit.py)."""
    training = run.record.config.training
    canaries = run.canaries
    examples = canaries if len(canaries) else np.arange(run.num_examples)
    delta = training.dp_delta if config.audit_delta is None else config.audit_delta
    method, significance = config.audit_method, config.audit_significance
    audited = audit.audit(results, run.keep, examples, method, significance, delta)
    caveat = audit.premise(method, run.keep, canaries, training.pkeep)
    return {
        "method": method,
        "significance": significance,
        "delta": delta,
        "epsilon": run.record.dp["epsilon"] if run.record.dp else None,
        "examples": "canaries" if len(canaries) else "pool",
        "num_examples": int(len(examples)),
        "correction": audited["correction"],
        "epsilon_lower_bound": audited["epsilon_lower_bound"],
        "attack": audited["attack"],
        "theorem": caveat is None,
        "caveat": caveat,
        "bounds": audited["bounds"],
    }


def model_accuracy(run: Run) -> dict:
    """How well the attacked models fit, mean over all M models (fractions):

    train_acc: accuracy on each model's own training examples (IN), plain query, BatchNorm in
      inference mode, from the logits: how much of its training half the model memorized;
    test_acc: the test accuracy the training stage logged at each model's last epoch (None if
      it logged none).
    """
    signals, keep, labels = run.signals, run.keep, run.labels
    plain = views.query_offsets(signals.num_queries).index((False, 0, 0)) if signals.num_queries > 1 else 0
    train = [
        float(np.mean(np.argmax(signals.logits(m)[keep[m], plain], axis=-1) == labels[keep[m]]))
        for m in range(run.num_models)
    ]
    logged = layout.final_accuracies(run.train_log)
    return {
        "train_acc": float(np.mean(train)),
        "test_acc": logged["test_acc"][0] if "test_acc" in logged else None,
    }
