"""The DP audit's corrections measured on simulated data (docs/dp.md; results in README.md here).

    python docs/results/dp_audit_correction/simulate.py --json=docs/results/dp_audit_correction/simulate.json

1. choice among attacks: 5 simulated attacks (IN ~ N(shift, 1), OUT ~ N(0, 1), each its own
   noise) on 8 targets x 1,000 canaries; the largest bound as reported before (each attack at
   alpha / T) and as reported now (alpha / (A T)).
2. the null, no membership signal: the fraction of simulated audits (5 attacks, 2 targets x 100
   canaries, scores independent of membership) with a bound > 0, as reported now and uncorrected.
3. the reference rule on canaries: a synthetic run (lira.run.synthetic, no membership signal,
   8 models, 4,000 canaries drawn independently per model beside 4,000 balanced examples); the
   canaries' scores of members against non-members (Kolmogorov-Smirnov p-value, and the fraction of
   members among each target's top 1%) with the reference counts of balanced columns (which count
   the target's own entry) and with the counts from the references alone (lira/attacks/protocol.py);
   seeds 0-3.
"""

import dataclasses
import json
import sys
import tempfile
import time
import warnings

import numpy as np
from absl import app, flags
from scipy import stats

from lira import audit
from lira.attacks import ATTACKS, probability_signal, protocol
from lira.attacks.protocol import AttackResult
from lira.run import masks, synthetic
from lira.run.reader import read_run

flags.DEFINE_string("json", None, "Write the figures here.")
FLAGS = flags.FLAGS
ALPHA, DELTA = 0.05, 1e-5


def choice_among_attacks(shifts=(1, 2, 3, 5), num_attacks=5, num_targets=8, num_canaries=1000) -> list[dict]:
    rows = []
    for shift in shifts:
        rng = np.random.default_rng(int(shift * 10))
        member = rng.random((num_targets, num_canaries)) < 0.5
        results = {
            f"attack_{i}": AttackResult(
                rng.normal(size=member.shape) + shift * member, list(range(num_targets))
            )
            for i in range(num_attacks)
        }
        before = max(
            audit.epsilon_lower_bound(r.scores, member, "one_run", ALPHA, DELTA) for r in results.values()
        )
        now = audit.audit(results, member, np.arange(num_canaries), "one_run", ALPHA, DELTA)[
            "epsilon_lower_bound"
        ]
        rows.append({"shift": shift, "before": before, "corrected": now})
        print(f"shift {shift}: largest bound {before:.2f} before, {now:.2f} corrected", flush=True)
    return rows


def null_rate(runs=1000, num_attacks=5, num_targets=2, num_canaries=100) -> dict:
    rng = np.random.default_rng(0)
    reported = uncorrected = 0
    for _ in range(runs):
        member = rng.random((num_targets, num_canaries)) < 0.5
        results = {
            f"attack_{i}": AttackResult(rng.normal(size=member.shape), list(range(num_targets)))
            for i in range(num_attacks)
        }
        reported += (
            audit.audit(results, member, np.arange(num_canaries), "one_run", ALPHA, DELTA)[
                "epsilon_lower_bound"
            ]
            > 0
        )
        uncorrected += (
            max(
                audit.epsilon_lower_bound(r.scores, member, "one_run", ALPHA, DELTA) for r in results.values()
            )
            > 0
        )
    figures = {"runs": runs, "reported": reported / runs, "uncorrected": uncorrected / runs}
    print(
        f"null: bound > 0 in {figures['reported']:.3f} of runs as reported, {figures['uncorrected']:.3f} uncorrected"
    )
    return figures


def reference_rule(num_models=8, num_examples=8000, seed=0) -> list[dict]:
    names = ["lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var", "rmia_online",
             "calibrated_loss"]  # fmt: skip
    canaries = np.arange(num_examples // 2)
    keep = masks.make_keep(num_models, num_examples, 0.5, seed, canaries=canaries)
    targets = list(range(num_models))
    rows = []
    with tempfile.TemporaryDirectory() as logdir:
        synthetic.make_synthetic_rundir(logdir, num_models=num_models, num_examples=num_examples, num_queries=1,
                                        signal=0.0, seed=seed, keep=keep)  # fmt: skip
        run = read_run(logdir).with_signals(probability_signal(names))
        for rule, told in (("balanced counts", None), ("references alone", canaries)):
            selection = protocol.select_references(keep, targets, None, seed, canaries=told)
            inputs = protocol.attack_inputs(dataclasses.replace(run, canaries=told), targets, selection, seed)
            for name in names:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    output = ATTACKS[name].fn(inputs)
                scores = np.asarray(output[0] if isinstance(output, tuple) else output, float)
                scored = ~protocol.unscored(selection, name) & np.isfinite(scores)
                scored[:, num_examples // 2 :] = False  # the canaries only
                member = keep[targets]
                top = []
                for t in targets:
                    ranked = np.argsort(-np.where(scored[t], scores[t], -np.inf))[
                        : int(0.01 * scored[t].sum())
                    ]
                    top.append(member[t, ranked].mean())
                test = stats.ks_2samp(scores[scored & member], scores[scored & ~member])
                rows.append({"seed": seed, "rule": rule, "attack": name, "ks_pvalue": float(test.pvalue),
                             "top_1pct_members": float(np.mean(top)),
                             "scored_members": int((scored & member).sum()),
                             "scored_nonmembers": int((scored & ~member).sum())})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv):
    del argv
    start = time.time()
    figures = {
        "choice_among_attacks": choice_among_attacks(),
        "null": null_rate(),
        "reference_rule": [row for seed in range(4) for row in reference_rule(seed=seed)],
        "command": " ".join(sys.argv),
    }
    figures["seconds"] = round(time.time() - start)
    if FLAGS.json:
        with open(FLAGS.json, "w") as file:
            json.dump(figures, file, indent=1)


if __name__ == "__main__":
    app.run(main)
