"""Models trained elsewhere: examples/sklearn_mlp.py's models through experiments/import_logits.py
and the attack stage, and through lira.api, give the same scores; examples/pytorch_cnn.py's
per-model files through the same command; the files are read without pickle."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lira import api, config
from lira.run import importer, layout, records
from lira.stages import attack

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["loss", "lira_online", "rmia_online"]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SKLEARN_MLP = _example("sklearn_mlp")


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """The example's files: 6 scikit-learn MLPs on the digits."""
    out = tmp_path_factory.mktemp("sklearn")
    logits, keep, labels = SKLEARN_MLP.train_models(num_models=6, max_iter=60)
    for name, array in (("logits", logits), ("keep", keep), ("labels", labels)):
        np.save(out / f"{name}.npy", array)
    return out, logits, keep, labels


def _import_command(logits, out, logdir, description):
    """Runs experiments/import_logits.py on out/keep.npy and out/labels.npy as the README does."""
    command = [sys.executable, str(ROOT / "experiments" / "import_logits.py"), f"--logits={logits}",
               f"--keep={out / 'keep.npy'}", f"--labels={out / 'labels.npy'}", f"--logdir={logdir}",
               f"--description={description}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"next: python experiments/attack.py --logdir={logdir}" in done.stdout


def test_the_import_command_and_the_api_audit_the_same(arrays, tmp_path):
    out, logits, keep, labels = arrays
    logdir = tmp_path / "run"
    _import_command(out / "logits.npy", out, logdir, "6 scikit-learn MLPs")
    record = records.load_record(logdir)
    assert record.external and record.queries == 1 and record.models["description"] == "6 scikit-learn MLPs"
    assert "flags" not in json.loads(
        (logdir / layout.CONFIG).read_text()
    )  # no defaults posing as its settings

    metrics = attack.attack(logdir, config.AttackConfig(attacks=ATTACKS, num_targets=3, bootstrap=10))
    result = api.audit(logits, keep, labels, attacks=ATTACKS, num_targets=3, bootstrap=10)
    for name in ATTACKS:
        np.testing.assert_array_equal(
            np.load(logdir / layout.REPORT_DIR / layout.SCORES_DIR / f"{name}.npy"), result.scores(name)
        )
        assert metrics["attacks"][name]["auc"] == result.metrics["attacks"][name]["auc"]
    report = (logdir / layout.REPORT_DIR / "report.md").read_text()
    assert "trained elsewhere" in report and "as stated: 6 scikit-learn MLPs" in report
    assert "the first query's logits, as imported" in report and "inference mode" not in report
    assert "cifar10" not in report and "wrn" not in report and "epochs" not in report
    assert not (logdir / layout.REPORT_DIR / "most_exposed.png").exists()  # no images to show


def test_folders_and_npz_read_as_one_array(arrays, tmp_path):
    _, logits, keep, labels = arrays
    folder = tmp_path / "per_model"
    folder.mkdir()
    for m in reversed(range(len(logits))):  # the order comes from the names, not from the listing
        np.save(folder / f"model_{m}.npy", logits[m])
    np.testing.assert_array_equal(importer.read_array(folder, "logits"), logits)
    np.savez(tmp_path / "all.npz", logits=logits, keep=keep)
    np.testing.assert_array_equal(importer.read_array(tmp_path / "all.npz", "keep"), keep)
    (folder / "model_9.npy").write_bytes((folder / "model_0.npy").read_bytes())
    with pytest.raises(ValueError, match="numbered 0..M-1; missing 6-8"):
        importer.read_array(folder, "logits")


def test_pickles_and_used_folders_are_refused(arrays, tmp_path):
    _, logits, keep, labels = arrays
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        importer.read_array(tmp_path / "objects.npy", "logits")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        importer.import_run(tmp_path / "used", logits, keep, labels)
    with pytest.raises(ValueError, match="look like probabilities"):  # checked as lira.api checks them
        importer.import_run(tmp_path / "new", np.full((6, 1797, 10), 0.1), keep, labels)
    assert not (tmp_path / "new").exists()  # nothing written before the checks pass


def test_pytorch_models_written_one_file_each_are_audited(tmp_path):
    """examples/pytorch_cnn.py: 6 CNNs trained by a plain PyTorch loop on NCHW images, each
    leaving logits/model_M.npy [N, 2, C]; the folder goes through the import command and the
    attack stage, and the models' members score above their non-members."""
    example = _example("pytorch_cnn")
    keep, labels = example.train_models(tmp_path, num_models=6, epochs=4)
    np.save(tmp_path / "keep.npy", keep)
    np.save(tmp_path / "labels.npy", labels)
    logdir = tmp_path / "run"
    _import_command(tmp_path / "logits", tmp_path, logdir, "6 PyTorch CNNs")
    assert records.load_record(logdir).queries == 2
    metrics = attack.attack(
        logdir, config.AttackConfig(attacks=["loss", "lira_online"], num_targets=6, bootstrap=10, strict=True)
    )
    for name in ("loss", "lira_online"):
        scores = np.load(logdir / layout.REPORT_DIR / layout.SCORES_DIR / f"{name}.npy")
        assert scores.shape == keep.shape and np.isfinite(scores).all()
        assert scores[keep].mean() > scores[~keep].mean(), name
        assert metrics["attacks"][name]["auc"] > 0.5, name
