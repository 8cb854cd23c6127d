"""Reproduces a paper experiment in one command: train, query, attack (and optionally the notebooks).

    python experiments/reproduce.py --scale=cpu                          # exp/c10_cpu, ~90 minutes on 2 CPU cores
    python experiments/reproduce.py --scale=paper                        # CIFAR-10 WRN-28-2, a GPU
    python experiments/reproduce.py --scale=paper --experiment=cifar100 --num_shadows=256
    python experiments/reproduce.py --scale=cpu --dry_run                # print the commands only

--scale picks a preset of flags and --experiment the data set; the override flags below replace
single values of the preset. Every command is printed before it runs, so the printed lines are
the whole recipe and can be copied to run (or split over a job array) by hand.

Re-running the same command resumes: train.py and inference.py skip finished work themselves
(and train.py refuses a run directory made with other result-changing flags), and the attack
stage is skipped while report/metrics.json is newer than every logits file and was made with
the same attacks, targets and queries (--rerun_attack forces it).

Each stage runs as a subprocess of the stage script (experiments/train.py, inference.py,
attack.py) with explicit flags, not through lira.stages in-process, because:
- what runs is exactly what is printed, so the printed sequence is a faithful recipe;
- each script keeps its own checks and messages (flag validation, the refusal of a changed
  configuration, the attack names), with nothing re-implemented here;
- the three scripts define clashing absl flags (--logdir, --batch_size, --seed), so they cannot
  share one process's flag registry;
- each stage gets a fresh process: device memory held by training (compiled programs, the
  dataset on the device) is released before inference and the attacks.
The stages run with the repository root as their working folder, as the README's commands do,
so the presets' relative paths (../shared/data/..., exp/...) mean the same from anywhere;
relative paths given on the command line are taken from the folder reproduce.py is run in.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from lira import cli, config
from lira.attacks import protocol
from lira.run import layout, views

ROOT = Path(__file__).resolve().parents[1]
SCALES = ("cpu", "paper")
EXPERIMENTS = ("cifar10", "cifar100")
NOTEBOOK_PACKAGES = ("nbformat", "nbclient", "ipykernel", "jupyter_client")

# The training configuration of a preset (lira.config.Config); the recipe prints every one of its
# flags that has a value, so that the printed commands mean the same under other defaults. The
# cpu preset puts the papers' regime on 2 CPU cores in about 90 minutes: models that memorize
# their training half (LiRA's and RMIA's models reach 100% train accuracy) and 64 of them, enough
# for per-example variances. Chosen by a short sweep of 2 of the 64 models on the CIFAR-10 subset
# (docs/results/cifar10_cpu/README.md: accuracy on the models' own training examples, clean
# images, inference mode): with weight decay 5e-4, 40 epochs reached 95% (batch 64, mirror), 93%
# (batch 32, mirror) and 72% (batch 64, mirror and shifts); at batch 64 with mirror, weight decay
# 5e-5 gave 98.2% and none 97.3%; batch 128 92%. Smaller batches (more steps) and a little weight
# decay memorize best; mirror-only augmentation keeps test accuracy near 58% while the models
# still memorize. models_per_step is pinned to 1 because it changes results (it slices the
# checkpoints) and the backend's default differs on accelerators. eval_every=0: test accuracy
# once, after the last epoch; per epoch it would add ~10 minutes.
CPU_TRAIN = config.Config(
    config.DataConfig(dataset="npz:../shared/data/cifar10_6k.npz"),  # 5,170-example CIFAR-10 subset, offline
    config.ModelConfig(arch="cnn32", dtype="float32"),
    config.TrainingConfig(num_shadows=64, epochs=40, batch_size=32, lr=0.05, weight_decay=0.00005, momentum=0.9,
                          augment="mirror", pkeep=0.5, seed=0, models_per_step=1, eval_every=0),
)  # fmt: skip
# The LiRA paper's CIFAR setup (Carlini et al., "Membership Inference Attacks From First
# Principles", IEEE S&P 2022, and its code, tensorflow/privacy research/mi_lira_2021): WRN-28-2
# on the 50,000 CIFAR-10 train examples, each model on a random half (pkeep 0.5, balanced), SGD
# momentum 0.9, lr 0.1 with cosine decay, weight decay 5e-4, batch 256, mirror + 4-pixel shift
# augmentation, 100 epochs (scripts/train_demo.sh), about 91-92% test accuracy per model. The
# paper trains 256 models; 64 is the default here to keep one run within a day of one GPU, and
# --num_shadows=256 gives the paper's count. CIFAR-100 uses the same architecture and schedule.
PAPER_TRAIN = CPU_TRAIN.replace(  # the same optimizer, pkeep and seed
    dataset="cifar10", arch="wrn28-2", num_shadows=64, epochs=100, batch_size=256, lr=0.1, weight_decay=0.0005,
    augment="weak", models_per_step=0, eval_every=1, dtype=None,  # 0, None: the backend's defaults
)  # fmt: skip
# Queries: the views the models trained on (the inference stage's default, recorded in the run's
# config.json): image and mirror for the cpu preset (2 queries), and for the paper preset the
# paper's augmented-query setting, mirror x shifts in {-4, 0, 4}^2 (18 queries).
PRESETS = {
    "cpu": {"train": CPU_TRAIN, "logdir": "exp/c10_cpu", "attacks": "all", "num_targets": 8},
    "paper": {"train": PAPER_TRAIN, "logdir": "exp/paper_cifar10", "attacks": "all", "num_targets": 4},
}  # fmt: skip

FLAGS = flags.FLAGS
flags.DEFINE_string("scale", "cpu", f"Preset: {', '.join(SCALES)}.")
flags.DEFINE_string("experiment", "cifar10", f"What to reproduce: {', '.join(EXPERIMENTS)}.")
flags.DEFINE_bool("dry_run", False, "Print the commands without running them.")
flags.DEFINE_bool("notebooks", False, "After the attacks, execute notebooks/*.ipynb against the run.")
flags.DEFINE_string("figures", "docs/figures", "Where --notebooks saves the figures.")
flags.DEFINE_bool("rerun_attack", False, "Run the attack stage even if report/metrics.json is up to date.")
flags.DEFINE_bool("progress", True, "Show the stages' progress bars.")
# Overrides of single preset values (None: the preset's), their help from lira/config.py.
OVERRIDES = (
    "dataset",
    "data_dir",
    "pool_size",
    "arch",
    "num_shadows",
    "epochs",
    "batch_size",
    "models_per_step",
)
cli.define_flags(config.DataConfig, config.ModelConfig, config.TrainingConfig, names=OVERRIDES,
                 overrides=dict.fromkeys(OVERRIDES))  # fmt: skip
flags.adopt_module_key_flags(cli)  # --help lists the flags lira/cli.py defined for this script
flags.DEFINE_string("logdir", None, "Override the preset's run directory.")
flags.DEFINE_integer(
    "queries",
    None,
    f"Override the preset's queries (the views the models trained on): "
    f"{', '.join(map(str, config.QUERY_COUNTS))}, among the views of the preset's --augment.",
)
flags.DEFINE_bool(
    "allow_untrained_views", False, "Pass --allow_untrained_views to inference.py (with --queries)."
)
flags.DEFINE_list("attacks", None, "Override the preset's attacks (comma list or 'all').")
flags.DEFINE_integer("num_targets", None, "Override the preset's number of attacked targets.")


class Stage:
    """One step of the recipe: a printable command, run in ROOT."""

    def __init__(self, name: str, argv: list[str]):
        self.name, self.argv = name, argv

    def command(self) -> str:
        shown = [python_shown(), *self.argv[1:]] if self.argv[0] == sys.executable else self.argv
        return shlex.join(shown)


def python_shown() -> str:
    """The interpreter as a user would type it from the repository root."""
    try:
        return str(Path(sys.executable).relative_to(ROOT))
    except ValueError:
        return sys.executable


def from_cwd(path: str) -> str:
    """A path given on the command line, made to mean the same in ROOT (where stages run).

    Unchanged when reproduce.py runs in ROOT, so the flags a run directory records (--dataset
    is compared on re-runs) are exactly what the user typed."""
    if Path(os.getcwd()).resolve() == ROOT or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def settings(values: dict) -> dict:
    """The preset of values["scale"] and values["experiment"] with the overrides in `values`
    applied; raises ValueError naming a bad value and the valid ones, before any work."""
    scale, experiment = values["scale"], values["experiment"]
    if scale not in PRESETS:
        raise ValueError(f"--scale={scale!r} is not a preset; valid: {', '.join(SCALES)}.")
    if experiment not in EXPERIMENTS:
        raise ValueError(f"--experiment={experiment!r} is unknown; valid: {', '.join(EXPERIMENTS)}.")
    preset = PRESETS[scale]
    train = preset["train"].flat()
    logdir = preset["logdir"]
    if experiment == "cifar100":
        if scale == "cpu" and values.get("dataset") is None:
            raise ValueError(
                "--experiment=cifar100 has no cpu-scale data set (the cpu preset's offline data is a "
                "CIFAR-10 subset); run it with --scale=paper (CIFAR-100 via tfds), or give "
                "--dataset=npz:PATH of a CIFAR-100 subset."
            )
        train["dataset"] = "cifar100"
        logdir = "exp/paper_cifar100" if scale == "paper" else "exp/cpu_cifar100"
    for name in ("arch", "num_shadows", "epochs", "batch_size", "models_per_step"):
        if values.get(name) is not None:
            train[name] = values[name]
    if values.get("dataset") is not None:
        dataset = values["dataset"]
        train["dataset"] = "npz:" + from_cwd(dataset[4:]) if dataset.startswith("npz:") else dataset
    for name, path_like in (("pool_size", False), ("data_dir", True)):
        if values.get(name) is not None:
            train[name] = from_cwd(values[name]) if path_like else values[name]
    out = {
        "scale": scale,
        "experiment": experiment,
        "train": config.Config.from_flat(train),
        "logdir": from_cwd(values["logdir"]) if values.get("logdir") else logdir,
        "queries": values.get("queries") or None,  # None (or 0): the views the models trained on
        "allow_untrained_views": bool(values.get("allow_untrained_views")),
        "attacks": preset["attacks"] if values.get("attacks") is None else ",".join(values["attacks"]),
        "num_targets": preset["num_targets"] if values.get("num_targets") is None else values["num_targets"],
    }
    _check(out)
    return out


def _check(s: dict) -> None:
    """The stage scripts' own checks, run on the whole recipe before its first stage starts."""
    s["train"].validate()
    if s["queries"] is not None:  # image data assumed: a non-image --dataset is refused by inference.py
        config.QueryConfig(queries=s["queries"]).validate()
        views.resolve_queries(s["queries"], s["train"].training.augment, True, s["allow_untrained_views"])
    config.AttackConfig(num_targets=s["num_targets"]).validate()
    s["attack_names"] = protocol.check_attack_names(s["attacks"].split(","))


