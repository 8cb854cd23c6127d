"""The audit report: the files an auditor hands on, written by experiments/attack.py.

    report/roc.png, roc_log.png     ROC of every attack, linear and log-log (all targets pooled)
    report/histograms.png           IN vs OUT score distributions per attack
    report/per_class.png            per-class TPR and FPR at one threshold, per-class AUC (main attack)
    report/per_example.csv          per-example vulnerability, most vulnerable first
    report/vulnerable_examples.png  the most and least vulnerable images (image data only)
    report/report.md                the page to read first

Per-example vulnerability is measured under the main attack (the first of MAIN_ATTACKS that was
run, else the first attack). For a target t that trained on example j, j's *catch FPR* is the
fraction of t's non-members scoring at least as high as j: the false-positive rate an attacker
must accept, with one threshold on t's scores, to flag j. per_example.csv gives

    in_targets           how many targets trained on j (the targets the next two summarise)
    catch_fpr            median catch FPR over those targets; lower = more exposed (empty if none)
    caught_at_0.1%_fpr   fraction of those targets that flag j at FPR 0.1% (empty where 0.1% is
                         below 1/#non-members, which no threshold can resolve)

sorted by catch_fpr, ties broken by j's mean score where it is a member (higher first).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from sklearn import metrics as sk_metrics

from lira import metrics as metrics_lib
from lira import plots, rundir

MAIN_ATTACKS = ("lira_online", "lira_online_fixed_var", "rmia_online", "lira_offline")
TABLE_LEVELS = ("1e-05", "0.0001", "0.001", "0.01", "0.1")
NOT_RESOLVABLE = "n/r"
CAUGHT_LEVEL = 1e-3
GRID_SIZE = 8


def main_attack(names) -> str:
    """The attack the per-class and per-example views use: the strongest one that was run."""
    return next((a for a in MAIN_ATTACKS if a in names), next(iter(names)))


def _number(percent: float) -> str:
    """A percentage with the digits that matter at its scale: 0, 0.07, 3.45, 33.1."""
    if percent == 0:
        return "0"
    if abs(percent) < 0.1:
        return f"{percent:.2g}"
    return f"{percent:.2f}" if abs(percent) < 10 else f"{percent:.1f}"


def _percent(value, interval=None) -> str:
    """'3.45% [2.81, 4.38]'; 'n/r' for None (an FPR level the data cannot resolve)."""
    if value is None:
        return NOT_RESOLVABLE
    text = f"{_number(100 * value)}%"
    if interval:
        text += f" [{_number(100 * interval[0])}, {_number(100 * interval[1])}]"
    return text


CI_UNITS = {"both": "targets (models) and examples", "targets": "targets (models)", "examples": "examples"}


def _unit(metrics: dict, unit: str) -> str:
    """`unit`, or "examples" when the run has no intervals of that unit (one target)."""
    entries = [entry.get("ci95") or {} for entry in metrics["attacks"].values()]
    if unit != "examples" and entries and not any(ci.get(unit) for ci in entries):
        return "examples"
    return unit


def _intervals(entry: dict, unit: str) -> dict:
    """The 95% intervals of one attack: metrics.json nests them by bootstrap unit
    ({"examples": {...}, "targets": {...}, "both": {...}}); a flat {"auc": .., "tpr_at_fpr": ..}
    is taken as is."""
    ci = entry.get("ci95") or {}
    if "auc" in ci or "tpr_at_fpr" in ci:
        return ci
    return ci.get(unit) or {}


def _levels(metrics: dict) -> list[str]:
    keys = {key for entry in metrics["attacks"].values() for key in entry.get("tpr_at_fpr", {})}
    return sorted(keys, key=float) if keys else list(TABLE_LEVELS)


def table_rows(metrics: dict, ci_unit: str = "both") -> tuple[list[str], list[list[str]]]:
    """Header and rows of the attack table: AUC, best balanced accuracy and TPR at each FPR level
    as percentages, with 95% intervals (bootstrap over `ci_unit`: by default targets and examples
    together, examples alone for one target) when present and `n/r` where the level is below
    1 / #non-members."""
    levels = _levels(metrics)
    ci_unit = _unit(metrics, ci_unit)
    header = ["attack", "AUC", "bal. acc"] + [f"TPR@{100 * float(level):g}%" for level in levels]
    rows = []
    for name, entry in metrics["attacks"].items():
        ci = _intervals(entry, ci_unit)
        auc = f"{entry['auc']:.3f}" if entry.get("auc") is not None else "n/a"
        if ci.get("auc") and entry.get("auc") is not None:
            auc += f" [{ci['auc'][0]:.3f}, {ci['auc'][1]:.3f}]"
        accuracy = f"{entry['balanced_acc']:.3f}" if entry.get("balanced_acc") is not None else "n/a"
        tprs, tpr_ci = entry.get("tpr_at_fpr", {}), ci.get("tpr_at_fpr") or {}
        rows.append(
            [name, auc, accuracy, *[_percent(tprs.get(level), tpr_ci.get(level)) for level in levels]]
        )
    return header, rows


