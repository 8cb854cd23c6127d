"""Does white-box add anything? The white-box attacks against the best black-box attack on one run
(lira.studies.whitebox_comparison), written to report/whitebox.md.

    python experiments/inference.py --logdir=exp/c10_cpu --whitebox --whitebox_queries=2
    python experiments/whitebox.py --logdir=exp/c10_cpu --num_targets=8

Every attack sees the same targets, references (all other models, equal IN/OUT counts) and
queries: the black-box attacks the logits of the views the white-box signals were computed on.
"""

from pathlib import Path

from absl import flags

from lira import cli, notebook, studies
from lira.report import tables
from lira.run import layout

FLAGS = flags.FLAGS
flags.DEFINE_string("logdir", None, "Run directory with logits and white-box signals.", required=True)
flags.DEFINE_integer("num_targets", 8, "Models 0..T-1 are attacked in turn.")
flags.DEFINE_integer("bootstrap", 1000, "Paired bootstrap resamples.")
flags.DEFINE_float("level", 1e-3, "The FPR at which the best black-box attack is chosen and TPRs compared.")
flags.DEFINE_integer("seed", 0, "Seed of the reference order and the bootstrap.")


def main(argv):
    del argv
    if FLAGS.num_targets < 1 or FLAGS.bootstrap < 1 or not 0 < FLAGS.level < 1:
        raise ValueError(f"--num_targets and --bootstrap must be >= 1 and --level in (0, 1); got "
                         f"{FLAGS.num_targets}, {FLAGS.bootstrap}, {FLAGS.level}.")  # fmt: skip
    run = notebook.load_run(FLAGS.logdir, whitebox=True)
    metrics, rows = studies.whitebox_comparison(
        run, FLAGS.num_targets, FLAGS.level, FLAGS.bootstrap, FLAGS.seed
    )
    queries = run.record.whitebox["queries"]
    text = "\n\n".join([
        f"{studies.describe(run)}; {metrics['num_targets']} targets, the {queries} white-box queries for every attack.",
        tables.tpr_table(metrics),
        tables.paired_table(rows),
    ]) + "\n"  # fmt: skip
    layout.save_text(Path(run.logdir) / layout.REPORT_DIR / "whitebox.md", text)
    print(text)


if __name__ == "__main__":
    cli.run(main)
