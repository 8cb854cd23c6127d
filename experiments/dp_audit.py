"""The DP audit sweep behind notebooks/dp_audit.ipynb: the same shadow models trained ordinarily
and with DP-SGD at each noise multiplier, each with the same mislabelled canaries, queried and
attacked, every run in its own folder under --root (noise_none, noise_0.5, ...).

    python experiments/dp_audit.py --root=exp/dp_mnist --noise=none,0.5,1,2 \
        --dataset=npz:../shared/data/mnist.npz --pool_size=1000 --canaries=100 --arch=cnn32 \
        --num_shadows=8 --epochs=10 --batch_size=64 --lr=0.1 --augment=none --eval_every=0
    python experiments/notebooks.py --logdir=exp/dp_mnist --write notebooks/dp_audit.ipynb

Every stage resumes, so re-running the command finishes an interrupted sweep. The training
flags are those of experiments/train.py (lira/config.py) and apply to every run; --noise
replaces --dp_noise_multiplier run by run ("none": ordinary training). Each run's privacy audit
bounds --audit_attacks (default: every attack of --attacks, with a Bonferroni factor of their
number; name one in advance for the tightest bound; docs/dp.md).
"""

from pathlib import Path

from absl import flags

from lira import cli, config
from lira.stages import attack, query, train

FLAGS = flags.FLAGS
cli.define_flags(config.DataConfig, config.ModelConfig, config.TrainingConfig)
flags.adopt_module_key_flags(cli)  # --help lists the flags lira/cli.py defined for this script
flags.DEFINE_string("root", None, "Folder of the sweep's runs.", required=True)
flags.DEFINE_list("noise", ["none", "0.5", "1", "2"], "Noise multipliers, 'none' for ordinary training.")
flags.DEFINE_list("attacks", ["loss", "lira_online", "lira_online_fixed_var", "lira_offline", "rmia_online"],
                  "Attacks run on every model of the sweep.")  # fmt: skip
flags.DEFINE_list("audit_attacks", [], "Attacks the privacy audit bounds (default: all of --attacks).")
flags.DEFINE_integer("num_targets", 8, "Targets attacked per run.")
flags.DEFINE_bool("progress", True, "Show progress bars.")


def noise_levels(values: list[str]) -> list[float | None]:
    try:
        return [None if value == "none" else float(value) for value in values]
    except ValueError:
        raise ValueError(f"--noise={','.join(values)}: give numbers >= 0 or 'none'.") from None


def main(argv):
    del argv
    base = config.Config(
        cli.section(config.DataConfig), cli.section(config.ModelConfig), cli.section(config.TrainingConfig)
    )
    runs = [
        (noise, base.replace(dp_noise_multiplier=noise, dp_target_epsilon=None))
        for noise in noise_levels(FLAGS.noise)
    ]
    options = config.AttackConfig(
        attacks=FLAGS.attacks, num_targets=FLAGS.num_targets, bootstrap=0, audit_attacks=FLAGS.audit_attacks
    )
    for _, run_config in runs:  # every flag checked before anything trains
        train.resolve(run_config)
    options.validate()
    for noise, run_config in runs:
        logdir = Path(FLAGS.root) / f"noise_{'none' if noise is None else f'{noise:g}'}"
        train.train(logdir, run_config, progress=FLAGS.progress)
        query_config = config.QueryConfig(queries=1, arch=run_config.model.arch)  # this command names it
        query.query(logdir, query_config, progress=FLAGS.progress)
        attack.attack(logdir, options)
        print(f"{logdir}: done")


if __name__ == "__main__":
    cli.run(main)
