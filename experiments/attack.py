"""Runs the membership-inference attacks on a run directory and writes report/
(lira.stages.attack).

    python experiments/attack.py --logdir=exp/cifar10_wrn28-2
    python experiments/attack.py --logdir=exp/demo --attacks=lira_online,rmia_offline --num_shadows_used=16

Each of the first --num_targets models is attacked in turn with all other models as its
references (leave-one-out). Writes report/metrics.json, report/scores/NAME.npy (float [T, N]),
and the plots and tables of lira.report. The flags come from lira/config.py (AttackConfig) and,
for the attacks' options, from the attacks that declare them (lira.attacks.option_flags).
"""

from pathlib import Path

from absl import flags

from lira import cli, config, report
from lira.run import layout
from lira.stages import attack

FLAGS = flags.FLAGS
cli.define_flags(config.AttackConfig)
cli.define_attack_flags()
flags.adopt_module_key_flags(cli)  # --help lists the flags lira/cli.py defined, not only --logdir
flags.DEFINE_string(
    "logdir", None, "Run directory with logits (after experiments/inference.py).", required=True
)
flags.DEFINE_bool("progress", True, "Show a progress bar over the attacks and a line as each finishes.")


def main(argv):
    del argv
    metrics = attack.attack(FLAGS.logdir, cli.section(config.AttackConfig), FLAGS.progress)
    print(report.format_table(metrics))
    print(f"Log-scale ROC curves: {Path(FLAGS.logdir) / layout.REPORT_DIR / 'roc_log.png'}")


if __name__ == "__main__":
    cli.run(main)
