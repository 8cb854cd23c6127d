"""experiments/reproduce.py: the printed recipe of each preset, flag checks, and a tiny real run
through all stages that a second invocation skips."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# The flags of the committed CPU reproduction (docs/results/cifar10_cpu/config.json), which
# --scale=cpu must repeat exactly.
CPU_TRAIN_FLAGS = [
    "--dataset=npz:../shared/data/cifar10_6k.npz", "--arch=cnn32", "--dtype=float32", "--num_shadows=64", "--pkeep=0.5",
    "--epochs=40", "--batch_size=32", "--lr=0.05", "--warmup_epochs=1.0", "--weight_decay=5e-05",
    "--momentum=0.9", "--augment=mirror", "--seed=0", "--models_per_step=1", "--eval_every=0",
]  # fmt: skip
C10_6K_CONFIG = {
    "dataset": "npz:../shared/data/cifar10_6k.npz", "pool_size": None, "arch": "cnn32", "dtype": "float32", "num_shadows": 64,
    "pkeep": 0.5, "epochs": 40, "batch_size": 32, "lr": 0.05, "weight_decay": 5e-05, "momentum": 0.9,
    "warmup_epochs": 1.0, "augment": "mirror", "seed": 0, "models_per_step": 1,
}  # fmt: skip
COMMITTED_CONFIG = ROOT / "docs" / "results" / "cifar10_cpu" / "config.json"
TINY = [
    "--dataset=digits", "--pool_size=64", "--arch=mlp-tiny", "--num_shadows=6", "--epochs=2",
    "--batch_size=16", "--models_per_step=6", "--num_targets=2", "--progress=false",
]  # fmt: skip


def reproduce(*args, check=True):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "reproduce.py"), *args],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def commands(stdout):
    """{script: its flags} of the printed commands (the lines that start with the interpreter)."""
    python = Path(sys.executable)
    shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else sys.executable
    out = {}
    for line in stdout.splitlines():
        if line.startswith(shown + " "):
            words = shlex.split(line)
            out[Path(words[1]).name if words[1] != "-c" else words[2]] = words[2:]
    return out


def recorded(train_flags):
    """The result-changing fields that train.py records for these flags, typed as in config.json;
    the recipe leaves out the inert ones (DP-SGD's without DP, no canaries), which stay at their
    defaults."""
    from lira.config import result_fields

    given = dict(flag[2:].split("=", 1) for flag in train_flags)
    inert = {k for k in result_fields() if k.startswith("dp_") or k == "canaries"} - set(given)
    return {
        k: type(C10_6K_CONFIG[k])(given[k]) if k in given else None for k in result_fields() if k not in inert
    }


def test_cpu_dry_run_is_the_committed_reproduction():
    result = reproduce("--scale=cpu", "--dry_run")
    cmds = commands(result.stdout)
    assert list(cmds) == ["train.py", "inference.py", "attack.py"]
    assert cmds["train.py"] == [*CPU_TRAIN_FLAGS, "--logdir=exp/c10_cpu"]
    assert cmds["inference.py"] == ["--logdir=exp/c10_cpu"]  # the views the models trained on
    assert "# inference queries the views the models trained on: --augment=mirror, 2 queries" in result.stdout
    assert cmds["attack.py"] == ["--logdir=exp/c10_cpu", "--attacks=all", "--num_targets=8"]
    # Every result-changing flag equals the committed run's, so the preset is what made it.
    assert (
        recorded([f for f in cmds["train.py"] if not f.startswith(("--logdir", "--eval_every"))])
        == C10_6K_CONFIG
    )
    if COMMITTED_CONFIG.exists():
        run_flags = {
            "dtype": "float32",
            **json.loads(COMMITTED_CONFIG.read_text())["flags"],
        }  # float32 before --dtype
        assert {k: run_flags.get(k) for k in C10_6K_CONFIG} == C10_6K_CONFIG


@pytest.mark.slow
def test_paper_dry_run_and_overrides():
    result = reproduce("--scale=paper", "--dry_run", "--num_shadows=256", "--notebooks")
    cmds = commands(result.stdout)
    assert cmds["train.py"] == [
        "--dataset=cifar10", "--arch=wrn28-2", "--num_shadows=256", "--pkeep=0.5", "--epochs=100",
        "--batch_size=256", "--lr=0.1", "--warmup_epochs=1.0", "--weight_decay=0.0005", "--momentum=0.9",
        "--augment=weak", "--seed=0", "--models_per_step=0", "--eval_every=1", "--logdir=exp/paper_cifar10",
    ]  # fmt: skip
    assert cmds["inference.py"] == ["--logdir=exp/paper_cifar10"]
    assert "# inference queries the views the models trained on: --augment=weak, 18 queries" in result.stdout
    assert cmds["attack.py"] == ["--logdir=exp/paper_cifar10", "--attacks=all", "--num_targets=4"]
    # Every notebook of one run; dp_audit reads a sweep of runs (experiments/dp_audit.py).
    notebooks = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb") if p.stem != "dp_audit"
    )
    assert cmds["notebooks.py"] == [
        "--logdir=exp/paper_cifar10",
        "--figures=docs/figures",
        "--write",
        *notebooks,
    ]

    result = reproduce("--scale=paper", "--experiment=cifar100", "--dry_run", "--epochs=3", "--arch=wrn10-1")
    cmds = commands(result.stdout)
    assert "--dataset=cifar100" in cmds["train.py"] and "--epochs=3" in cmds["train.py"]
    assert "--arch=wrn10-1" in cmds["train.py"] and "--logdir=exp/paper_cifar100" in cmds["train.py"]

    # Views the cpu preset's models never trained on, asked for explicitly.
    result = reproduce("--scale=cpu", "--dry_run", "--queries=18", "--allow_untrained_views")
    assert commands(result.stdout)["inference.py"] == [
        "--logdir=exp/c10_cpu", "--queries=18", "--allow_untrained_views"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale=gpu"], "--scale='gpu' is not a preset; valid: cpu, paper."),
        (["--experiment=imagenet"], "--experiment='imagenet' is unknown; valid: cifar10, cifar100."),
        (["--experiment=cifar100"], "has no cpu-scale data set"),
        (["--queries=7"], "valid: 1, 2, 18, 162"),
        (
            ["--queries=18"],
            "--queries=18 has 16 views the models never trained on (the run's --augment=mirror)",
        ),
        (["--attacks=lira,loss"], "Unknown attacks ['lira']"),
        (["--epochs=0"], "epochs must be >= 1, got 0."),  # train.py's own check, before any stage
        (["--pool_size=0"], "--pool_size must be >= 1, got 0."),
    ],
)
@pytest.mark.slow
def test_bad_flags_fail_before_any_work(args, message, tmp_path):
    result = reproduce(*args, f"--logdir={tmp_path / 'run'}", check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_run_end_to_end_then_resume(tmp_path):
    logdir = tmp_path / "run"
    result = reproduce(*TINY, f"--logdir={logdir}")
    cmds = commands(result.stdout)
    assert list(cmds) == ["train.py", "inference.py", "attack.py"]
    logits = sorted((logdir / "logits").glob("*.npy"))
    assert [p.name for p in logits] == [f"{m:05d}.npy" for m in range(6)]
    assert np.load(logits[0]).shape == (64, 2, 10)  # trained with mirror: 2 queries (8x8 digits are images)
    metrics = json.loads((logdir / "report" / "metrics.json").read_text())
    assert (metrics["num_models"], metrics["num_targets"], metrics["num_queries"]) == (6, 2, 2)
    assert "lira_online" in metrics["attacks"] and "rmia_offline" in metrics["attacks"]

    def mtimes():
        files = [*logits, logdir / "report" / "metrics.json", *(logdir / "ckpt").rglob("*.npz")]
        return {p: p.stat().st_mtime_ns for p in files}

    before = mtimes()
    result = reproduce(*TINY, f"--logdir={logdir}")
    assert "Wrote logits of 0 models" in result.stdout
    assert "# skip attack:" in result.stdout
    assert mtimes() == before

    # A result-changing flag is refused by train.py; reproduce stops there with its exit code.
    result = reproduce(
        *[a.replace("--epochs=2", "--epochs=3") for a in TINY], f"--logdir={logdir}", check=False
    )
    assert result.returncode != 0
    assert "--epochs: 2 before, 3 now" in result.stderr and "the train stage failed" in result.stderr
    assert mtimes() == before
