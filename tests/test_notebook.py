"""lira.notebook: the notebooks' run, figures and settings from the environment, and the pool's images."""

import dataclasses
import os

import numpy as np
import pytest

from lira import data, notebook
from lira.run import records, synthetic
from lira.run.reader import read_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("synthetic")
    synthetic.make_synthetic_rundir(logdir, num_models=4, num_examples=12, num_queries=1, seed=3)
    return read_run(logdir)


def test_paths_and_settings_come_from_the_environment(monkeypatch, tmp_path):
    for name in ("LIRA_LOGDIR", "LIRA_FIGURES", "LIRA_NUM_TARGETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(notebook, "REPO_ROOT", tmp_path)  # a checkout with neither run
    assert notebook.logdir_from_env() == tmp_path / "exp" / "c10_cpu"
    (tmp_path / "exp" / "demo").mkdir(parents=True)  # after ./run.sh: the demo stands in
    assert notebook.logdir_from_env() == tmp_path / "exp" / "demo"
    (tmp_path / "exp" / "c10_cpu").mkdir()
    assert notebook.logdir_from_env() == tmp_path / "exp" / "c10_cpu"
    monkeypatch.undo()
    for name in ("LIRA_LOGDIR", "LIRA_FIGURES", "LIRA_NUM_TARGETS"):
        monkeypatch.delenv(name, raising=False)
    assert notebook.figures_from_env() == notebook.REPO_ROOT / "docs" / "figures"
    assert notebook.num_targets_from_env() is None and notebook.num_targets_from_env(default=4) == 4
    monkeypatch.setenv("LIRA_LOGDIR", "exp/other")
    monkeypatch.setenv("LIRA_FIGURES", str(tmp_path))
    monkeypatch.setenv("LIRA_NUM_TARGETS", "3")
    assert notebook.logdir_from_env() == notebook.REPO_ROOT / "exp" / "other"
    assert notebook.num_targets_from_env(default=4) == 3
    from matplotlib.figure import Figure

    path = notebook.save_figure(Figure(), "sub/figure.png")
    assert path == tmp_path / "sub" / "figure.png" and path.read_bytes().startswith(b"\x89PNG")


def test_pool_images(tmp_path, run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative npz: path must not depend on the working folder
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    np.savez(tmp_path / "images.npz", x_train=images, y_train=labels, x_test=images[:4], y_test=labels[:4])
    features = images.reshape(12, -1).astype(np.float32)
    np.savez(tmp_path / "table.npz", x_train=features, y_train=labels, x_test=features[:4], y_test=labels[:4])
    with_dataset = lambda spec, pool_size=None: dataclasses.replace(
        run, record=records.RunRecord.from_json({"flags": {"dataset": spec, "pool_size": pool_size}})
    )
    relative = os.path.relpath(tmp_path / "images.npz", notebook.REPO_ROOT)  # read from the repository root
    np.testing.assert_array_equal(notebook.pool_images(with_dataset(f"npz:{relative}", 10)), images[:10])
    assert notebook.pool_images(with_dataset(f"npz:{tmp_path}/table.npz")) is None
    with pytest.warns(UserWarning, match="No images of the pool"):
        assert notebook.pool_images(with_dataset("npz:no/such/file.npz")) is None


def test_class_names_only_for_cifar10():
    facts = lambda name, num_classes: {"name": name, "num_classes": num_classes}
    assert data.class_name(facts("cifar10_6k", 10), 3) == "cat"
    assert data.class_name(facts("cifar10", 10), 0) == "airplane"
    assert data.class_name(facts("cifar100", 100), 3) == "3"
    assert data.class_name(facts("digits", 10), 3) == "3"
