"""The audit report: the files an auditor hands on, written by experiments/attack.py.

    report/roc.png, roc_log.png     ROC of every attack, linear and log-log
    report/histograms.png           IN vs OUT scores per attack
    report/per_class.png            AUC and TPR at 1% FPR per class (main attack)
    report/per_example.csv          per-example vulnerability, most vulnerable first
    report/vulnerable_examples.png  the most and least vulnerable images (image data)
    report/report.md                the page to read first

Per-example vulnerability (main attack: lira_online when run, else the first attack): for each
target that trained on the example, the FPR an attacker must accept to catch it there, i.e. the
fraction of that target's non-members scoring at least as high. `catch_fpr` is the median over
those targets (lower = more exposed; empty when no target trained on the example), and
`caught_at_0.1%_fpr` the fraction of them that catch it at FPR 0.1%.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from sklearn import metrics as sk_metrics

from lira import plots, rundir

MAIN_ATTACKS = ("lira_online", "lira_online_fixed_var", "rmia_online", "lira_offline")
TABLE_LEVELS = ("1e-05", "0.0001", "0.001", "0.01", "0.1")
NOT_RESOLVABLE = "n/r"


def main_attack(names) -> str:
    return next((a for a in MAIN_ATTACKS if a in names), next(iter(names)))


def _percent(value, interval=None) -> str:
    if value is None:
        return NOT_RESOLVABLE
    text = f"{100 * value:.2f}%"
    if interval:
        text += f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"
    return text


def table_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the attack table; TPRs as percentages with 95% intervals over
    examples when present, `n/r` where the FPR level is below 1 / #non-members."""
    header = ["attack", "AUC", "bal. acc"] + [f"TPR@{float(level):g}" for level in TABLE_LEVELS]
    rows = []
    for name, entry in metrics["attacks"].items():
        ci = (entry.get("ci95") or {}).get("examples") or {}
        auc = f"{entry['auc']:.4f}" + (f" [{ci['auc'][0]:.3f}, {ci['auc'][1]:.3f}]" if ci.get("auc") else "")
        tprs = entry.get("tpr_at_fpr", {})
        cells = [_percent(tprs.get(level), (ci.get("tpr_at_fpr") or {}).get(level)) for level in TABLE_LEVELS]
        rows.append([name, auc, f"{entry['balanced_acc']:.4f}", *cells])
    return header, rows


def _footnote(metrics: dict) -> str:
    resolvable = [
        e.get("min_resolvable_fpr") for e in metrics["attacks"].values() if e.get("min_resolvable_fpr")
    ]
    text = (
        "TPR@x: true-positive rate at false-positive rate x; brackets: 95% bootstrap interval over examples."
    )
    if resolvable:
        text += (
            f" {NOT_RESOLVABLE}: not resolvable, the FPR level is below 1/#non-members = {max(resolvable):.2g}"
            " (no threshold can measure it)."
        )
    return text


def format_table(metrics: dict) -> str:
    """The attack table as aligned plain text, for the terminal."""
    header, rows = table_rows(metrics)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    title = (
        f"{metrics['num_targets']} targets, {metrics['num_models']} models, {metrics['num_queries']} queries"
    )
    return "\n".join(
        [title, line(header), line(["-" * w for w in widths]), *map(line, rows), _footnote(metrics)]
    )