# The trainer's housekeeping (never the models), left out of the recipe at their defaults.
HOUSEKEEPING = ("eval_examples", "checkpoint_every", "steps_per_call")


def inert(train: config.Config) -> set[str]:
    """Flags the recipe leaves out because they change nothing: DP-SGD's without DP, no canaries,
    and the trainer's housekeeping at its defaults."""
    out = {"canaries"} if not train.data.canaries else set()
    defaults = config.TrainingConfig()
    out |= {name for name in HOUSEKEEPING if getattr(train.training, name) == getattr(defaults, name)}
    if not train.training.dp:
        out |= {f.name for f in dataclasses.fields(config.TrainingConfig) if f.name.startswith("dp_")}
    return out


def stages(s: dict, notebooks: bool, figures: str, progress: bool) -> list[Stage]:
    """The commands of the recipe, in order."""
    logdir = s["logdir"]
    script = lambda name: f"experiments/{name}.py"
    bars = [] if progress else ["--progress=false"]
    queries = [] if s["queries"] is None else [f"--queries={s['queries']}"]
    queries += ["--allow_untrained_views"] if s["allow_untrained_views"] else []
    train = [
        f"--{k}={v}" for k, v in s["train"].flat().items() if v is not None and k not in inert(s["train"])
    ]
    out = [
        Stage("train", [sys.executable, script("train"), *train, f"--logdir={logdir}", *bars]),
        Stage("inference", [sys.executable, script("inference"), f"--logdir={logdir}", *queries, *bars]),
        Stage("attack", [sys.executable, script("attack"), f"--logdir={logdir}", f"--attacks={s['attacks']}",
                         f"--num_targets={s['num_targets']}"]),
    ]  # fmt: skip
    names = [  # dp_audit reads a sweep of runs (experiments/dp_audit.py), not this one run
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
        if path.stem != "dp_audit"
    ]
    if notebooks and names:
        out.append(Stage("notebooks", [sys.executable, script("notebooks"), f"--logdir={logdir}",
                                       f"--figures={figures}", "--write", *names]))  # fmt: skip
    return out


