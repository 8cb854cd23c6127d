"""The audit report: the files an auditor hands on, written by the attack stage (lira/stages/attack.py).

    report/roc.png, roc_log.png     ROC of every attack, linear and log-log (all targets pooled)
    report/histograms.png           IN vs OUT score distributions per attack
    report/gradient_norms.png       IN vs OUT loss-gradient norms per layer (white-box audits)
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

from lira import metrics as metrics_lib
from lira.report import plots
from lira.report.tables import audit_note, footnote, main_attack, markdown_table, percent
from lira.run import layout, records
from lira.run.reader import Run

CAUGHT_LEVEL = 1e-3
GRID_SIZE = 8


def per_example_table(results: dict, labels: np.ndarray, keep: np.ndarray) -> tuple[list[str], list[list], np.ndarray]:  # fmt: skip
    """(header, rows, order): one row per example, most vulnerable first; order int [N] is the
    example index of each row. See the module docstring for the columns."""
    main = main_attack(results)
    result = results[main]
    membership = keep[result.targets]
    fprs, median_fpr, order = metrics_lib.rank_examples(result.scores, membership)
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
    auc = entry.get("auc", float(np.trapezoid(tpr, fpr)))
    key = metrics_lib.level_key(CAUGHT_LEVEL)
    if key in entry.get("tpr_at_fpr", {}):
        at = entry["tpr_at_fpr"][key]
    else:
        at = metrics_lib.tpr_at_fpr(fpr, tpr, CAUGHT_LEVEL, num_nonmembers)
    return f"{name} (AUC={auc:.3f}, TPR@{100 * CAUGHT_LEVEL:g}%FPR={percent(at)})"


def write_report(report_dir, results: dict, metrics: dict, run: Run, *, images: np.ndarray | None = None,
                 class_names: list[str] | None = None,
                 gradient_norms: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:  # fmt: skip
    """Writes every report file (see the module docstring) into report_dir, each atomically. The
    attack stage passes a fresh folder and swaps it in whole once every file is written (stale
    files of an earlier report cannot survive there); called on an existing folder, the figures
    this report does not draw are removed.

    results: {attack: object with .scores float [T, N] and .targets list[int] (lira.attacks.protocol.AttackResult)};
    metrics: the metrics.json dict; run: the attacked run (its keep, labels, config.json and
    training log); images uint8 [N, H, W, C] or None (no image grid, e.g. tabular data);
    class_names: label -> name, for the figures; gradient_norms: {layer: (log10 gradient norms
    [n], is_member [n])} of the targets' examples (white-box runs), drawn as gradient_norms.png.
    """
    labels, keep, record, train_log = (
        np.asarray(run.labels),
        np.asarray(run.keep, dtype=bool),
        run.record,
        run.train_log,
    )
    _check_inputs(results, labels, keep, images)
    report_dir = Path(report_dir)
    curves, legends, pooled = {}, {}, {}
    for name, result in results.items():
        membership = keep[result.targets].ravel()
        scores = np.nan_to_num(np.asarray(result.scores, np.float64).ravel(), nan=-np.inf)
        fpr, tpr, _ = metrics_lib.roc_curve(scores, membership)
        curves[name], pooled[name] = (fpr, tpr), (scores, membership)
        entry = metrics.get("attacks", {}).get(name, {})
        legends[name] = _legend(name, entry, fpr, tpr, int((~membership).sum()))
    plots.roc_curves(curves, legends, report_dir / "roc.png", log_scale=False)
    plots.roc_curves(curves, legends, report_dir / "roc_log.png", log_scale=True)
    plots.score_histograms(pooled, report_dir / "histograms.png")
    norms_figure = report_dir / "gradient_norms.png"
    if gradient_norms:
        plots.score_histograms(gradient_norms, norms_figure, xlabel="log10 of the loss-gradient norm",
                               title="Gradient norms of members (IN) and non-members (OUT), all targets pooled")  # fmt: skip
    else:
        norms_figure.unlink(missing_ok=True)  # a figure left by an earlier white-box audit
    main = main_attack(results)
    risk = metrics_lib.per_class_risk(np.asarray(results[main].scores), keep[results[main].targets], labels)
    plots.per_class_risk(risk, main, report_dir / "per_class.png", class_names)
    header, rows, order = per_example_table(results, labels, keep)
    layout.save_text(report_dir / "per_example.csv", _csv(header, rows))
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
    markdown = _markdown(metrics, record, train_log, main, risk, header, rows[:10], name_of, grid.exists())
    layout.save_text(report_dir / "report.md", markdown)


def _run_lines(metrics: dict, record: records.RunRecord, train_log: list[dict]) -> list[str]:
    """The run's configuration and model accuracies, as markdown bullets; absent fields are left out.
    Of models trained elsewhere (record.external) only what their logits, masks and the user's
    description say: lira's flags would describe models it never trained."""
    flags, data = ({} if record.external else record.config.flat()), record.data

    def described(pairs) -> str:  # ": label value, ..." over the known values, or nothing
        known = [f"{label} {value}" for label, value in pairs if value is not None]
        return ": " + ", ".join(known) if known else ""

    data_facts = [("pool examples", data.get("num_examples")), ("test examples", data.get("num_test")),
                  ("classes", data.get("num_classes")), ("input", data.get("input_shape"))]  # fmt: skip
    model_facts = [("M =", metrics.get("num_models")), ("epochs", flags.get("epochs")),
                   ("batch", flags.get("batch_size")), ("lr", flags.get("lr")),
                   ("augment", flags.get("augment")), ("pkeep", flags.get("pkeep"))]  # fmt: skip
    accuracy = layout.final_accuracies(train_log)
    fmt = lambda key: (
        f"{100 * accuracy[key][0]:.1f}% ± {100 * accuracy[key][1]:.1f}" if key in accuracy else "n/a"
    )
    queries = metrics.get("num_queries", record.queries)
    # lira knows how it queried its own models, not how imported logits were computed
    accuracy_query = (
        "the first query's logits, as imported" if record.external else "plain query, inference mode"
    )
    if record.external:
        stated = (record.models or {}).get("description")
        models_line = (f"- **Models**: trained elsewhere, their logits imported (experiments/import_logits.py)"
                       f"{described(model_facts)}" + (f"; as stated: {stated}" if stated else ""))  # fmt: skip
    else:
        models_line = f"- **Models**: `{flags.get('arch', 'unknown')}`{described(model_facts)}"
    lines = [
        f"- **Data**: `{flags.get('dataset', data.get('name') or 'unknown')}`{described(data_facts)}",
        models_line,
        f"- **Accuracy** (mean ± sd over {accuracy['models']} models, last epoch): train {fmt('train_acc')}, "
        f"test {fmt('test_acc')}"
        if accuracy["models"]
        else "- **Accuracy**: no training log",
        *(
            [
                f"- **Memorization**: {100 * metrics['models']['train_acc']:.1f}% accuracy on each model's own "
                f"training examples ({accuracy_query}; mean over models)"
            ]
            if (metrics.get("models") or {}).get("train_acc") is not None
            else []
        ),
        f"- **Attack**: {metrics.get('num_targets')} target models, each attacked with the other models as "
        f"references (leave-one-out); queries per example: {queries}"
        + (f"; {metrics['num_shadows_used']} references used" if metrics.get("num_shadows_used") else ""),
    ]
    if record.dp:
        dp = record.dp
        lines.append(
            f"- **Differential privacy**: DP-SGD, ({dp['epsilon']:.3g}, {dp['delta']:g})-DP accounted "
            f"(noise multiplier {dp['noise_multiplier']:.4g}, clip norm {dp['clip_norm']:g}, Poisson sampling "
            f"q = {dp['sampling_probability']:.4g}, {dp['steps']} steps; {dp['accountant']})"
        )
    canaries = flags.get("canaries")
    if canaries:
        lines.append(f"- **Canaries**: {canaries} mislabelled pool examples (canaries.npy)")
    versions = record.versions
    provenance = [f"commit `{record.git_commit[:12]}`"] if record.git_commit else []
    provenance += [f"{k} {versions[k]}" for k in ("jax", "flax", "backend") if k in versions]
    if provenance:
        lines.append("- **Provenance**: " + ", ".join(provenance))
    return lines