def markdown_table(metrics: dict) -> str:
    header, rows = table_rows(metrics)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def catch_fpr(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """float [T, N]: for member (t, j), the fraction of target t's non-members scoring >= its
    score; NaN where j is not a member of target t."""
    out = np.full(scores.shape, np.nan)
    for t in range(scores.shape[0]):
        nonmember = np.sort(scores[t, ~membership[t]])
        member = membership[t]
        above = nonmember.size - np.searchsorted(nonmember, scores[t, member], side="left")
        out[t, member] = above / max(nonmember.size, 1)
    return out


def per_example_table(
    results: dict, labels: np.ndarray, keep: np.ndarray
) -> tuple[list[str], list[list], np.ndarray]:
    """(header, rows sorted most vulnerable first, order [N])."""
    main = main_attack(results)
    result = results[main]
    membership = keep[result.targets]
    fprs = catch_fpr(result.scores, membership)
    with warnings.catch_warnings():  # examples no target trained on: NaN by design
        warnings.simplefilter("ignore", RuntimeWarning)
        median_fpr = np.nanmedian(np.where(membership, fprs, np.nan), axis=0) if fprs.size else fprs
        caught = np.nanmean(np.where(membership, fprs <= 1e-3, np.nan), axis=0)
        mean_member_score = np.nanmean(np.where(membership, result.scores, np.nan), axis=0)
    sort_fpr = np.where(np.isnan(median_fpr), np.inf, median_fpr)
    order = np.lexsort((-np.nan_to_num(mean_member_score, nan=-np.inf), sort_fpr))
    names = list(results)
    header = [
        "example",
        "label",
        "in_count",
        "catch_fpr",
        "caught_at_0.1%_fpr",
        *[f"score_{n}" for n in names],
    ]
    mean_scores = {n: results[n].scores.mean(axis=0) for n in names}
    rows = [
        [
            int(j),
            int(labels[j]),
            int(keep[:, j].sum()),
            median_fpr[j],
            caught[j],
            *[mean_scores[n][j] for n in names],
        ]
        for j in order
    ]
    return header, rows, order


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    for row in rows:
        buffer.write(
            ",".join(
                "" if isinstance(v, float) and np.isnan(v) else f"{v:.6g}" if isinstance(v, float) else str(v)
                for v in row
            )
            + "\n"
        )
    return buffer.getvalue()


def _accuracies(train_log: list[dict]) -> dict:
    last = {}
    for row in train_log:
        if row["epoch"] >= last.get(row["model"], {}).get("epoch", -1):
            last[row["model"]] = row
    out = {"models": len(last)}
    for key in ("train_acc", "test_acc"):
        values = [r[key] for r in last.values() if r.get(key) is not None]
        if values:
            out[key] = (float(np.mean(values)), float(np.std(values)))
    return out


def write_report(report_dir, results: dict, metrics: dict, *, labels: np.ndarray, keep: np.ndarray, config: dict,
                 train_log: list[dict], images: np.ndarray | None = None,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
    """Writes every report file (see the module docstring) into report_dir."""
    report_dir = Path(report_dir)
    curves, pooled = {}, {}
    for name, result in results.items():
        membership = keep[result.targets]
        scores = np.nan_to_num(result.scores.ravel(), nan=-np.inf, posinf=np.finfo(np.float64).max)
        fpr, tpr, _ = sk_metrics.roc_curve(membership.ravel(), scores)
        curves[name], pooled[name] = (fpr, tpr), (result.scores.ravel(), membership.ravel())
    plots.roc_curves(curves, metrics, report_dir / "roc.png", log_scale=False)
    plots.roc_curves(curves, metrics, report_dir / "roc_log.png", log_scale=True)
    plots.score_histograms(pooled, report_dir / "histograms.png")
    main = main_attack(results)
    plots.per_class_risk(results[main].scores, keep[results[main].targets], labels, main,
                         report_dir / "per_class.png", class_names)  # fmt: skip
    header, rows, order = per_example_table(results, labels, keep)
    rundir.save_text(report_dir / "per_example.csv", _csv(header, rows))
    figures = ["roc_log.png", "roc.png", "histograms.png", "per_class.png"]
    if images is not None:
        name = lambda j: class_names[labels[j]] if class_names else str(labels[j])
        captions = {int(r[0]): f"#{r[0]} {name(r[0])}\nfpr {r[3]:.2g}" for r in rows}
        catch = {int(r[0]): r[3] for r in rows}
        least = [j for j in order[::-1] if not np.isnan(catch[int(j)])][:8]
        plots.example_grid(
            images, order[:8], np.array(least), captions, report_dir / "vulnerable_examples.png"
        )
        figures.append("vulnerable_examples.png")
    rundir.save_text(report_dir / "report.md", _markdown(metrics, config, train_log, figures, main))


def _markdown(metrics: dict, config: dict, train_log: list[dict], figures: list[str], main: str) -> str:
    flags, data = config.get("flags", {}), config.get("data", {})
    acc = _accuracies(train_log)
    fmt = lambda key: f"{100 * acc[key][0]:.1f}% ± {100 * acc[key][1]:.1f}" if key in acc else "n/a"
    lines = [
        "# Membership-inference audit",
        "",
        f"- data: `{flags.get('dataset', data.get('name'))}`, {data.get('num_examples')} pool examples, "
        f"{data.get('num_classes')} classes, input {data.get('input_shape')}",
        f"- models: `{flags.get('arch')}`, M = {metrics['num_models']}, {flags.get('epochs')} epochs, "
        f"batch {flags.get('batch_size')}, augment `{flags.get('augment')}`, pkeep {flags.get('pkeep')}",
        f"- accuracy over {acc['models']} models (mean ± sd): train {fmt('train_acc')}, test {fmt('test_acc')}",
        f"- attack: {metrics['num_targets']} targets (leave-one-out), {metrics['num_queries']} queries per example",
        f"- commit `{config.get('git_commit')}`",
        "",
        "## Attacks",
        "",
        markdown_table(metrics),
        "",
        _footnote(metrics),
        "",
        "## How to read this",
        "",
        "Each target model is attacked with every other model as a reference. An attack is a privacy risk",
        "when its TPR at a low FPR is well above that FPR (the log-scale ROC's diagonal): it then identifies",
        "some training examples with confidence, whatever its AUC. `per_example.csv` lists examples by",
        f"`catch_fpr` under `{main}`: the false-positive rate an attacker must accept to catch that example.",
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
    ]
    return "\n".join(lines)
