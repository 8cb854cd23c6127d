"""Every table lira prints: the attack table of the report and the attack script (TPR at each FPR
level with its 95% interval, AUC and balanced accuracy, one row per attack), and the notebooks'
tables of attacks, paired comparisons and sweeps."""

from __future__ import annotations

from lira import metrics as metrics_lib

MAIN_ATTACKS = ("lira_online", "lira_online_fixed_var", "rmia_online", "lira_offline")
TABLE_LEVELS = ("1e-05", "0.0001", "0.001", "0.01", "0.1")
NOT_RESOLVABLE = "n/r"
PAPER_LEVELS = (1e-5, 1e-4, 1e-3, 1e-2)  # 0.001%, 0.01%, 0.1%, 1%: the LiRA paper's table


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


def percent(value, interval=None) -> str:
    """'3.45% [2.81, 4.38]'; 'n/r' for None (an FPR level too low for the data: lira.metrics.resolvable)."""
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
    together, examples alone for one target) when present and `n/r` where the level is not
    resolvable (fewer than k false positives allowed, see `unresolvable_note`)."""
    levels = _levels(metrics)
    ci_unit = _unit(metrics, ci_unit)
    header = ["attack", "AUC", "bal. acc"] + [f"TPR@{100 * float(level):g}%" for level in levels]
    audited = any("epsilon_lower_bound" in entry for entry in metrics["attacks"].values())
    if audited:
        header.append("eps lower bound")
    rows = []
    for name, entry in metrics["attacks"].items():
        ci = _intervals(entry, ci_unit)
        auc = f"{entry['auc']:.3f}" if entry.get("auc") is not None else "n/a"
        if ci.get("auc") and entry.get("auc") is not None:
            auc += f" [{ci['auc'][0]:.3f}, {ci['auc'][1]:.3f}]"
        accuracy = f"{entry['balanced_acc']:.3f}" if entry.get("balanced_acc") is not None else "n/a"
        tprs, tpr_ci = entry.get("tpr_at_fpr", {}), ci.get("tpr_at_fpr") or {}
        rows.append([name, auc, accuracy, *[percent(tprs.get(level), tpr_ci.get(level)) for level in levels]])
        if audited:
            bound = entry.get("epsilon_lower_bound")
            rows[-1].append("n/a" if bound is None else f"{bound:.2f}")
    return header, rows


def audit_note(metrics: dict) -> str:
    """What the table's epsilon lower bounds are, against the accounted epsilon; '' if none."""
    audit = metrics.get("audit")
    if not audit:
        return ""
    method = {"one_run": "the one-run bound of Steinke, Nasr and Jagielski (2023), largest over the targets",
              "clopper_pearson": "Clopper-Pearson over all (target, example) pairs"}.get(audit["method"], audit["method"])  # fmt: skip
    examples = f"{audit['num_examples']} canaries" if audit["examples"] == "canaries" else "all pool examples"
    accounted = (
        f"accounted epsilon {audit['epsilon']:.3g} (DP-SGD)" if audit.get("epsilon") is not None
        else "no accounted epsilon (not trained with DP)"
    )  # fmt: skip
    return (
        f"eps lower bound: empirical epsilon at delta {audit['delta']:g}, confidence "
        f"{1 - audit['significance']:g}, from each attack's scores on {examples} ({method}); {accounted}."
    )


def footnote(metrics: dict, ci_unit: str = "both") -> str:
    attacks = metrics["attacks"].values()
    text = "TPR@x%: true-positive rate at false-positive rate x% (all targets pooled)."
    if any(entry.get("ci95") for entry in attacks):
        text += (
            f" Brackets: 95% bootstrap interval, resampling {CI_UNITS.get(_unit(metrics, ci_unit), ci_unit)}."
        )
    for name, entry in metrics["attacks"].items():
        if entry.get("offline_a"):
            values = entry["offline_a"]
            how = (
                "fitted on reference models attacked in the target's place"
                if entry.get("offline_a_fitted")
                else "given"
            )
            spread = (
                f"{min(values):.3g}"
                if min(values) == max(values)
                else f"{min(values):.3g} to {max(values):.3g}"
            )
            text += f" {name}: offline a = {spread} ({how})."
    if any(v is None for entry in attacks for v in entry.get("tpr_at_fpr", {}).values()):
        text += " " + unresolvable_note(list(attacks))
    for name, reason in (metrics.get("skipped") or {}).items():
        text += f" Not run: {name}, {reason[0].lower() + reason[1:]}"
    return text


def unresolvable_note(attacks: list[dict]) -> str:
    """Why a level reads n/r, and the targets or pool size that would resolve it, from the
    metrics.json entries of the attacks (metrics.json written before k existed: k = 1)."""
    floors = sorted({e["min_resolvable_fpr"] for e in attacks if e.get("min_resolvable_fpr")})
    where = ""
    if floors:
        where = f" = {floors[0]:.2g}" if len(floors) == 1 else f" = {floors[0]:.2g} to {floors[-1]:.2g}"
    k = max((e.get("min_false_positives", 1) for e in attacks), default=1)
    if k > 1:
        why = (
            f"it allows fewer than {k} false positives, and with so few the TPR is biased upward and its"
            " interval misses the truth (docs/results/tpr_resolution), so it is not reported (it is not 0)"
        )
    else:
        why = (
            "the smallest non-zero FPR any threshold can have, so no TPR can be measured there (it is not 0)"
        )
    reach = what_would_resolve(attacks) or "Attack more targets or a larger pool to reach it."
    return f"{NOT_RESOLVABLE}: not resolvable. The level is below {k}/#non-members{where}: {why}. {reach}"