def _footnote(metrics: dict, ci_unit: str = "both") -> str:
    attacks = metrics["attacks"].values()
    text = "TPR@x%: true-positive rate at false-positive rate x% (all targets pooled)."
    if any(entry.get("ci95") for entry in attacks):
        text += (
            f" Brackets: 95% bootstrap interval, resampling {CI_UNITS.get(_unit(metrics, ci_unit), ci_unit)}."
        )
    for name, entry in metrics["attacks"].items():
        if entry.get("offline_a"):
            values = entry["offline_a"]
            how = "fitted from each target's references" if entry.get("offline_a_fitted") else "given"
            spread = (
                f"{min(values):.3g}"
                if min(values) == max(values)
                else f"{min(values):.3g} to {max(values):.3g}"
            )
            text += f" {name}: offline a = {spread} ({how})."
    if any(v is None for entry in attacks for v in entry.get("tpr_at_fpr", {}).values()):
        floors = sorted({e["min_resolvable_fpr"] for e in attacks if e.get("min_resolvable_fpr")})
        where = ""
        if floors:
            where = f" = {floors[0]:.2g}" if len(floors) == 1 else f" = {floors[0]:.2g} to {floors[-1]:.2g}"
        text += (
            f" {NOT_RESOLVABLE}: not resolvable. The level is below 1/#non-members{where}, the smallest"
            " non-zero FPR any threshold can have, so no TPR can be measured there (it is not 0);"
            " attack more targets or a larger pool to reach it."
        )
    return text


def _accuracy_note(metrics: dict) -> str:
    """'; models: 99.6% train (own training examples), 61.2% test accuracy' when known."""
    models = metrics.get("models") or {}
    if models.get("train_acc") is None:
        return ""
    test = f", {100 * models['test_acc']:.1f}% test" if models.get("test_acc") is not None else ""
    return f"; models (mean): {100 * models['train_acc']:.1f}% train accuracy on their own training examples{test}"


def format_table(metrics: dict, ci_unit: str = "both") -> str:
    """The attack table as aligned plain text, for the terminal."""
    header, rows = table_rows(metrics, ci_unit)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    title = (
        f"{metrics.get('num_targets', '?')} targets, {metrics.get('num_models', '?')} models, "
        f"{metrics.get('num_queries', '?')} queries"
    ) + _accuracy_note(metrics)
    body = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
    return "\n".join([title, *body, _footnote(metrics, ci_unit)])


