"""Trains shadow models, vectorized over a model axis.

    python experiments/train.py --arch=wrn28 --num_shadows=64          # CIFAR-10 via tfds
    python experiments/train.py --dataset=digits --arch=cnn32 --epochs=20 --logdir=exp/demo

Re-running the same command resumes an interrupted run; --shadow_ids=START:STOP trains one
slice of the models, so a job array can split the work across machines.
"""

import jax
from absl import app, flags

from lira import augment, pipeline
from lira.models import available_archs

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "dataset",
    "cifar10",
    "tfds name (cifar10, cifar100, svhn_cropped, mnist, fashion_mnist), npz:PATH or digits.",
)
flags.DEFINE_string("data_dir", None, "tfds data_dir where the dataset is prepared.")
flags.DEFINE_integer("pool_size", None, "Use only the first n train examples as the audit pool.")
flags.DEFINE_string("arch", "wrn28-2", f"Model: {', '.join(available_archs())}.")
flags.DEFINE_integer("num_shadows", 16, "M: how many models in all (targets and shadows).")
flags.DEFINE_float("pkeep", 0.5, "Fraction of models that train on each example.")
flags.DEFINE_integer("epochs", 100, "Training epochs per model.")
flags.DEFINE_integer("batch_size", 256, "Minibatch size per model.")
flags.DEFINE_float("lr", 0.1, "Peak learning rate (linear warm-up, then cosine decay).")
flags.DEFINE_float("warmup_epochs", 1.0, "Epochs of linear learning-rate warm-up.")
flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay on kernels.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_enum(
    "augment", "weak", augment.AUGMENTS, "Training augmentation: none, mirror, or weak (mirror + shift 4)."
)
flags.DEFINE_integer(
    "seed", 0, "Root seed: masks, initialisation, data order and augmentation derive from it."
)
flags.DEFINE_string("logdir", None, "Run directory (default exp/<dataset>_<arch>).")
flags.DEFINE_string("shadow_ids", None, "Train only models START:STOP of the M (default all).")
flags.DEFINE_integer("models_per_step", 0, "Models one compiled step advances (0: the backend's default).")
flags.DEFINE_enum(
    "conv_impl", None, ["xla", "im2col"], "Convolution lowering (default: fastest on the backend)."
)
flags.DEFINE_integer("eval_every", 1, "Measure test accuracy every this many epochs (0: only at the end).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process JAX: each process trains its share of the models (SLURM/TPU: auto-detected).",
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for --distributed without SLURM/TPU."
)
flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed without SLURM/TPU.")
flags.DEFINE_integer("process_id", None, "This process's index, for --distributed without SLURM/TPU.")


def main(argv):
    del argv
    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    names = [
        "dataset", "data_dir", "pool_size", "arch", "num_shadows", "pkeep", "epochs", "batch_size", "lr",
        "warmup_epochs", "weight_decay", "momentum", "augment", "seed", "shadow_ids", "models_per_step",
        "conv_impl", "eval_every", "progress",
    ]  # fmt: skip
    values = {name: FLAGS[name].value for name in names}
    dataset_name = values["dataset"].replace("npz:", "").split("/")[-1].removesuffix(".npz")
    logdir = FLAGS.logdir or f"exp/{dataset_name}_{values['arch']}"
    pipeline.train(pipeline.TrainSettings(logdir=logdir, **values))
    print(f"Trained models are in {logdir}; next: python experiments/inference.py --logdir={logdir}")


if __name__ == "__main__":
    app.run(main)
