"""The white-box query stage (experiments/inference.py --whitebox): what it stores equals the
one-model white-box function applied model by model, it resumes, and it refuses runs whose
checkpoints are gone."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_image_run_config

from lira.config import QueryConfig
from lira.data import load_dataset
from lira.run import checkpoint, layout, records
from lira.stages import query, train
from lira.training import grad_norms, loop
from lira.training.models import get_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 cnn-tiny models on 96 uint8 8x8 colour images, in slices of 2; logits and white-box
    signals with 2 queries."""
    root = tmp_path_factory.mktemp("whitebox_run")
    run_config = tiny_image_run_config(root, num_models=4, models_per_step=2)
    train.train(root / "run", run_config, progress=False)
    assert query.query(root / "run", QueryConfig(queries=2, whitebox=True), progress=False) == [0, 1, 2, 3]
    return root / "run"


@pytest.mark.slow
def test_stored_signals_equal_the_one_model_function(run):
    record = records.load_record(run)
    training = record.config.training
    dataset = load_dataset(record.config.data.dataset)
    model = get_model("cnn-tiny", dataset.num_classes)
    programs = loop.Programs(model, training, 3, jnp.asarray(dataset.x_train[0]))
    one_model = jax.jit(grad_norms.make_whitebox_fn(model, 2))
    labels = records.load_labels(run)
    for start, stop, folder in checkpoint.finished_slices(run, training.epochs):
        state = programs.restore(folder, start, stop, training.epochs, training.seed)
        for offset, m in enumerate(range(start, stop)):
            alone = jax.tree.map(lambda leaf, offset=offset: leaf[offset], state)
            norms, features = one_model(alone, jnp.asarray(dataset.x_train), jnp.asarray(labels))
            stored = [np.load(layout.whitebox_path(run, m, kind)) for kind in layout.WHITEBOX_KINDS]
            np.testing.assert_allclose(stored[0], norms, rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(stored[1], features, rtol=2e-5, atol=1e-6)
    names, num_features = grad_norms.whitebox_shapes(model, dataset.x_train[0])
    assert record.whitebox == {"queries": 2, "layers": names, "features": num_features}
    # Models differ, and the whole-model norm is the root sum of squares of the layers'.
    norms = [np.load(layout.whitebox_path(run, m, "norms")) for m in range(4)]
    assert not np.allclose(norms[0], norms[1])
    np.testing.assert_allclose(norms[2][..., -1], np.sqrt(np.sum(norms[2][..., :-1] ** 2, -1)), rtol=1e-5)


@pytest.mark.slow
def test_resumes_and_recomputes_only_what_is_missing(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert query.query_whitebox(copy, QueryConfig(whitebox_queries=2), progress=False) == []
    before = layout.whitebox_path(copy, 0, "norms").stat().st_mtime_ns
    layout.whitebox_path(copy, 3, "features").unlink()  # as a kill between the two files leaves it
    untouched = layout.whitebox_path(copy, 2, "norms").stat().st_mtime_ns  # model 3's slice-mate
    # Model 3 alone: its slice (models 2-3) is restored, but model 2 is complete and kept.
    assert query.query_whitebox(copy, QueryConfig(whitebox_queries=2), progress=False) == [3]
    assert layout.whitebox_path(copy, 0, "norms").stat().st_mtime_ns == before
    assert layout.whitebox_path(copy, 2, "norms").stat().st_mtime_ns == untouched
    assert not [p for p in (copy / layout.WHITEBOX_DIR).iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="holds white-box signals for 2 queries"):
        query.query_whitebox(copy, QueryConfig(whitebox_queries=18), progress=False)


@pytest.mark.slow
def test_refuses_a_run_without_checkpoints(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(layout.WHITEBOX_DIR))
    shutil.rmtree(copy / layout.CKPT_DIR)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "experiments/inference.py", f"--logdir={copy}", "--queries=2", "--whitebox"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "models 0-3 have logits and no finished checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (copy / layout.WHITEBOX_DIR).exists()


def test_call_sizes_follow_the_device(monkeypatch):
    """256 MiB of per-view buffers a call on the CPU; on an accelerator an eighth of its memory
    (16 GiB assumed where it does not say), never less than the CPU's."""

    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert query._whitebox_bytes() == query.WHITEBOX_BYTES  # these tests run on the CPU
    monkeypatch.setattr(query.jax, "default_backend", lambda: "gpu")
    for stats, expected in (({"bytes_limit": 80 * 2**30}, 10 * 2**30), (None, 2 * 2**30),
                            ({"bytes_limit": 2**30}, query.WHITEBOX_BYTES)):  # fmt: skip
        monkeypatch.setattr(query.jax, "local_devices", lambda stats=stats: [Device(stats)])
        assert query._whitebox_bytes() == expected, stats