def markdown_table(metrics: dict, ci_unit: str = "both") -> str:
    header, rows = table_rows(metrics, ci_unit)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def catch_fpr(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """float [T, N]: for member (t, j), the fraction of target t's non-members scoring >= its
    score; NaN where j is not a member of target t. scores float, membership bool, both [T, N]."""
    out = np.full(scores.shape, np.nan)
    for t in range(scores.shape[0]):
        nonmember = np.sort(scores[t, ~membership[t]])
        member = membership[t]
        above = nonmember.size - np.searchsorted(nonmember, scores[t, member], side="left")
        out[t, member] = above / max(nonmember.size, 1)
    return out


def rank_examples(scores: np.ndarray, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(catch_fpr [T, N], median [N], order [N]) of scores float and membership bool, both [T, N].

    median[j] is the median of j's catch FPR over the targets that trained on it (NaN if none);
    order ranks examples most exposed first: by that median (NaN last), ties broken by j's mean
    score where it is a member, higher first."""
    fprs = catch_fpr(scores, membership)
    with warnings.catch_warnings():  # examples no target trained on are all-NaN columns, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(fprs, axis=0)
        member_score = np.nanmean(np.where(membership, scores, np.nan), axis=0)
    order = np.lexsort((-np.nan_to_num(member_score, nan=-np.inf), np.nan_to_num(median, nan=np.inf)))
    return fprs, median, order


def per_example_table(results: dict, labels: np.ndarray, keep: np.ndarray) -> tuple[list[str], list[list], np.ndarray]:  # fmt: skip
    """(header, rows, order): one row per example, most vulnerable first; order int [N] is the
    example index of each row. See the module docstring for the columns."""
    main = main_attack(results)
    result = results[main]
    membership = keep[result.targets]
    fprs, median_fpr, order = rank_examples(result.scores, membership)
    resolvable = (~membership).sum(axis=1, keepdims=True) * CAUGHT_LEVEL >= 1  # [T, 1]
    with warnings.catch_warnings():  # examples no target trained on are all-NaN columns, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        caught = np.nanmean(np.where(membership & resolvable, fprs <= CAUGHT_LEVEL, np.nan), axis=0)
    names = list(results)
    header = [
        "example",
        "label",
        "in_count",
        "in_targets",
        "catch_fpr",
        f"caught_at_{100 * CAUGHT_LEVEL:g}%_fpr",
    ]
    header += [f"score_{n}" for n in names]
    mean_scores = np.stack([np.asarray(results[n].scores).mean(axis=0) for n in names])  # [A, N]
    in_count, in_targets = keep.sum(axis=0), membership.sum(axis=0)
    rows = [
        [
            int(j),
            int(labels[j]),
            int(in_count[j]),
            int(in_targets[j]),
            float(median_fpr[j]),
            float(caught[j]),
            *mean_scores[:, j].tolist(),
        ]  # fmt: skip
        for j in order
    ]
    return header, rows, order


def _csv(header: list[str], rows: list[list]) -> str:
    cell = lambda v: ("" if np.isnan(v) else f"{v:.6g}") if isinstance(v, float) else str(v)
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    for row in rows:
        buffer.write(",".join(map(cell, row)) + "\n")
    return buffer.getvalue()


def model_accuracies(train_log: list[dict]) -> dict:
    """{"models": count, "train_acc"/"test_acc": (mean, sd)} over models, each at its last logged
    epoch (the accuracy of the model that was attacked)."""
    last = {}
    for row in train_log:
        if "model" in row and row.get("epoch", 0) >= last.get(row["model"], {}).get("epoch", -np.inf):
            last[row["model"]] = row
    out = {"models": len(last)}
    for key in ("train_acc", "test_acc"):
        values = [r[key] for r in last.values() if r.get(key) is not None and np.isfinite(r[key])]
        if values:
            out[key] = (float(np.mean(values)), float(np.std(values, ddof=1 if len(values) > 1 else 0)))
    return out


def _check_inputs(results: dict, labels: np.ndarray, keep: np.ndarray, images) -> None:
    """Fails before any file is written when the arrays do not describe the same pool."""
    if not results:
        raise ValueError("write_report needs at least one attack result.")
    num_models, num_examples = keep.shape
    if labels.shape != (num_examples,):
        raise ValueError(f"labels has shape {labels.shape}, but keep has N={num_examples} examples.")
    for name, result in results.items():
        shape = np.shape(result.scores)
        if shape != (len(result.targets), num_examples):
            raise ValueError(
                f"{name}: scores {shape} do not match {len(result.targets)} targets x N={num_examples}."
            )
        if not all(0 <= t < num_models for t in result.targets):
            raise ValueError(f"{name}: targets {result.targets} are not all models of keep ({num_models}).")
    if images is not None and len(images) != num_examples:
        raise ValueError(f"images has {len(images)} rows, but the pool has N={num_examples} examples.")


def _legend(name: str, entry: dict, fpr: np.ndarray, tpr: np.ndarray, num_nonmembers: int) -> str:
    """'lira_online (AUC=0.734, TPR@0.1%FPR=0.25%)', from metrics.json when the attack is there."""
    auc = entry.get("auc", sk_metrics.auc(fpr, tpr))
    key = metrics_lib.level_key(CAUGHT_LEVEL)
    if key in entry.get("tpr_at_fpr", {}):
        at = entry["tpr_at_fpr"][key]
    else:
        at = metrics_lib.tpr_at_fpr(fpr, tpr, CAUGHT_LEVEL, num_nonmembers)
    return f"{name} (AUC={auc:.3f}, TPR@{100 * CAUGHT_LEVEL:g}%FPR={_percent(at)})"


def write_report(report_dir, results: dict, metrics: dict, *, labels: np.ndarray, keep: np.ndarray, config: dict,
                 train_log: list[dict], images: np.ndarray | None = None,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
    """Writes every report file (see the module docstring) into report_dir, each atomically.

    results: {attack: object with .scores float [T, N] and .targets list[int] (lira.audit.AttackResult)};
    metrics: the metrics.json dict; labels int [N]; keep bool [M, N]; images uint8 [N, H, W, C]
    or None (no image grid, e.g. tabular data); class_names: label -> name, for the figures.
    """
    labels, keep = np.asarray(labels), np.asarray(keep, dtype=bool)
    _check_inputs(results, labels, keep, images)
    report_dir = Path(report_dir)
    curves, legends, pooled = {}, {}, {}
    for name, result in results.items():
        membership = keep[result.targets].ravel()
        scores = np.nan_to_num(np.asarray(result.scores, np.float64).ravel(), nan=-np.inf)
        fpr, tpr, _ = sk_metrics.roc_curve(membership, scores)
        curves[name], pooled[name] = (fpr, tpr), (scores, membership)
        entry = metrics.get("attacks", {}).get(name, {})
        legends[name] = _legend(name, entry, fpr, tpr, int((~membership).sum()))
    plots.roc_curves(curves, legends, report_dir / "roc.png", log_scale=False)
    plots.roc_curves(curves, legends, report_dir / "roc_log.png", log_scale=True)
    plots.score_histograms(pooled, report_dir / "histograms.png")
    main = main_attack(results)
    risk = plots.per_class_risk(np.asarray(results[main].scores), keep[results[main].targets], labels, main,
                                report_dir / "per_class.png", class_names)  # fmt: skip
    header, rows, order = per_example_table(results, labels, keep)
    rundir.save_text(report_dir / "per_example.csv", _csv(header, rows))
    grid = report_dir / "vulnerable_examples.png"
    name_of = lambda label: class_names[label] if class_names else str(label)
    if images is not None:
        ranked = [row for row in rows if not np.isnan(row[4])]  # examples some target trained on
        most = ranked[:GRID_SIZE]
        least = ranked[max(GRID_SIZE, len(ranked) - GRID_SIZE) :][::-1]
        captions = {row[0]: f"#{row[0]} {name_of(row[1])}\ncatch FPR {row[4]:.2g}" for row in most + least}
        plots.example_grid(images, np.array([r[0] for r in most], int), np.array([r[0] for r in least], int),
                           captions, grid)  # fmt: skip
    else:
        grid.unlink(missing_ok=True)  # a grid left by an earlier run would no longer match this one
    markdown = _markdown(metrics, config, train_log, main, risk, header, rows[:10], name_of, grid.exists())
    rundir.save_text(report_dir / "report.md", markdown)


def _run_lines(metrics: dict, config: dict, train_log: list[dict]) -> list[str]:
    """The run's configuration and model accuracies, as markdown bullets; absent fields are left out."""
    flags, data = config.get("flags", {}), config.get("data", {})

    def described(pairs) -> str:  # ": label value, ..." over the known values, or nothing
        known = [f"{label} {value}" for label, value in pairs if value is not None]
        return ": " + ", ".join(known) if known else ""

    data_facts = [("pool examples", data.get("num_examples")), ("test examples", data.get("num_test")),
                  ("classes", data.get("num_classes")), ("input", data.get("input_shape"))]  # fmt: skip
    model_facts = [("M =", metrics.get("num_models")), ("epochs", flags.get("epochs")),
                   ("batch", flags.get("batch_size")), ("lr", flags.get("lr")),
                   ("augment", flags.get("augment")), ("pkeep", flags.get("pkeep"))]  # fmt: skip
    accuracy = model_accuracies(train_log)
    fmt = lambda key: (
        f"{100 * accuracy[key][0]:.1f}% ± {100 * accuracy[key][1]:.1f}" if key in accuracy else "n/a"
    )
    queries = metrics.get("num_queries", config.get("inference", {}).get("queries"))
    lines = [
        f"- **Data**: `{flags.get('dataset', data.get('name', 'unknown'))}`{described(data_facts)}",
        f"- **Models**: `{flags.get('arch', 'unknown')}`{described(model_facts)}",
        f"- **Accuracy** (mean ± sd over {accuracy['models']} models, last epoch): train {fmt('train_acc')}, "
        f"test {fmt('test_acc')}"
        if accuracy["models"]
        else "- **Accuracy**: no training log",
        *(
            [
                f"- **Memorization**: {100 * metrics['models']['train_acc']:.1f}% accuracy on each model's own "
                "training examples (plain query, inference mode; mean over models)"
            ]
            if (metrics.get("models") or {}).get("train_acc") is not None
            else []
        ),
        f"- **Attack**: {metrics.get('num_targets')} target models, each attacked with the other models as "
        f"references (leave-one-out); queries per example: {queries}"
        + (f"; {metrics['num_shadows_used']} references used" if metrics.get("num_shadows_used") else ""),
    ]
    versions = config.get("versions") or {}
    provenance = [f"commit `{config['git_commit'][:12]}`"] if config.get("git_commit") else []
    provenance += [f"{k} {versions[k]}" for k in ("jax", "flax", "backend") if k in versions]
    if provenance:
        lines.append("- **Provenance**: " + ", ".join(provenance))
    return lines


def _markdown(metrics: dict, config: dict, train_log: list[dict], main: str, risk: dict, header: list[str],
              top_rows: list[list], name_of, has_grid: bool) -> str:  # fmt: skip
    classes = {c: r for c, r in risk.items() if c != "level"}
    level = 100 * risk["level"]
    lines = [
        "# Membership-inference audit",
        "",
        *_run_lines(metrics, config, train_log),
        "",
        "## Attacks",
        "",
    ]
    lines += [markdown_table(metrics), "", _footnote(metrics), "", "## How to read this", ""]
    lines += [
        "An attack scores every pool example against a target model; larger means more likely a training",
        "example (member). What matters for privacy is the **TPR at a low FPR**: an attack that flags even",
        "a few members while almost never flagging a non-member identifies those training examples with",
        "confidence, whatever its AUC (Carlini et al. 2022). On the log-scale ROC, a curve far above the",
        "dashed diagonal at the left is such an attack; a curve on the diagonal learns nothing.",
        "Balanced accuracy and AUC summarise the whole curve and hide this regime.",
        "",
        "![log-scale ROC](roc_log.png) ![linear ROC](roc.png)",
        "",
        "Score distributions of members (IN) and non-members (OUT): the less they overlap, the stronger",
        "the attack; a thin IN tail beyond all OUT scores is what gives TPR at low FPR.",
        "",
        "![score histograms](histograms.png)",
        "",
        "## Per class and per example",
        "",
        f"Under `{main}`, with one threshold set at {level:g}% FPR over all classes (`per_class.png`):",
        "",
    ]
    if classes:
        by_tpr = sorted(classes, key=lambda c: classes[c]["tpr"])
        for tag, c in (("most exposed", by_tpr[-1]), ("least exposed", by_tpr[0])):
            lines.append(f"- {tag}: class {name_of(c)} (TPR {_percent(classes[c]['tpr'])}, "
                         f"FPR {_percent(classes[c]['fpr'])})")  # fmt: skip
    lines += ["", "![per-class risk](per_class.png)", ""]
    lines += [
        f"`per_example.csv` ranks every example by its **catch FPR** under `{main}`: for a target that",
        "trained on it, the fraction of that target's non-members scoring at least as high, i.e. the FPR an",
        "attacker must accept to flag it (median over the `in_targets` targets that trained on it; empty if",
        f"none did). `caught_at_{100 * CAUGHT_LEVEL:g}%_fpr` is the fraction of those targets that flag it",
        f"at FPR {100 * CAUGHT_LEVEL:g}%; `in_count` counts all models that trained on it; `score_<attack>` is",
        "each attack's score averaged over the targets. The most vulnerable:",
        "",
        "| " + " | ".join(header[:6]) + " |",
        "|" + "---|" * 6,
    ]
    for row in top_rows:
        cells = [str(row[0]), name_of(row[1]), str(row[2]), str(row[3]), f"{row[4]:.3g}", f"{row[5]:.2f}"]
        lines.append("| " + " | ".join(c.replace("nan", "") for c in cells) + " |")
    if has_grid:
        lines += ["", "![most and least vulnerable examples](vulnerable_examples.png)"]
    return "\n".join(lines) + "\n"
