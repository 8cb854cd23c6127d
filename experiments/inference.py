"""Queries every trained model on the audit pool and writes logits/NNNNN.npy [N, Q, C]
(lira.stages.query).

    python experiments/inference.py --logdir=exp/demo               # the views the models trained on
    python experiments/inference.py --logdir=exp/demo --queries=1   # the image alone
    python experiments/inference.py --logdir=exp/demo --whitebox    # + gradient norms and activations
    python experiments/inference.py --logdir=exp/mine --arch=my_models:my_net   # a run of your own model

Queries: 1 = the image, 2 = image and mirror, 18 = mirror x shifts in {-4, 0, 4}^2,
162 = mirror x shifts in {-4..4}^2 (reflect padding). The default (0) follows the run's
--augment: none 1, mirror 2, weak 18; non-image data has 1 query. A count with views the models
never trained on is refused unless --allow_untrained_views. A run of your own model
(--arch=module:factory) is queried only when --arch names it again: lira never imports code
because a run directory's config.json names it.
"""

from absl import flags

from lira import cli, config
from lira.run import records
from lira.stages import query

FLAGS = flags.FLAGS
cli.define_flags(config.QueryConfig)
flags.adopt_module_key_flags(cli)  # --help lists the flags lira/cli.py defined for this script
flags.DEFINE_string("logdir", None, "Run directory written by experiments/train.py.", required=True)
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    del argv
    written = query.query(FLAGS.logdir, cli.section(config.QueryConfig), FLAGS.progress)
    queries = records.load_record(FLAGS.logdir).queries  # as resolved and recorded by the stage
    per_example = f" ({queries} queries per example)" if queries else ""
    print(f"Wrote logits of {len(written)} models{per_example} to {FLAGS.logdir}/logits; next: "
          f"python experiments/attack.py --logdir={FLAGS.logdir}")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
