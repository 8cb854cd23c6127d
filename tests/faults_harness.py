"""The harness of tests/test_faults.py: the stage scripts run through tests/faults_runner.py on a
tiny run, and run directories compared file by file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from lira.run import layout

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "faults_runner.py"
TRAIN = [
    "--arch=mlp-tiny", "--num_shadows=4", "--models_per_step=2", "--epochs=2", "--batch_size=16",
    "--augment=none", "--checkpoint_every=1", "--progress=false",
]  # fmt: skip
ATTACK = ["--attacks=loss", "--num_targets=2", "--bootstrap=0"]
OLD_ATTACK = ["--attacks=loss,calibrated_loss", "--num_targets=1", "--bootstrap=0"]  # an earlier report
KILLED = -9


def write_data(path: Path, permuted: bool = False) -> Path:
    """160 uint8 8x8 colour images of 4 classes, 128 of them the pool; `permuted`: y_train shuffled."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 160)
    x = np.clip(rng.normal(60 + 40 * y[:, None, None, None], 40, (160, 8, 8, 3)), 0, 255).astype(np.uint8)
    y_train = np.random.default_rng(1).permutation(y[:128]) if permuted else y[:128]
    np.savez(path, x_train=x[:128], y_train=y_train, x_test=x[128:], y_test=y[128:])
    return path


def stage(name, logdir, *args, data=None, fault=None, at=None, count=None, cwd=None, wait=True):
    """Runs experiments/NAME.py on `logdir` through the fault runner (`fault` at write point `at`);
    train gets TRAIN and --dataset=npz:`data`, attack ATTACK unless `args` name --attacks; `args`
    come last, so they override those."""
    defaults = {"train": [f"--dataset=npz:{data}", *TRAIN], "inference": ["--progress=false"]}.get(name, [])
    if name == "attack":
        defaults = [
            "--progress=false",
            *(ATTACK if not any(a.startswith("--attacks=") for a in args) else []),
        ]
    argv = [f"--logdir={logdir}", *defaults, *args]  # absl: the last of a repeated flag wins
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "FAULT_ROOT": str(logdir)}
    env.update({"FAULT_KIND": fault or "", "FAULT_AT": str(at or ""), "FAULT_COUNT": str(count or "")})
    command = [sys.executable, str(RUNNER), str(ROOT / "experiments" / f"{name}.py"), *argv]
    if not wait:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_line_error(result, script: str, *names: str) -> str:
    """The error line of a refused run: exit status 2, one stderr line naming each of `names`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert lines[0].startswith(f"{script}.py: error: ") and all(n in lines[0] for n in names), lines[0]
    return lines[0]


def points(count_file: Path) -> list[tuple[int, str, str, str]]:
    """(K, call, path, how) of every write point a counted run reached."""
    rows = [line.split(" ") for line in count_file.read_text().splitlines()]
    return [(int(k), call, path, how) for k, call, path, how in rows]


def snapshot(logdir: Path, under: str = "") -> dict:
    """Every file of a run directory (under `under`) but lock files, as comparable values: arrays
    by dtype, shape and bytes; JSON parsed (config.json without its git commit); train_log.jsonl
    as {(model, epoch): the set of its rows} (a torn line, which the readers skip, left out)."""
    out = {}
    for path in sorted((Path(logdir) / under).rglob("*")):
        name = path.relative_to(logdir).as_posix()
        if path.is_dir() or path.name.endswith(".lock"):
            continue
        if path.suffix == ".npy":
            array = np.load(path)
            out[name] = (array.dtype.str, array.shape, array.tobytes())
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                out[name] = {
                    k: (archive[k].dtype.str, archive[k].shape, archive[k].tobytes()) for k in archive
                }
        elif path.suffix == ".json":
            obj = json.loads(path.read_text())
            obj.pop("git_commit", None) if name == layout.CONFIG else None
            out[name] = obj
        elif path.name == layout.TRAIN_LOG:
            out[name] = log_rows(path)
        else:
            out[name] = path.read_bytes()
    return out


def log_rows(path: Path) -> dict:
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows.setdefault((row["model"], row["epoch"]), set()).add(json.dumps(row, sort_keys=True))
    return rows


def assert_same(logdir: Path, expected: dict, under: str = "", set_aside: bool = False) -> None:
    """`logdir`'s files equal `expected` (a snapshot); `set_aside`: but for files named *.corrupt
    (a repaired file's damaged copy, kept for inspection)."""
    got = snapshot(logdir, under)
    expected = {name: value for name, value in expected.items() if name.startswith(under)}
    if set_aside:
        got = {name: value for name, value in got.items() if not name.endswith(".corrupt")}
    assert sorted(got) == sorted(expected), "files differ: " + str(sorted(set(got) ^ set(expected)))
    different = [name for name in expected if got[name] != expected[name]]
    assert not different, f"differ from an uninterrupted run: {different}"


def assert_readable(logdir: Path) -> None:
    """What a killed stage leaves under final names is whole: every visible file loads."""
    for path in Path(logdir).rglob("*"):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix == ".npy":
            np.load(path)
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                [archive[k] for k in archive]
        elif path.suffix == ".json":
            json.loads(path.read_text())


def copy_run(source: Path, target: Path, without=()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*without))
    return target
