"""Checks the LiRA and RMIA papers' findings on a run directory, one paired verdict each.

    python experiments/findings.py --logdir=exp/c10_cpu --num_targets=8

Prints the markdown table of lira.findings (finding, paper figure, our TPRs, the paired 95%
intervals of the TPR and AUC differences, reproduced or not; the RMIA-vs-LiRA rows at K = 1, 2,
4 and all references, at the finest of 0.1% and 1% FPR the run resolves) and writes it to
report/findings.md. Results: docs/results/findings.
"""

from pathlib import Path

from absl import flags

from lira import cli, findings, notebook, studies
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "logdir", None, "Run directory with logits (after experiments/inference.py).", required=True
)
flags.DEFINE_integer("num_targets", 8, "Models 0..T-1 are attacked in turn.")
flags.DEFINE_integer("bootstrap", 1000, "Paired bootstrap resamples.")
flags.DEFINE_integer("seed", 0, "Seed of the reference order and the bootstrap.")


def main(argv):
    del argv
    if FLAGS.num_targets < 1 or FLAGS.bootstrap < 1:
        raise ValueError(f"--num_targets={FLAGS.num_targets} and --bootstrap={FLAGS.bootstrap} must be >= 1.")
    run = notebook.load_run(FLAGS.logdir)  # a missing run: one line, exit status 2 (lira.cli)
    rows = findings.check(run, FLAGS.num_targets, num_resamples=FLAGS.bootstrap, seed=FLAGS.seed)
    text = f"{studies.describe(run)}; {min(FLAGS.num_targets, run.num_models)} targets.\n\n{findings.table(rows, run)}\n"
    layout.save_text(Path(run.logdir) / layout.REPORT_DIR / "findings.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    cli.run(main)
