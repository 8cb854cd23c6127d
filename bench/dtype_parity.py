"""Accuracy and attack parity of two runs that differ only in --dtype (float32, bfloat16).

    python -m bench.dtype_parity --runs=RUN_FLOAT32,RUN_BFLOAT16 --json=docs/results/bfloat16_parity/parity.json

Each run is a run directory trained, queried and attacked by the stage scripts (the commands:
docs/results/bfloat16_parity/README.md). Prints, per run, the models' mean accuracy on their last
epoch's training batches (augmented, as trained) and on the test split, then every attack's AUC and
TPR at the resolvable FPR levels with their 95% intervals, and whether the two runs' intervals
overlap. lira.training.loop.DEFAULT_ACCELERATOR_DTYPE rests on this comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags

from lira import cli
from lira.run import layout, records

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Two run directories: float32 first, then bfloat16.")
flags.DEFINE_string("json", None, "Write the comparison here as JSON.")


def run_summary(logdir: Path) -> dict:
    record = records.load_record(logdir)
    rows = layout.read_jsonl(logdir / layout.TRAIN_LOG)
    last = {}
    for row in rows:  # each model's last epoch
        if row["epoch"] == record.config.training.epochs:
            last[row["model"]] = row
    metrics = json.loads((logdir / layout.REPORT_DIR / layout.METRICS).read_text())
    attacks = {}
    for name, figures in metrics["attacks"].items():
        intervals = (figures.get("ci95") or {}).get("both") or {}  # targets and examples resampled
        entry = {"auc": figures["auc"], "auc_ci95": intervals.get("auc"), "tpr_at_fpr": {}}
        for level, tpr in figures["tpr_at_fpr"].items():
            if tpr is not None:
                entry["tpr_at_fpr"][level] = {
                    "tpr": tpr,
                    "ci95": (intervals.get("tpr_at_fpr") or {}).get(level),
                }
        attacks[name] = entry
    return {
        "logdir": str(logdir), "dtype": record.config.model.dtype, "models": len(last),
        "train_acc": float(np.mean([r["train_acc"] for r in last.values()])),
        "test_acc": float(np.mean([r["test_acc"] for r in last.values()])),
        "attacks": attacks,
    }  # fmt: skip


def _overlap(a, b) -> bool | None:
    if not a or not b:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def main(argv):
    del argv
    if not FLAGS.runs or len(FLAGS.runs) != 2:
        raise ValueError(f"--runs needs two run directories (float32, bfloat16), got {FLAGS.runs}.")
    first, second = (run_summary(Path(r)) for r in FLAGS.runs)
    print(f"{'':10s} {'train acc':>9s} {'test acc':>9s}")
    for run in (first, second):
        print(f"{run['dtype']:10s} {100 * run['train_acc']:8.2f}% {100 * run['test_acc']:8.2f}%")
    comparison = {}
    for name in first["attacks"]:
        a, b = first["attacks"][name], second["attacks"].get(name)
        if b is None:
            continue
        rows = {"auc": (a["auc"], b["auc"], _overlap(a["auc_ci95"], b["auc_ci95"]))}
        for level in a["tpr_at_fpr"]:
            if level in b["tpr_at_fpr"]:
                x, y = a["tpr_at_fpr"][level], b["tpr_at_fpr"][level]
                rows[f"tpr@{level}"] = (x["tpr"], y["tpr"], _overlap(x["ci95"], y["ci95"]))
        comparison[name] = rows
        for figure, (x, y, overlap) in rows.items():
            print(f"{name:26s} {figure:10s} {x:.4f} {y:.4f} intervals overlap: {overlap}")
    out = {
        "runs": [first, second], "comparison": comparison,
        "train_acc_difference_points": 100 * (second["train_acc"] - first["train_acc"]),
        "test_acc_difference_points": 100 * (second["test_acc"] - first["test_acc"]),
    }  # fmt: skip
    print(f"bfloat16 - float32: train {out['train_acc_difference_points']:+.2f} points, "
          f"test {out['test_acc_difference_points']:+.2f} points")  # fmt: skip
    if FLAGS.json:
        layout.save_json(Path(FLAGS.json), out)
        print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main)
