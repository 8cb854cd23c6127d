"""Trains shadow models, vectorized over a model axis (lira.stages.train).

    python experiments/train.py --arch=wrn28 --num_shadows=64          # CIFAR-10 via tfds
    python experiments/train.py --dataset=digits --arch=cnn32 --epochs=20 --logdir=exp/demo

Re-running the same command resumes an interrupted run; --shadow_ids=START:STOP trains one
slice of the models, so a job array can split the work across machines. The hyperparameters'
flags come from lira/config.py (DataConfig, ModelConfig, TrainingConfig).
"""

import jax
from absl import flags

from lira import cli, config
from lira.stages import train

FLAGS = flags.FLAGS
cli.define_flags(config.DataConfig, config.ModelConfig, config.TrainingConfig)
flags.adopt_module_key_flags(cli)  # --help lists the flags lira/cli.py defined for this script
flags.DEFINE_string("logdir", None, "Run directory (default exp/<dataset>_<arch>).")
flags.DEFINE_string("shadow_ids", None, "Train only models START:STOP of the M (default all).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool(
    "distributed", False, "Multi-process JAX: each process trains its share of the models (SLURM/TPU: auto-detected)."
)  # fmt: skip
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for --distributed without SLURM/TPU."
)
flags.DEFINE_integer("num_processes", None, "Number of processes, for --distributed without SLURM/TPU.")
flags.DEFINE_integer("process_id", None, "This process's index, for --distributed without SLURM/TPU.")


def main(argv):
    del argv
    run_config = config.Config(
        cli.section(config.DataConfig), cli.section(config.ModelConfig), cli.section(config.TrainingConfig)
    )
    run_config.validate()  # before JAX starts its distributed runtime
    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    dataset_name = run_config.data.dataset.replace("npz:", "").split("/")[-1].removesuffix(".npz")
    logdir = FLAGS.logdir or f"exp/{dataset_name}_{run_config.model.arch}"
    train.train(logdir, run_config, FLAGS.shadow_ids, FLAGS.progress)
    arch = run_config.model.arch  # your own model's code is imported only where a command names it again
    own = f" --arch={arch}" if ":" in arch else ""
    print(f"Trained models are in {logdir}; next: python experiments/inference.py --logdir={logdir}{own}")


if __name__ == "__main__":
    cli.run(main)
