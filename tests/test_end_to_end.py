"""The stage scripts end to end on tiny data: one process, --shadow_ids slices, and two
multi-process JAX processes must all produce the same run directory."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test runs the stage scripts as processes

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "--dataset=digits", "--pool_size=200", "--arch=mlp-tiny", "--num_shadows=4", "--epochs=2",
    "--models_per_step=1", "--batch_size=32", "--progress=false",
]  # fmt: skip
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def script(name, *args, check=True, cwd=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), *args],
        env=ENV, capture_output=True, text=True, timeout=600, check=check, cwd=cwd,
    )  # fmt: skip


def logits(logdir):
    return np.stack([np.load(Path(logdir) / "logits" / f"{m:05d}.npy") for m in range(4)])


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("single")
    script("train.py", *TRAIN, f"--logdir={logdir}")
    script("inference.py", f"--logdir={logdir}", "--queries=1", "--progress=false")
    return logdir


def test_run_directory_contract(single_run):
    keep = np.load(single_run / "keep.npy")
    assert keep.shape == (4, 200) and keep.dtype == bool
    assert np.load(single_run / "labels.npy").shape == (200,)
    assert logits(single_run).shape == (4, 200, 1, 10)
    assert (single_run / "config.json").exists() and (single_run / "train_log.jsonl").exists()


def test_rerun_skips_finished_work(single_run):
    before = {p: p.stat().st_mtime_ns for p in (single_run / "logits").iterdir()}
    result = script("train.py", *TRAIN, f"--logdir={single_run}")
    assert "Trained models" in result.stdout
    result = script("inference.py", f"--logdir={single_run}", "--queries=1", "--progress=false")
    assert "Wrote logits of 0 models" in result.stdout
    assert before == {p: p.stat().st_mtime_ns for p in (single_run / "logits").iterdir()}


def test_changed_settings_are_refused(single_run):
    result = script(
        "train.py",
        *[a.replace("--epochs=2", "--epochs=3") for a in TRAIN],
        f"--logdir={single_run}",
        check=False,
    )
    assert result.returncode != 0 and "--epochs: 2 before, 3 now" in result.stderr
    result = script("inference.py", f"--logdir={single_run}", "--queries=7", check=False)
    assert result.returncode != 0 and "valid: 1, 2, 18, 162" in result.stderr


OWN_MODEL = """
import flax.linen as nn


class Linear(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def linear(num_classes, conv_impl, dtype):
    return Linear(num_classes)
"""


def test_own_model_by_import_path(tmp_path):
    (tmp_path / "my_models.py").write_text(OWN_MODEL)
    own = [a.replace("--arch=mlp-tiny", "--arch=my_models:linear") for a in TRAIN]
    result = script("train.py", *own, "--logdir=run", cwd=tmp_path)
    assert "next: python experiments/inference.py --logdir=run --arch=my_models:linear" in result.stdout
    script(
        "inference.py",
        "--logdir=run",
        "--queries=1",
        "--progress=false",
        "--arch=my_models:linear",
        cwd=tmp_path,
    )
    result = script("attack.py", "--logdir=run", "--attacks=loss", "--num_targets=1", cwd=tmp_path)
    assert "loss" in result.stdout
    assert logits(tmp_path / "run").shape == (4, 200, 1, 10)
    params = np.load(next((tmp_path / "run" / "ckpt").glob("*/epoch_00002.npz")))
    assert {v.shape for v in params.values() if v.ndim == 3} == {(1, 64, 10)}  # one model a slice: 8x8 -> 10
    result = script(
        "train.py", *TRAIN[:2], "--arch=my_models:nope", "--logdir=other", cwd=tmp_path, check=False
    )
    assert result.returncode != 0 and "has no callable 'nope'" in result.stderr
    result = script(
        "train.py", *TRAIN[:2], "--arch=their_models:net", "--logdir=other", cwd=tmp_path, check=False
    )
    assert result.returncode == 2 and "no module 'their_models' in the current directory" in result.stderr


def test_shadow_id_slices_equal_one_process(single_run, tmp_path):
    for ids in ("2:4", "0:2"):
        script("train.py", *TRAIN, f"--logdir={tmp_path}", f"--shadow_ids={ids}")
    script("inference.py", f"--logdir={tmp_path}", "--queries=1", "--progress=false")
    np.testing.assert_array_equal(np.load(tmp_path / "keep.npy"), np.load(single_run / "keep.npy"))
    np.testing.assert_allclose(logits(tmp_path), logits(single_run), rtol=1e-5, atol=1e-6)


def test_two_processes_equal_one_process(single_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    distributed = ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "experiments" / "train.py"),
                *TRAIN,
                f"--logdir={tmp_path}",
                *distributed,
                f"--process_id={i}",
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for p in processes:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output
    slices = sorted(d.name for d in (tmp_path / "ckpt").iterdir())
    assert slices == ["models_00000-00001", "models_00001-00002", "models_00002-00003", "models_00003-00004"]
    script("inference.py", f"--logdir={tmp_path}", "--queries=1", "--progress=false")
    np.testing.assert_array_equal(np.load(tmp_path / "keep.npy"), np.load(single_run / "keep.npy"))
    np.testing.assert_allclose(logits(tmp_path), logits(single_run), rtol=1e-5, atol=1e-6)


def test_inference_call_groups_do_not_change_logits(single_run, tmp_path, monkeypatch):
    """single_run's 4 one-model slices are queried 4 models a call; one a call gives the same."""
    from lira.config import QueryConfig
    from lira.stages import query

    run = tmp_path / "run"
    shutil.copytree(single_run, run, ignore=shutil.ignore_patterns("logits"))
    monkeypatch.setattr(query, "MIN_MODELS_PER_CALL", 1)
    assert query.query(run, QueryConfig(queries=1), progress=False) == [0, 1, 2, 3]
    np.testing.assert_allclose(logits(run), logits(single_run), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits(run)[0], logits(run)[1])


def test_untrained_views_are_refused_in_one_line(tmp_path):
    """A run trained without augmentation has one view: --queries=2 is refused before any work,
    and --allow_untrained_views lets it through to the next check (here: no keep.npy)."""
    from lira import config
    from lira.run import records

    record = records.RunRecord(
        config.Config().replace(dataset="digits", augment="none"), {"input_shape": [8, 8, 1]}
    )
    records.save_record(tmp_path, record)
    result = script("inference.py", f"--logdir={tmp_path}", "--queries=2", check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        "inference.py: error: --queries=2 has 1 view the models never trained on (the run's --augment=none); "
        "valid: 0 (as trained: 1), 1, or add --allow_untrained_views to query them anyway."
    )
    result = script(
        "inference.py", f"--logdir={tmp_path}", "--queries=2", "--allow_untrained_views", check=False
    )
    assert result.returncode == 2 and "keep.npy does not exist" in result.stderr
