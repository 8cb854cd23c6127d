"""Queries every trained model on the audit pool and writes logits/NNNNN.npy [N, Q, C].

    python experiments/inference.py --logdir=exp/demo --queries=18

Queries: 1 = the image, 2 = image and mirror, 18 = mirror x shifts in {-4, 0, 4}^2,
162 = mirror x shifts in {-4..4}^2 (reflect padding). Non-image data has 1 query.
"""

from absl import app, flags

from lira import augment, pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("logdir", None, "Run directory written by experiments/train.py.", required=True)
flags.DEFINE_integer(
    "queries", 2, f"Augmented queries per example: {', '.join(map(str, augment.QUERY_COUNTS))}."
)
flags.DEFINE_integer("batch_size", 256, "Images (examples x queries) per model in one inference call.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    del argv
    written = pipeline.inference(FLAGS.logdir, FLAGS.queries, FLAGS.batch_size, FLAGS.progress)
    print(f"Wrote logits of {len(written)} models to {FLAGS.logdir}/logits; next: "
          f"python experiments/attack.py --logdir={FLAGS.logdir}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