def _markdown(metrics: dict, record: records.RunRecord, train_log: list[dict], main: str, risk: dict, header: list[str],
              top_rows: list[list], name_of, has_grid: bool) -> str:  # fmt: skip
    classes = {c: r for c, r in risk.items() if c != "level"}
    level = 100 * risk["level"]
    lines = [
        "# Membership-inference audit",
        "",
        *_run_lines(metrics, record, train_log),
        "",
        "## Attacks",
        "",
    ]
    lines += [markdown_table(metrics), "", footnote(metrics), ""]
    if audit_note(metrics):
        lines += [audit_note(metrics), ""]
    lines += ["## How to read this", ""]
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
        *(
            [
                "White-box signals: the loss-gradient norms of members and non-members, per layer and for the",
                "whole model (plain query). Training shrinks the gradients of the examples a model trained on.",
                "",
                "![gradient norms](gradient_norms.png)",
                "",
            ]
            if metrics.get("whitebox")
            else []
        ),
        "## Per class and per example",
        "",
        f"Under `{main}`, with one threshold set at {level:g}% FPR over all classes (`per_class.png`):",
        "",
    ]
    if classes:
        by_tpr = sorted(classes, key=lambda c: classes[c]["tpr"])
        for tag, c in (("most exposed", by_tpr[-1]), ("least exposed", by_tpr[0])):
            lines.append(f"- {tag}: class {name_of(c)} (TPR {percent(classes[c]['tpr'])}, "
                         f"FPR {percent(classes[c]['fpr'])})")  # fmt: skip
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
