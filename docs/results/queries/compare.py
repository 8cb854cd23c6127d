"""More queries against fewer, on one run queried three times (docs/results/queries/README.md).

    python docs/results/queries/compare.py --logdirs=RUN_Q1,RUN_Q2,RUN_Q18 --json=OUT.json

Each logdir is a copy of the same trained run, queried with its own count by
experiments/inference.py and attacked by experiments/attack.py with the same targets, so the
attack stage's scores (report/scores/NAME.npy, [T, N]) differ only in the queries. For each
attack and each pair of counts, the paired bootstrap of the difference over targets and
examples (lira.metrics.paired_difference): AUC and TPR at 0.1% and 1% FPR.
"""

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from lira import metrics
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_list("logdirs", None, "Copies of one run, each queried with its own count.", required=True)
flags.DEFINE_list("attacks", ["lira_online", "lira_online_fixed_var"], "Attacks whose scores are compared.")
flags.DEFINE_integer("bootstrap", 1000, "Paired bootstrap resamples.")
flags.DEFINE_string("json", None, "Where to write the figures (JSON).")
LEVELS = (1e-3, 1e-2)


def _run(logdir: Path) -> dict:
    report = json.loads((logdir / layout.REPORT_DIR / layout.METRICS).read_text())
    scores = {a: np.load(logdir / layout.REPORT_DIR / layout.SCORES_DIR / f"{a}.npy") for a in FLAGS.attacks}
    return {"queries": report["num_queries"], "metrics": report, "scores": scores}


def _figures(entry: dict) -> dict:
    """AUC and the TPR levels of a metrics.json attack entry, with their 95% intervals (both units)."""
    ci = entry.get("ci95", {}).get("both", {})
    out = {"auc": entry["auc"], "auc_ci95": ci.get("auc")}
    for level in LEVELS:
        key = metrics.level_key(level)
        out[f"tpr@{key}"] = entry["tpr_at_fpr"].get(key)
        out[f"tpr@{key}_ci95"] = (ci.get("tpr_at_fpr") or {}).get(key)
    return out


def main(argv):
    del argv
    runs = sorted((_run(Path(d)) for d in FLAGS.logdirs), key=lambda r: r["queries"])
    keep = np.load(Path(FLAGS.logdirs[0]) / layout.KEEP)
    num_targets = runs[0]["metrics"]["num_targets"]
    membership = keep[:num_targets]
    out = {"logdirs": FLAGS.logdirs, "num_targets": num_targets, "resamples": FLAGS.bootstrap, "attacks": {}}
    for attack in FLAGS.attacks:
        single = {r["queries"]: _figures(r["metrics"]["attacks"][attack]) for r in runs}
        paired = {}
        for i, more in enumerate(runs):
            for fewer in runs[:i]:
                d = metrics.paired_difference(more["scores"][attack], fewer["scores"][attack], membership,
                                              FLAGS.bootstrap, seed=0, unit="both")  # fmt: skip
                paired[f"{more['queries']} - {fewer['queries']}"] = {
                    "auc": d["auc"], **{f"tpr@{metrics.level_key(v)}": d["tpr_at_fpr"][metrics.level_key(v)]
                                        for v in LEVELS},
                }  # fmt: skip
        out["attacks"][attack] = {"by_queries": single, "paired": paired}
        print(f"\n{attack}")
        for q, f in single.items():
            print(f"  {q:>3} queries: " + ", ".join(f"{k} {v}" for k, v in f.items()))
        for name, p in paired.items():
            cells = []
            for k, v in p.items():
                cells.append(f"{k} n/r" if v is None else f"{k} {v['difference']:+.4f} {v['ci95']}")
            print(f"  {name}: " + "; ".join(cells))
    if FLAGS.json:
        layout.save_json(Path(FLAGS.json), out)


if __name__ == "__main__":
    app.run(main)