def attack_is_current(s: dict) -> str | None:
    """Why the attack stage can be skipped (report/metrics.json is newer than every logits file
    and made with these attacks, targets, queries and models), or None if it must run."""
    logdir = Path(s["logdir"]) if os.path.isabs(s["logdir"]) else ROOT / s["logdir"]
    path = logdir / layout.REPORT_DIR / layout.METRICS
    logits = list((logdir / layout.LOGITS_DIR).glob("*.npy"))
    if not path.is_file() or not logits:
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    num_models = s["train"].training.num_shadows
    expected = {
        "num_models": num_models,
        "num_targets": min(s["num_targets"], num_models),
        "attacks": sorted(s["attack_names"]),
        "num_shadows_used": None,
    }
    found = {**{k: metrics.get(k) for k in expected}, "attacks": sorted(metrics.get("attacks", {}))}
    queries = s["queries"] or np.load(logits[0], mmap_mode="r").shape[1]  # default: what inference made
    if found != expected or metrics.get("num_queries") != queries:
        return None
    if len(logits) < num_models or path.stat().st_mtime < max(p.stat().st_mtime for p in logits):
        return None
    return f"{path} is newer than every logits file and made with these settings"


def check_notebooks() -> None:
    missing = [m for m in NOTEBOOK_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"--notebooks needs {', '.join(missing)}: pip install {' '.join(missing)} (or run without --notebooks)."
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    names = [
        "scale",
        "experiment",
        *OVERRIDES,
        "logdir",
        "queries",
        "allow_untrained_views",
        "attacks",
        "num_targets",
    ]
    s = settings(
        {name: FLAGS[name].value for name in names}
    )  # a bad value: one line, exit status 2 (lira.cli)
    if FLAGS.notebooks:
        check_notebooks()
    figures = from_cwd(FLAGS.figures) if FLAGS["figures"].present else FLAGS.figures  # default: in ROOT
    recipe = stages(s, FLAGS.notebooks, figures, FLAGS.progress)
    print(
        f"# reproduce --scale={s['scale']} --experiment={s['experiment']}: {len(recipe)} stages, run in {ROOT}"
    )
    if s["queries"] is None:
        kind = s["train"].training.augment
        print(f"# inference queries the views the models trained on: --augment={kind}, "
              f"{views.DEFAULT_QUERIES[kind]} queries (1 on non-image data)")  # fmt: skip
    if Path(os.getcwd()).resolve() != ROOT:
        print(f"cd {shlex.quote(str(ROOT))}")
    if FLAGS.notebooks and not any(stage.name == "notebooks" for stage in recipe):
        print(f"# --notebooks: no notebooks in {ROOT / 'notebooks'}; nothing to execute after the attacks.")
    for stage in recipe:
        if FLAGS.dry_run:
            print(stage.command())
            continue
        if stage.name == "attack" and not FLAGS.rerun_attack:
            reason = attack_is_current(s)
            if reason:
                print(f"# skip attack: {reason} (--rerun_attack to redo it)\n# {stage.command()}", flush=True)
                continue
        print(f"\n# {stage.name}\n{stage.command()}", flush=True)
        result = subprocess.run(stage.argv, cwd=ROOT)
        if result.returncode != 0:
            print(
                f"reproduce: the {stage.name} stage failed (exit {result.returncode}); finished work is "
                "kept, so re-run the same reproduce command once the cause is fixed.",
                file=sys.stderr,
            )
            return result.returncode
    if not FLAGS.dry_run:
        print(f"\n# done: {s['logdir']} (report: {Path(s['logdir']) / 'report' / 'report.md'})")
    return 0


if __name__ == "__main__":
    cli.run(main)
