"""The studies behind the notebooks (notebooks/*.ipynb): sweeps and selections over one run.

A notebook loads a run (lira.notebook.load_run), calls one function here, and plots what it returns, so
every number in a figure comes from tested code. All attacks go through `lira.attacks.protocol` with the
same leave-one-out protocol as experiments/attack.py; figures pool the scores of all targets.

- `compare_attacks`: every attack on one run (LiRA paper Fig. 1, Table I).
- `shadow_sweep`: the attacks with only K reference models per target (LiRA Fig. 9; RMIA's
  few-reference comparison). K is `num_shadows_used` of lira.attacks.protocol: online attacks take the
  first K references of the fixed order (IN and OUT), offline attacks the first K references
  that are OUT for each example. At pkeep = 0.5, K OUT references per example take about 2K
  shadow models, which is how offline and online points compare on one shadow budget.
- `query_sweep`: the attacks on 1, 2 or all Q augmented queries, taking the subsets of the
  logits' Q axis that the smaller query sets would have produced (lira.run.views.query_offsets).
- `example_gaussians`, `separation`, `vulnerability`: per-example views (LiRA Fig. 2/3).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from lira import metrics as metrics_lib
from lira.attacks import ATTACKS, WHITE_BOX, protocol
from lira.attacks.common import reference_moments
from lira.report import tables
from lira.run import layout, views
from lira.run.reader import Run, read_run
from lira.stages import attack

TABLE_LEVELS = tables.PAPER_LEVELS
LIRA_AND_RMIA = (
    "lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var", "rmia_online", "rmia_offline",
)  # fmt: skip


def describe(run: Run) -> str:
    """One line on what was attacked: data, model, M, N, Q, and final accuracies (mean over models)."""
    config = run.record.config
    accuracy = layout.final_accuracies(run.train_log)
    percent = lambda key: f"{100 * accuracy[key][0]:.1f}%" if key in accuracy else "n/a"
    return (
        f"{config.data.dataset}: N = {run.num_examples:,} pool examples, "
        f"{config.model.arch}, M = {run.num_models} models, {config.training.epochs} epochs, "
        f"Q = {run.num_queries} queries; final accuracy train {percent('train_acc')}, "
        f"test {percent('test_acc')} (mean over models)"
    )


def targets_of(run: Run, num_targets: int | None) -> list[int]:
    """Models 0..T-1; None = every model (the most non-members, so the lowest resolvable FPR)."""
    return list(range(run.num_models if num_targets is None else min(num_targets, run.num_models)))


def query_indices(num_available: int, count: int) -> list[int]:
    """Positions on a Q = num_available logits axis of the queries a `count`-query inference
    would have made: (mirror, dy, dx) views are matched by lira.run.views.query_offsets."""
    available = views.query_offsets(num_available)
    wanted = views.query_offsets(count)
    missing = [view for view in wanted if view not in available]
    if missing:
        raise ValueError(f"{count} queries need views {missing}, which {num_available} queries lack.")
    return [available.index(view) for view in wanted]


def compare_attacks(run: Run, attacks=("all",), num_targets: int | None = None,
                    seed: int = 0) -> tuple[dict, dict[str, protocol.AttackResult]]:  # fmt: skip
    """(metrics.json-shaped dict without intervals, {attack: AttackResult}) of every attack, with
    the defaults of experiments/attack.py. RMIA is left out when the run was loaded without its
    probability signal."""
    names = protocol.check_attack_names(list(attacks))
    if run.signals.probability is None:
        names = [name for name in names if not ATTACKS[name].needs_probability]
    targets = targets_of(run, num_targets)
    results = protocol.run_attacks(run, names, targets, seed=seed)
    return attack.audit_metrics(results, run.keep, run.num_queries, bootstrap=0, seed=seed), results


def pooled_roc(result: protocol.AttackResult, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the scores of all targets pooled, as in the metrics' top-level figures."""
    fpr, tpr, _ = metrics_lib.roc_curve(result.scores.ravel(), keep[result.targets].ravel())
    return fpr, tpr


def paired_comparisons(results: dict[str, protocol.AttackResult], keep: np.ndarray, pairs, level: float = 1e-3,
                       num_resamples: int = 1000, seed: int = 0) -> list[dict]:  # fmt: skip
    """Rows {a, b, auc: difference entry, tpr: difference entry at FPR `level`, beats_auc,
    beats_tpr} for each (a, b) in `pairs`: the paired bootstrap of a - b over targets and examples
    (lira.metrics.paired_difference); "beats" only where the 95% interval excludes 0."""
    rows = []
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        membership = keep[results[a].targets]
        difference = metrics_lib.paired_difference(
            results[a].scores, results[b].scores, membership, num_resamples, seed,
            "both" if len(results[a].targets) > 1 else "examples",
        )  # fmt: skip
        tpr = difference["tpr_at_fpr"][metrics_lib.level_key(level)]
        rows.append({"a": a, "b": b, "auc": difference["auc"], "tpr": tpr, "level": level,
                     "beats_auc": metrics_lib.beats(difference["auc"]), "beats_tpr": metrics_lib.beats(tpr)})  # fmt: skip
    return rows


