"""rmia_online with the vote fraction's old denominator (a non-member's wins over P - 1, a member's
over P) against the one denominator now used: docs/results/rmia_signal/README.md.

    python docs/results/rmia_signal/old_denominator.py --logdir=exp/demo --num_targets=32
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from lira import metrics
from lira.attacks import protocol, rmia
from lira.run import records
from lira.run.reader import read_run
from lira.signals import ProbabilitySignal

ONE_DENOMINATOR = rmia.vote_fractions


def old_vote_fractions(ratio: np.ndarray, population: np.ndarray, gamma: float) -> np.ndarray:
    """The code before: x's comparison with itself taken out, its wins divided by P - 1."""
    wins = ONE_DENOMINATOR(ratio, population, gamma) * len(population)
    ratio = ratio.astype(np.float32)
    inverse = (1.0 / ratio[population]).astype(np.float32)
    in_population = np.zeros(len(ratio), bool)
    in_population[population] = True
    self_pair = np.zeros(len(ratio))
    self_pair[population] = 2 * np.sum(ratio[population] * inverse >= np.float32(gamma), -1) > ratio.shape[1]
    return (wins - self_pair) / np.maximum(len(population) - in_population, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--num_targets", type=int, default=16)
    args = parser.parse_args()
    keep = records.load_keep(args.logdir)
    targets = list(range(min(args.num_targets, len(keep))))
    warnings.simplefilter("ignore", rmia.InvalidProbabilityWarning)
    for signal in (ProbabilitySignal("softmax", 2.0), ProbabilitySignal("taylor", 2.0, 0.6, 4),
                   ProbabilitySignal("taylor", 2.0, 0.6, 5)):  # fmt: skip
        run = read_run(args.logdir).with_signals(signal)
        options = {"signal": signal.kind, "temperature": signal.temperature, "margin": signal.margin,
                   "terms": signal.terms}  # fmt: skip
        for name, vote in (
            ("one denominator", ONE_DENOMINATOR),
            ("P - 1 for non-members", old_vote_fractions),
        ):
            rmia.vote_fractions = vote
            result = protocol.run_attacks(run, ["rmia_online"], targets,
                                          attack_options={"rmia_online": options})["rmia_online"]  # fmt: skip
            pooled = metrics.summarize(result.scores, keep[targets])
            per_target = np.mean(
                [metrics.summarize(s, m)["auc"] for s, m in zip(result.scores, keep[targets])]
            )
            print(
                f"{signal.kind} T={signal.temperature:g} n={signal.terms}, {name}: pooled AUC {pooled['auc']:.4f}, "
                f"TPR@0.1% {100 * pooled['tpr_at_fpr']['0.001']:.2f}%, mean per-target AUC {per_target:.4f}"
            )
        rmia.vote_fractions = ONE_DENOMINATOR


if __name__ == "__main__":
    main()
