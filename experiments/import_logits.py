"""Writes a run directory from logits of models trained elsewhere (lira.run.importer), for the
attack stage and the notebooks.

    python experiments/import_logits.py --logits=logits.npy --keep=keep.npy --labels=labels.npy \
        --logdir=exp/mine --description="16 ResNet-18 trained in PyTorch, half of CIFAR-10 each"

--logits: [M, N, C] or [M, N, Q, C] (Q augmented views of each example) in a .npy or .npz file,
or a folder of per-model .npy files [N, C] / [N, Q, C] numbered 0..M-1 in their names; --keep:
bool [M, N], model m trained on example n; --labels: int [N]. Pickles are never loaded.
What is written: lira/run/importer.py, and config.json's schema in docs/run_directory.schema.json.
"""

from absl import flags

from lira import cli
from lira.run import importer

FLAGS = flags.FLAGS
flags.DEFINE_string("logits", None, "Logits [M, N, (Q,) C]: .npy, .npz (entry 'logits') or a folder of per-model .npy.",
                    required=True)  # fmt: skip
flags.DEFINE_string(
    "keep", None, "Membership [M, N] (bool or 0/1): .npy or .npz (entry 'keep').", required=True
)
flags.DEFINE_string(
    "labels", None, "Labels [N] (int in [0, C)): .npy or .npz (entry 'labels').", required=True
)
flags.DEFINE_string("logdir", None, "The run directory to write (new or empty).", required=True)
flags.DEFINE_string(
    "description", None, "What the models are (architecture, training, data): recorded and reported."
)
flags.DEFINE_string("data_name", None, "The dataset's name, for the report.")
flags.DEFINE_bool("binary_logit", False, "Logits [..., 1] are one binary classifier's logit z: use [0, z].")
flags.DEFINE_bool("from_probabilities", False, "The logits are softmax probabilities: use their logarithms.")


def main(argv):
    del argv
    record = importer.import_run(
        FLAGS.logdir, importer.read_array(FLAGS.logits, "logits"), importer.read_array(FLAGS.keep, "keep"),
        importer.read_array(FLAGS.labels, "labels"), description=FLAGS.description, data_name=FLAGS.data_name,
        binary_logit=FLAGS.binary_logit, from_probabilities=FLAGS.from_probabilities,
    )  # fmt: skip
    data = record.data
    print(f"Imported {record.models['count']} models x {data['num_examples']} examples x "
          f"{record.queries} queries x {data['num_classes']} classes into {FLAGS.logdir}; next: "
          f"python experiments/attack.py --logdir={FLAGS.logdir}")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
