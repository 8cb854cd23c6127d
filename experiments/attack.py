"""Runs the membership-inference attacks on a run directory and writes report/.

    python experiments/attack.py --logdir=exp/cifar10_wrn28-2
    python experiments/attack.py --logdir=exp/demo --attacks=lira_online,rmia_offline --num_shadows_used=16

Each of the first --num_targets models is attacked in turn with all other models as its
references (leave-one-out). Writes report/metrics.json, report/scores/NAME.npy (float [T, N]),
and the plots and tables of lira.report.
"""

from pathlib import Path

import numpy as np
from absl import app, flags

from lira import audit, report, rundir
from lira.attacks import ATTACKS, lira_attacks, rmia, shokri

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "logdir", None, "Run directory with logits (after experiments/inference.py).", required=True
)
flags.DEFINE_list("attacks", ["all"], f"Comma-separated attacks, or 'all': {', '.join(ATTACKS)}.")
flags.DEFINE_integer(
    "num_targets", 4, "Models 0..T-1 are attacked in turn (clamped to the number of models)."
)
flags.DEFINE_integer(
    "num_shadows_used",
    None,
    "Use only K references per target (offline attacks: K OUT references per example).",
)
flags.DEFINE_float("rmia_gamma", rmia.DEFAULT_GAMMA, "RMIA: LR(x) / LR(z) threshold.")
flags.DEFINE_string(
    "rmia_offline_a", str(rmia.DEFAULT_OFFLINE_A),
    "RMIA offline: a in p = ((1 + a) p_out + (1 - a)) / 2, in [0, 1], or 'auto' (fitted from the references).",
)  # fmt: skip
flags.DEFINE_integer(
    "rmia_num_population",
    0,
    "RMIA: population examples z (0 = every non-member of the target, as the authors).",
)
flags.DEFINE_enum(
    "rmia_signal", "taylor", ["taylor", "softmax"], "RMIA: the authors' Taylor soft-margin or p_y."
)
flags.DEFINE_float("rmia_temperature", 2.0, "RMIA: logits are divided by this before the signal.")
flags.DEFINE_float("rmia_margin", 0.6, "RMIA: the Taylor signal's soft margin m.")
flags.DEFINE_integer("rmia_terms", 4, "RMIA: terms of the truncated exponential (4: a cubic).")
flags.DEFINE_float(
    "rmia_trim", rmia.DEFAULT_TRIM, "RMIA: fraction trimmed from each end of the reference mean."
)
flags.DEFINE_enum(
    "rmia_aggregation",
    "vote",
    list(rmia.AGGREGATIONS),
    "RMIA: a test per query and a majority vote, or p averaged over queries.",
)
flags.DEFINE_enum(
    "lira_likelihood",
    "gaussian",
    list(lira_attacks.LIKELIHOODS),
    "The four LiRA attacks: the paper's Gaussian or the Student-t predictive.",
)
flags.DEFINE_enum(
    "shokri_classifier", shokri.DEFAULT_CLASSIFIER, sorted(shokri.CLASSIFIERS), "Shokri attack model."
)
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for the 95% intervals (0 = none).")
flags.DEFINE_integer("seed", 0, "Seed of the reference order, subsamples and bootstrap.")


def offline_a() -> float | str:
    if FLAGS.rmia_offline_a == "auto":
        return "auto"
    try:
        value = float(FLAGS.rmia_offline_a)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise app.UsageError(f"--rmia_offline_a={FLAGS.rmia_offline_a}: give a number in [0, 1] or 'auto'.")
    return value


def attack_options() -> dict[str, dict]:
    rmia_options = {
        "gamma": FLAGS.rmia_gamma, "num_population": FLAGS.rmia_num_population or None, "trim": FLAGS.rmia_trim,
        "aggregation": FLAGS.rmia_aggregation, "signal": FLAGS.rmia_signal, "temperature": FLAGS.rmia_temperature,
        "margin": FLAGS.rmia_margin, "terms": FLAGS.rmia_terms,
    }  # fmt: skip
    lira_options = {"likelihood": FLAGS.lira_likelihood}
    return {
        "rmia_online": rmia_options,
        "rmia_offline": {**rmia_options, "offline_a": offline_a()},
        "shokri": {"classifier": FLAGS.shokri_classifier},
        **{
            name: lira_options
            for name in ("lira_online", "lira_online_fixed_var", "lira_offline", "lira_offline_fixed_var")
        },
    }


def check_flags() -> list[str]:
    """Flag errors, before any work."""
    try:
        attacks = audit.check_attack_names(FLAGS.attacks)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    if FLAGS.num_targets < 1 or FLAGS.bootstrap < 0 or FLAGS.rmia_num_population < 0:
        raise app.UsageError("--num_targets must be >= 1; --bootstrap and --rmia_num_population >= 0.")
    if not FLAGS.rmia_gamma > 0 or not 0 <= FLAGS.rmia_trim < 0.5:
        raise app.UsageError(
            f"--rmia_gamma={FLAGS.rmia_gamma} must be > 0 and --rmia_trim={FLAGS.rmia_trim} in [0, 0.5)."
        )
    if not FLAGS.rmia_temperature > 0 or FLAGS.rmia_terms < 1:
        raise app.UsageError(
            f"--rmia_temperature={FLAGS.rmia_temperature} must be > 0 and --rmia_terms={FLAGS.rmia_terms} >= 1."
        )
    offline_a()
    return attacks


def load_images(config: dict) -> np.ndarray | None:
    """The pool's images for the report, or None: a missing dataset must not stop the report."""
    try:
        from lira import data

        run_flags = config.get("flags", {})
        return data.load_raw_images(
            run_flags["dataset"], run_flags.get("data_dir"), run_flags.get("pool_size")
        )
    except Exception as error:  # any failure here costs only the image grid
        print(f"No images for the report ({type(error).__name__}: {error}).")
        return None


def main(argv):
    del argv
    attacks = check_flags()
    logdir = Path(FLAGS.logdir)
    metrics, results = audit.run_audit(
        logdir,
        attacks,
        num_targets=FLAGS.num_targets,
        num_shadows_used=FLAGS.num_shadows_used,
        seed=FLAGS.seed,
        bootstrap=FLAGS.bootstrap,
        attack_options=attack_options(),
    )
    report_dir = logdir / rundir.REPORT_DIR
    rundir.save_json(report_dir / "metrics.json", metrics)
    for name, result in results.items():
        rundir.save_npy(report_dir / "scores" / f"{name}.npy", result.scores)
    config = rundir.load_config(logdir)
    report.write_report(
        report_dir,
        results,
        metrics,
        labels=rundir.load_labels(logdir),
        keep=rundir.load_keep(logdir),
        config=config,
        train_log=rundir.read_jsonl(logdir / rundir.TRAIN_LOG),
        images=load_images(config),
    )
    print(report.format_table(metrics))
    print(f"Log-scale ROC curves: {report_dir / 'roc_log.png'}")


if __name__ == "__main__":
    app.run(main)