def is_valid(keep: np.ndarray, targets: list[int], attack: str, num_shadows_used: int | None,
             seed: int = 0) -> bool:  # fmt: skip
    """Whether every example has the IN/OUT references `attack` needs with K references."""
    try:
        protocol.check_references(keep, targets, [attack], num_shadows_used, seed)
    except ValueError:
        return False
    return True


def default_counts(num_models: int) -> list[int]:
    """Every K in 1..M-1 up to M = 33, else powers of sqrt(2) (rounded) and M - 1."""
    if num_models <= 33:
        return list(range(1, num_models))
    grid = {int(round(2 ** (i / 2))) for i in range(2 * int(np.log2(num_models)) + 1)}
    return sorted(k for k in grid | {num_models - 1} if 1 <= k <= num_models - 1)


def _row(attack: str, result: protocol.AttackResult, keep: np.ndarray, **extra) -> dict:
    figures = metrics_lib.summarize(result.scores, keep[result.targets])
    return {"attack": attack, **extra, "auc": figures["auc"], "tpr_at_fpr": figures["tpr_at_fpr"]}


def shadow_sweep(run: Run, attacks=LIRA_AND_RMIA, counts: list[int] | None = None,
                 num_targets: int | None = None, seed: int = 0) -> list[dict]:  # fmt: skip
    """Rows {attack, num_shadows_used: K, auc, tpr_at_fpr: {level key: TPR | None}} for every K
    in `counts` (default `default_counts`) at which the attack has the references it needs for
    every example and target; other (attack, K) pairs are left out rather than guessed."""
    targets = targets_of(run, num_targets)
    rows = []
    for count in default_counts(run.num_models) if counts is None else counts:
        valid = [a for a in attacks if is_valid(run.keep, targets, a, count, seed)]
        if valid:
            results = protocol.run_attacks(run, valid, targets, count, seed)
            rows += [_row(a, results[a], run.keep, num_shadows_used=count) for a in valid]
    return rows


def query_sweep(run: Run, attacks=("lira_online", "lira_offline", "rmia_online", "rmia_offline"),
                counts=(1, 2, 18), num_targets: int | None = None, seed: int = 0) -> list[dict]:  # fmt: skip
    """Rows {attack, queries, auc, tpr_at_fpr} with every reference, on the query subsets of
    `counts` that the run's Q queries contain (a count the run lacks is left out)."""
    targets = targets_of(run, num_targets)
    rows = []
    for count in counts:
        try:
            indices = query_indices(run.num_queries, count)
        except ValueError:
            continue
        results = protocol.run_attacks(run.with_queries(indices), list(attacks), targets, seed=seed)
        rows += [_row(a, results[a], run.keep, queries=count) for a in attacks]
    return rows


def sweep_series(rows: list[dict], x: str, y: str = "auc", level: float | None = None) -> dict:
    """{attack: (xs, ys)} from sweep rows, for plotting; y = 'auc' or 'tpr' at FPR `level`
    (NaN where the level is not resolvable)."""
    out = {}
    for row in rows:
        value = row["auc"] if y == "auc" else row["tpr_at_fpr"][metrics_lib.level_key(level)]
        xs, ys = out.setdefault(row["attack"], ([], []))
        xs.append(row[x])
        ys.append(np.nan if value is None else value)
    return {name: (np.array(xs), np.array(ys, dtype=float)) for name, (xs, ys) in out.items()}


def plain_query(run: Run) -> int:
    """The index of the un-augmented view (no mirror, no shift) on the Q axis."""
    return query_indices(run.num_queries, 1)[0]


