"""RMIA's probability signal compared on one run: docs/results/rmia_signal/README.md.

    python docs/results/rmia_signal/measure.py --logdir=exp/demo --num_targets=32 \
        --out=docs/results/rmia_signal/demo.json [--oracle_dir=DIR]

For each signal, rmia_online and rmia_offline (a = 0.3, the authors', and a fitted: "auto"),
beside lira_online and lira_offline_fixed_var: pooled AUC and TPR at 0.1% and 1% FPR, the
fraction of the signal's values outside [0, 1] and the fitted a; then paired bootstrap
differences of the default signal's RMIA against LiRA. `--oracle_dir` writes the authors'
signal's scores where ../shared/oracles/rmia_authors.py reads them (DIR/report/scores, with DIR
linking the run's keep.npy, labels.npy and logits/), so the run's own report/ is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from lira import metrics
from lira.attacks import options_from_flags, protocol, rmia
from lira.run import records
from lira.run.reader import read_run
from lira.signals import ProbabilitySignal

SIGNALS = {  # name -> the probability signal (T, margin, terms as the flags take them)
    "taylor_n4_T2 (authors')": ProbabilitySignal("taylor", 2.0, 0.6, 4),
    "taylor_n5_T2": ProbabilitySignal("taylor", 2.0, 0.6, 5),
    "softmax_T1": ProbabilitySignal("softmax", 1.0),
    "softmax_T2": ProbabilitySignal("softmax", 2.0),
    "softmax_T4": ProbabilitySignal("softmax", 4.0),
    "softmax_T8": ProbabilitySignal("softmax", 8.0),
}
LEVELS = ("0.001", "0.01")


def figures(scores: np.ndarray, membership: np.ndarray) -> dict:
    """Pooled over the targets (as metrics.json), and the mean of the targets' own AUCs."""
    summary = metrics.summarize(scores, membership)
    per_target = np.mean([metrics.summarize(row, member)["auc"] for row, member in zip(scores, membership)])
    return {"auc": summary["auc"], **{f"tpr_at_{v}": summary["tpr_at_fpr"][v] for v in LEVELS},
            "auc_per_target_mean": float(per_target)}  # fmt: skip


def signal_options(signal: ProbabilitySignal) -> dict:
    return {
        "signal": signal.kind,
        "temperature": signal.temperature,
        "margin": signal.margin,
        "terms": signal.terms,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--num_targets", type=int, default=16)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--oracle_dir", default=None)
    args = parser.parse_args()
    logdir = Path(args.logdir)
    keep = records.load_keep(logdir)
    targets = list(range(min(args.num_targets, len(keep))))
    membership = keep[targets]
    out = {
        "logdir": str(logdir),
        "num_models": len(keep),
        "num_examples": keep.shape[1],
        "targets": len(targets),
    }

    run = read_run(logdir)
    signals = run.with_signals().signals
    out["num_queries"] = signals.num_queries
    lira = protocol.run_attacks(run.with_signals(), ["lira_online", "lira_offline_fixed_var"], targets)
    out["lira"] = {name: figures(result.scores, membership) for name, result in lira.items()}
    scores = {name: result.scores for name, result in lira.items()}

    out["rmia"] = {}
    for name, signal in SIGNALS.items():
        started = time.time()
        with_signal = run.with_signals(signal)
        signals = with_signal.signals
        outside, total = rmia.outside_unit_interval(signals.probability)
        options = signal_options(signal)
        entry = {"signal": options, "outside_unit_interval": outside / total}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rmia.InvalidProbabilityWarning)  # counted above
            for offline_a in ("0.3", "auto"):
                attacks = ["rmia_online", "rmia_offline"] if offline_a == "0.3" else ["rmia_offline"]
                chosen = {
                    "rmia_online": options,
                    "rmia_offline": {**options, "offline_a": rmia_offline_a(offline_a)},
                }
                results = protocol.run_attacks(with_signal, attacks, targets, attack_options=chosen)
                for attack, result in results.items():
                    key = attack if offline_a == "0.3" else "rmia_offline_auto"
                    entry[key] = figures(result.scores, membership)
                    scores[(name, key)] = result.scores
                    if offline_a == "auto":
                        a = result.info["offline_a"]
                        entry["fitted_a"] = {"mean": float(np.mean(a)), "min": min(a), "max": max(a)}
        entry["seconds"] = round(time.time() - started, 1)
        out["rmia"][name] = entry
        print(name, json.dumps(entry), flush=True)
        if args.oracle_dir and signal == SIGNALS["taylor_n4_T2 (authors')"]:
            write_oracle_dir(
                Path(args.oracle_dir), logdir, scores[(name, "rmia_online")], scores[(name, "rmia_offline")]
            )

    chosen = next(
        name for name, s in SIGNALS.items() if signal_options(s) == signal_options(ProbabilitySignal())
    )
    out["default_signal"] = chosen
    out["paired"] = {}
    for rmia_attack, lira_attack in (("rmia_online", "lira_online"), ("rmia_offline", "lira_offline_fixed_var"),
                                     ("rmia_offline_auto", "lira_offline_fixed_var")):  # fmt: skip
        difference = metrics.paired_difference(
            scores[(chosen, rmia_attack)], scores[lira_attack], membership, args.resamples, seed=0
        )
        out["paired"][f"{rmia_attack} - {lira_attack}"] = {
            "auc": difference["auc"],
            **{f"tpr_at_{v}": difference["tpr_at_fpr"][v] for v in LEVELS},
        }
    authors = "taylor_n4_T2 (authors')"
    difference = metrics.paired_difference(
        scores[(chosen, "rmia_online")], scores[(authors, "rmia_online")], membership, args.resamples, seed=0
    )
    out["paired"][f"rmia_online: {chosen} - {authors}"] = {
        "auc": difference["auc"],
        **{f"tpr_at_{v}": difference["tpr_at_fpr"][v] for v in LEVELS},
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["paired"], indent=1))


def rmia_offline_a(value: str) -> float | str:
    return options_from_flags({"rmia_offline_a": value})["rmia_offline"]["offline_a"]


def write_oracle_dir(directory: Path, logdir: Path, online: np.ndarray, offline: np.ndarray) -> None:
    """DIR with the run's keep.npy, labels.npy and logits/ linked, and our scores of the authors'
    signal in DIR/report/scores, as the oracle reads them."""
    (directory / "report" / "scores").mkdir(parents=True, exist_ok=True)
    for name in ("keep.npy", "labels.npy", "logits"):
        link = directory / name
        if not link.exists():
            os.symlink((logdir / name).resolve(), link)
    np.save(directory / "report" / "scores" / "rmia_online.npy", online)
    np.save(directory / "report" / "scores" / "rmia_offline.npy", offline)


if __name__ == "__main__":
    main()
