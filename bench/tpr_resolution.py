"""How many false positives an FPR level must allow before lira.metrics reports TPR there.

    python -m bench.tpr_resolution [--settings=8x2600,16x2600,32x700] [--units=examples]
        [--audits=300] [--resamples=200] [--json=docs/results/tpr_resolution/examples.json]

Scores with a known ROC: non-members N(0, 1), members N(mu, 1), so the true TPR at FPR v is
sf(isf(v) - mu). A setting TxP is T targets, each with P non-members and P members (balanced
masks give each target half of its pool), pooled as an audit pools its targets. Each simulated
audit measures TPR at the levels v = m / #non-members, m false positives allowed, and its 95%
interval as metrics.json has it (`lira.metrics.bootstrap_intervals`: the same code, unit and
resample count as the attack stage). Over the audits it counts how often the interval holds the
truth (coverage; misses above and below apart) and the estimate's mean against the truth.

mu is set per setting so that the true TPR at m = 10 is each of --tprs; the TPR at the other m
follows from the ROC. The scores are independent over targets and examples, so resampling
examples is the interval that should cover 95% here; resampling targets and examples at once
("both", the report's default) counts the same noise twice and can only be wider. The smallest
m whose coverage is >= 93% with a small bias in every setting is MIN_FALSE_POSITIVES in
lira/metrics.py; the figures are in docs/results/tpr_resolution.
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags
from scipy import stats

from lira import metrics

FLAGS = flags.FLAGS
flags.DEFINE_list("settings", ["8x2600", "16x2600", "32x700"], "TxP: T targets with P non-members each.")
flags.DEFINE_list("units", ["examples"], "Bootstrap units (lira.metrics.BOOTSTRAP_UNITS).")
flags.DEFINE_list("false_positives", ["1", "2", "3", "5", "7", "10", "15", "20", "30"], "Levels, as m.")
flags.DEFINE_list("tprs", ["0.02", "0.1"], "True TPRs at m = 10 false positives, one mu each.")
flags.DEFINE_integer("audits", 300, "Simulated audits per setting and TPR.")
flags.DEFINE_integer("resamples", 200, "Bootstrap resamples per interval (the attack stage's default).")
flags.DEFINE_integer("seed", 0, "Seed of the simulated scores.")
flags.DEFINE_string("json", None, "Also write the rows here.")

REFERENCE_FALSE_POSITIVES = 10  # where --tprs fixes the true TPR


def true_tpr(level: np.ndarray, shift: float) -> np.ndarray:
    """TPR at FPR `level` of the rule score > t, members N(shift, 1) against non-members N(0, 1)."""
    return stats.norm.sf(stats.norm.isf(level) - shift)


def simulate(num_targets: int, per_target: int, reference_tpr: float, unit: str, false_positives: list[int],
             num_audits: int, num_resamples: int, seed: int) -> list[dict]:  # fmt: skip
    """One row per m: truth, mean estimate and interval coverage over num_audits audits."""
    num_nonmembers = num_targets * per_target
    levels = tuple(m / num_nonmembers for m in false_positives)
    shift = stats.norm.isf(REFERENCE_FALSE_POSITIVES / num_nonmembers) - stats.norm.isf(reference_tpr)
    truth = true_tpr(np.asarray(levels), shift)
    rng = np.random.default_rng(seed)
    estimates, lows, highs = (np.zeros((num_audits, len(levels))) for _ in range(3))
    for audit in range(num_audits):
        membership = rng.permuted(np.arange(2 * per_target) < per_target * np.ones((num_targets, 1)), axis=1)
        scores = rng.normal(size=membership.shape) + shift * membership
        fpr, tpr, _ = metrics.roc_curve(scores.ravel(), membership.ravel())
        estimates[audit] = [metrics.tpr_at_fpr(fpr, tpr, v, num_nonmembers, 1) for v in levels]
        intervals = metrics.bootstrap_intervals(scores, membership, unit, num_resamples, seed=audit,
                                                min_false_positives=1, levels=levels)  # fmt: skip
        lows[audit], highs[audit] = np.array(
            [intervals["tpr_at_fpr"][metrics.level_key(v)] for v in levels]
        ).T
    return [
        {
            "targets": num_targets,
            "nonmembers_per_target": per_target,
            "nonmembers": num_nonmembers,
            "members": num_nonmembers,
            "shift": float(shift),
            "unit": unit,
            "false_positives": m,
            "level": levels[i],
            "true_tpr": float(truth[i]),
            "mean_tpr": float(estimates[:, i].mean()),
            "relative_bias": float(estimates[:, i].mean() / truth[i] - 1),
            "coverage": float(np.mean((lows[:, i] <= truth[i]) & (truth[i] <= highs[:, i]))),
            "miss_above": float(np.mean(lows[:, i] > truth[i])),
            "miss_below": float(np.mean(highs[:, i] < truth[i])),
            "audits": num_audits,
            "resamples": num_resamples,
        }  # fmt: skip
        for i, m in enumerate(false_positives)
    ]


def markdown(rows: list[dict]) -> str:
    """Coverage (and relative bias) by m: one line per setting, TPR regime and unit."""
    false_positives = sorted({row["false_positives"] for row in rows})
    header = (
        "| setting | unit | true TPR at m = 1 .. max | "
        + " | ".join(f"m={m}" for m in false_positives)
        + " |"
    )
    lines = [header, "|---" * (len(false_positives) + 3) + "|"]
    groups = {}
    for row in rows:
        groups.setdefault(
            (row["targets"], row["nonmembers_per_target"], row["shift"], row["unit"]), []
        ).append(row)
    for (targets, per_target, _, unit), group in groups.items():
        group.sort(key=lambda row: row["false_positives"])
        truth = f"{100 * group[0]['true_tpr']:.2g}% .. {100 * group[-1]['true_tpr']:.2g}%"
        cells = [f"{100 * r['coverage']:.0f}% ({100 * r['relative_bias']:+.0f}%)" for r in group]
        lines.append(f"| {targets} x {per_target} | {unit} | {truth} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: 95% interval coverage (relative bias of the mean estimate)."


def main(argv):
    del argv
    rows = []
    for setting in FLAGS.settings:
        num_targets, per_target = map(int, setting.split("x"))
        for unit in FLAGS.units:
            for reference_tpr in map(float, FLAGS.tprs):
                start = time.time()
                rows += simulate(num_targets, per_target, reference_tpr, unit, [int(m) for m in FLAGS.false_positives],
                                 FLAGS.audits, FLAGS.resamples, FLAGS.seed)  # fmt: skip
                print(f"{setting} {unit} TPR {reference_tpr}: {time.time() - start:.0f} s", flush=True)
    print(markdown(rows))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            flag_names = ("settings", "units", "false_positives", "tprs", "audits", "resamples", "seed")
            json.dump({"flags": {name: FLAGS[name].value for name in flag_names}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