def what_would_resolve(attacks: list[dict]) -> str:
    """'To resolve 0.01%: 77 targets (at this pool) or a pool of 50,000 (at these targets); ...',
    from metrics.json's tpr_at_fpr_unresolvable ('' when absent: written before it existed)."""
    needs = next((e["tpr_at_fpr_unresolvable"] for e in attacks if e.get("tpr_at_fpr_unresolvable")), None)
    if not needs:
        return ""
    return (
        "To resolve "
        + "; ".join(
            f"{100 * float(level):g}%: {need['needs_targets']:,} targets (at this pool) or a pool of "
            f"{need['needs_pool_size']:,} (at these targets)"
            for level, need in sorted(needs.items(), key=lambda item: -float(item[0]))
        )
        + "."
    )


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
    return "\n".join([title, *body, footnote(metrics, ci_unit), *filter(None, [audit_note(metrics)])])


def markdown_table(metrics: dict, ci_unit: str = "both") -> str:
    header, rows = table_rows(metrics, ci_unit)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --- The notebooks' tables (lira.studies re-exports them) --------------------------------------------


def short_percent(value: float | None) -> str:
    """'7.01%', '0.0382%', or 'n/r' for a level that is not resolvable (None)."""
    return "n/r" if value is None else f"{100 * value:.3g}%"


def tpr_table(metrics: dict, levels=PAPER_LEVELS) -> str:
    """Markdown table: AUC and TPR at each FPR level per attack. A level that allows fewer than k
    false positives is not reported (lira.metrics.resolvable); it reads `n/r` and the note says
    what would resolve it."""
    header = ["attack", "AUC"] + [f"TPR @ {100 * level:g}% FPR" for level in levels]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, entry in metrics["attacks"].items():
        cells = [short_percent(entry["tpr_at_fpr"][metrics_lib.level_key(level)]) for level in levels]
        lines.append(f"| {name} | {entry['auc']:.3f} | " + " | ".join(cells) + " |")
    entries = list(metrics["attacks"].values())
    num_nonmembers = max(entry["num_nonmembers"] for entry in entries)
    k = max((entry.get("min_false_positives", 1) for entry in entries), default=1)
    lines += [
        "",
        f"{metrics['num_targets']} targets pooled: {num_nonmembers:,} non-member scores, so an FPR level "
        f"below {k}/{num_nonmembers:,} = {100 * k / num_nonmembers:.3g}% is not reported (n/r): it allows "
        f"fewer than {k} false positive{'s' if k > 1 else ''}.",
    ]
    if any(value is None for entry in entries for value in entry["tpr_at_fpr"].values()):
        lines[-1] = f"{lines[-1]} {what_would_resolve(entries)}".rstrip()
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> str:
    """Markdown table of `paired_comparisons` rows: differences with 95% intervals, and a verdict."""

    def cell(entry, scale, digits):
        if entry is None:
            return "n/r"
        text = f"{scale * entry['difference']:+.{digits}f}"
        if entry["ci95"] is not None:
            text += f" [{scale * entry['ci95'][0]:+.{digits}f}, {scale * entry['ci95'][1]:+.{digits}f}]"
        return text

    def verdict(row):
        if row["beats_tpr"] or row["beats_auc"]:
            which = " and ".join(k for k, v in (("TPR", row["beats_tpr"]), ("AUC", row["beats_auc"])) if v)
            return f"{row['a']} beats {row['b']} ({which})"
        reverse = [
            k
            for k, key in (("TPR", "tpr"), ("AUC", "auc"))
            if row[key] and row[key]["ci95"] and row[key]["ci95"][1] < 0
        ]
        if reverse:
            return f"{row['b']} beats {row['a']} ({' and '.join(reverse)})"
        return "no difference shown"

    level = rows[0]["level"] if rows else 1e-3
    lines = [
        f"| A | B | AUC A - B | TPR @ {100 * level:g}% FPR, A - B (points) | paired 95% verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['a']} | {row['b']} | {cell(row['auc'], 1, 3)} | {cell(row['tpr'], 100, 2)} | {verdict(row)} |"
        )
    return "\n".join(lines)


def rows_table(rows: list[dict], x: str, level: float = 1e-3, columns=None) -> str:
    """Markdown table of sweep rows: one line per attack, one column per value of `x` (`columns`,
    default every value in the rows), cells 'AUC / TPR at `level`' ('-' where the attack has no
    row, i.e. too few references; n/r where the level is not resolvable)."""
    xs = sorted({row[x] for row in rows} if columns is None else set(columns))
    cells = {}
    for row in rows:
        tpr = row["tpr_at_fpr"][metrics_lib.level_key(level)]
        cells[row["attack"], row[x]] = f"{row['auc']:.3f} / {short_percent(tpr)}"
    attacks = list(dict.fromkeys(row["attack"] for row in rows))
    lines = [f"| attack \\ {x} | " + " | ".join(map(str, xs)) + " |", "|---" * (len(xs) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(cells.get((a, v), "-") for v in xs) + " |" for a in attacks]
    return (
        "\n".join(lines) + f"\n\nCells: AUC / TPR at {100 * level:g}% FPR; '-': not run (too few references)."
    )