def example_gaussians(run: Run, examples, query: int | None = None) -> list[dict]:
    """For each example, phi of the models that trained on it (IN) and of the others (OUT) on
    one query (default the plain view), with the Gaussians LiRA fits: mean and unbiased std.
    Over all M models (no target is held out): a picture of the example, not an attack."""
    query = plain_query(run) if query is None else query
    out = []
    for j in np.atleast_1d(examples):
        phi, is_in = run.signals.phi[:, j, query].astype(np.float64), run.keep[:, j]
        entry = {"example": int(j), "label": int(run.labels[j])}
        for kind, values in (("in", phi[is_in]), ("out", phi[~is_in])):
            entry[kind] = values
            entry[f"mean_{kind}"] = float(values.mean()) if len(values) else float("nan")
            entry[f"std_{kind}"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out.append(entry)
    return out


def separation(run: Run, query: int | None = None) -> np.ndarray:
    """float [N]: |mu_in - mu_out| / sqrt((s_in^2 + s_out^2) / 2) of phi over all models, per
    example: how far apart its IN and OUT Gaussians sit (large = easy to attack)."""
    query = plain_query(run) if query is None else query
    phi = run.signals.phi[:, :, query : query + 1]
    first = np.array([0])  # a shift model for the variances; every model counts as IN or OUT here
    (mean_in,), (var_in,), _ = reference_moments(phi, run.keep[None], first)
    (mean_out,), (var_out,), _ = reference_moments(phi, ~run.keep[None], first)
    return (np.abs(mean_in - mean_out) / np.sqrt((var_in + var_out) / 2))[:, 0]


def easy_and_hard(run: Run, count: int = 3, query: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(easy, hard) example indices [count]: the largest separations first, and the smallest first."""
    order = np.argsort(-separation(run, query), kind="stable")
    return order[:count], order[::-1][:count]


def vulnerability(result: protocol.AttackResult, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(catch_fpr float [N], order int [N]). catch_fpr[j] is the median, over the targets that
    trained on j, of the FPR an attacker must accept to catch j (lira.metrics.catch_fpr); NaN if
    no target trained on j. order ranks examples most exposed first (NaN last), ties broken by
    the mean member score: lira.metrics.rank_examples, the order of report/per_example.csv."""
    _, median, order = metrics_lib.rank_examples(result.scores, keep[result.targets])
    return median, order


WHITEBOX_RIVALS = ("loss", "calibrated_loss", "shokri", "lira_online", "lira_online_fixed_var", "lira_offline",
                   "rmia_online", "rmia_offline")  # fmt: skip


def whitebox_comparison(run: Run, num_targets: int | None = None, level: float = 1e-3, num_resamples: int = 1000,
                        seed: int = 0) -> tuple[dict, list[dict]]:  # fmt: skip
    """Does white-box add anything? Every white-box attack and the black-box WHITEBOX_RIVALS on
    the same targets, references and queries (the black-box ones on the logits of the views the
    white-box signals were computed on), then each white-box attack against the best black-box
    one at FPR `level` (highest TPR there) by the paired bootstrap over targets and examples.
    Returns (metrics without intervals, paired_comparisons rows). Needs load_run(whitebox=True)."""
    if run.signals.grad is None:
        raise ValueError("whitebox_comparison needs a run loaded with load_run(..., whitebox=True).")
    indices = query_indices(run.num_queries, run.record.whitebox["queries"])
    signals = run.signals.select_queries(indices)
    signals.grad, signals.whitebox = run.signals.grad, run.signals.whitebox
    rivals = [
        name
        for name in WHITEBOX_RIVALS
        if signals.probability is not None or not ATTACKS[name].needs_probability
    ]
    names = [*rivals, *WHITE_BOX]
    targets = targets_of(run, num_targets)
    results = protocol.run_attacks(dataclasses.replace(run, signals=signals), names, targets, seed=seed)
    metrics = attack.audit_metrics(results, run.keep, len(indices), bootstrap=0, seed=seed)
    key = metrics_lib.level_key(level)
    best = max(rivals, key=lambda name: metrics["attacks"][name]["tpr_at_fpr"][key] or 0.0)
    pairs = [(name, best) for name in WHITE_BOX]
    return metrics, paired_comparisons(results, run.keep, pairs, level, num_resamples, seed)


# --- DP auditing (notebooks/dp_audit.ipynb) ---------------------------------------------------------


def dp_sweep(root: str | os.PathLike, level: float = 1e-3) -> list[dict]:
    """One row per attacked run under `root` (experiments/dp_audit.py's noise_* folders), by noise
    multiplier (0: ordinary training): its test accuracy, accounted epsilon (inf without DP), the
    largest empirical epsilon lower bound over its attacks and which (None when all are 0), and
    the best TPR at FPR `level` and which attack."""
    rows = []
    for metrics_path in sorted(Path(root).glob(f"*/{layout.REPORT_DIR}/{layout.METRICS}")):
        logdir = metrics_path.parent.parent
        metrics, run = json.loads(metrics_path.read_text()), read_run(logdir)
        record = run.record
        attacks = metrics["attacks"]
        bound = max(attacks, key=lambda name: attacks[name].get("epsilon_lower_bound") or 0.0)
        best = max(attacks, key=lambda name: attacks[name]["tpr_at_fpr"].get(str(level)) or 0.0)
        accuracy = layout.final_accuracies(run.train_log)
        rows.append({
            "run": logdir.name,
            "noise_multiplier": record.dp["noise_multiplier"] if record.dp else 0.0,
            "dp": record.dp is not None,
            "test_acc": accuracy["test_acc"][0] if "test_acc" in accuracy else None,
            "epsilon": record.dp["epsilon"] if record.dp else float("inf"),
            "epsilon_lower_bound": attacks[bound].get("epsilon_lower_bound"),
            "bound_attack": bound if attacks[bound].get("epsilon_lower_bound") else None,
            "tpr": attacks[best]["tpr_at_fpr"].get(str(level)),
            "tpr_attack": best,
            "audit": metrics.get("audit"),
        })  # fmt: skip
    if not rows:
        raise FileNotFoundError(f"No attacked runs under {root} (run experiments/dp_audit.py --root={root}).")
    return sorted(rows, key=lambda row: (row["dp"], row["noise_multiplier"]))
