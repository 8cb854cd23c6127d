"""The run's record (issue 24): config.json merged, never replaced; the data fingerprinted;
keep.npy and labels.npy checked against it; code imported only when the command names it; a
failed first run not blocking the corrected one; a truncated or badly typed config.json named in
one line and repaired by the train stage."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_image_run_config

from lira import config
from lira.config import QueryConfig
from lira.data import load_dataset
from lira.run import layout, lock, reader, record_types, records, synthetic
from lira.stages import query, train
from lira.training import loop, models

ROOT = Path(__file__).resolve().parents[1]


def _train(root: Path, **changes) -> tuple[Path, config.Config]:
    """2 mlp-tiny models, 1 epoch, trained with --augment=mirror on 96 8x8 colour images."""
    run_config = tiny_image_run_config(root, num_models=2, models_per_step=2, augment="mirror")
    run_config = run_config.replace(arch="mlp-tiny", epochs=1, **changes)
    train.train(root / "run", run_config, progress=False)
    return root / "run", run_config


@pytest.fixture(scope="module")
def queried(tmp_path_factory):
    """(run directory trained and queried with its 2 trained views, its Config)."""
    run, run_config = _train(tmp_path_factory.mktemp("record"))
    assert query.query(run, QueryConfig(), progress=False) == [0, 1]
    return run, run_config


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _json(run: Path) -> dict:
    return json.loads((run / layout.CONFIG).read_text())


def _edit(run: Path, edit) -> None:
    obj = _json(run)
    edit(obj)
    (run / layout.CONFIG).write_text(json.dumps(obj))


# --- 1. config.json merges ------------------------------------------------------------------------


def test_update_record_replaces_only_the_given_entries(tmp_path):
    layout.save_json(
        tmp_path / layout.CONFIG, {"flags": {"epochs": 3}, "inference": {"queries": 2}, "later": [1]}
    )
    records.update_record(tmp_path, flags={"epochs": 4}, whitebox={"queries": 2, "layers": [], "features": 8})
    assert _json(tmp_path) == {
        "flags": {"epochs": 4}, "inference": {"queries": 2}, "later": [1],
        "whitebox": {"queries": 2, "layers": [], "features": 8},
    }  # fmt: skip
    records.update_record(tmp_path, inference=None)  # None removes an entry
    assert "inference" not in _json(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [layout.CONFIG]  # no lock or temporary left


def test_update_record_waits_for_the_lock_and_names_its_holder(tmp_path, monkeypatch):
    layout.save_json(tmp_path / layout.CONFIG, {})
    held = lock.acquire(tmp_path / records.CONFIG_LOCK)
    real_acquire = lock.acquire
    monkeypatch.setattr(lock, "acquire", lambda path, wait_s=0, what=None: real_acquire(path, 0.1, what))
    with pytest.raises(lock.LockHeld, match=r"config.json is being written by PID \d+"):
        records.update_record(tmp_path, inference={"queries": 1})
    held.release()
    records.update_record(tmp_path, inference={"queries": 1})
    assert _json(tmp_path) == {"inference": {"queries": 1}}


def test_rerunning_train_keeps_the_query_guard(queried, tmp_path):
    run, run_config = queried
    run = _copy(run, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / layout.LOGITS_DIR).iterdir()}
    train.train(run, run_config, progress=False)
    assert _json(run)["inference"] == {"queries": 2}
    with pytest.raises(
        ValueError, match="holds logits for --queries=2; delete that folder to query with --queries=1"
    ):
        query.query(run, QueryConfig(queries=1), progress=False)
    assert before == {p.name: p.read_bytes() for p in (run / layout.LOGITS_DIR).iterdir()}


# --- 2. the data's fingerprint --------------------------------------------------------------------


def test_changed_data_is_refused_on_resume_and_in_the_query_stage(tmp_path):
    run, run_config = _train(tmp_path)
    record_before = (run / layout.CONFIG).read_bytes()
    labels_before = (run / layout.LABELS).read_bytes()
    assert len(_json(run)["data"]["fingerprint"]) == 64
    with np.load(tmp_path / "images.npz") as archive:
        arrays = dict(archive)
    arrays["y_train"] = np.random.default_rng(1).permutation(arrays["y_train"])
    np.savez(tmp_path / "images.npz", **arrays)
    expected = re.escape(
        f"--dataset=npz:{tmp_path}/images.npz: the data changed since the run in {run} began"
    )
    with pytest.raises(layout.RunDirError, match=expected):
        train.train(run, run_config, progress=False)
    assert (run / layout.LABELS).read_bytes() == labels_before and (
        run / layout.CONFIG
    ).read_bytes() == record_before
    with pytest.raises(layout.RunDirError, match=expected):
        query.query(run, QueryConfig(), progress=False)
    assert not (run / layout.LOGITS_DIR).exists()

    _edit(run, lambda obj: obj["data"].pop("fingerprint"))  # a run recorded without one: not checked
    train.train(run, run_config, progress=False)
    assert np.array_equal(np.load(run / layout.LABELS), arrays["y_train"])


def test_fingerprint_covers_every_array_and_its_dtype(tmp_path):
    run_config = tiny_image_run_config(tmp_path, num_models=2, models_per_step=2)
    dataset = load_dataset(run_config.data.dataset)
    prints = {dataset.fingerprint()}
    for name in ("x_train", "y_train", "x_test", "y_test"):
        array = getattr(dataset, name).copy()
        array.reshape(-1)[0] += 1
        prints.add(dataclasses.replace(dataset, **{name: array}).fingerprint())
    prints.add(dataclasses.replace(dataset, y_test=dataset.y_test.astype(np.int64)).fingerprint())
    assert len(prints) == 6 and dataset.fingerprint() == load_dataset(run_config.data.dataset).fingerprint()


# --- 3. keep.npy and labels.npy checked -----------------------------------------------------------


def test_edited_keep_and_labels_are_named_and_train_repairs_them(queried, tmp_path, capsys):
    run, run_config = queried
    run = _copy(run, tmp_path)
    keep, labels = np.load(run / layout.KEEP), np.load(run / layout.LABELS)
    files = _json(run)["files"]
    assert files == {
        name: record_types.sha256((run / name).read_bytes()) for name in (layout.KEEP, layout.LABELS)
    }
    for name, edited in ((layout.KEEP, keep[::-1]), (layout.LABELS, np.roll(labels, 1))):
        layout.save_npy(run / name, edited)
        with pytest.raises(layout.RunDirError) as error:
            reader.read_run(run)
        message = str(error.value)
        assert (
            message.startswith(f"{run / name} has changed since the train stage wrote it")
            and "\n" not in message
        )
        assert f"python experiments/train.py --logdir={run} --dataset={run_config.data.dataset} " in message
        assert all(
            flag in message.split() for flag in ("--arch=mlp-tiny", "--num_shadows=2", "--augment=mirror")
        )
        with pytest.raises(layout.RunDirError, match=f"{name} has changed"):
            query.query(run, QueryConfig(), progress=False)
        train.train(run, run_config, progress=False)  # the run's own flags rewrite it
        assert f"Note: {run / name} is not what these flags and --seed give" in capsys.readouterr().out
        np.testing.assert_array_equal(np.load(run / name), keep if name == layout.KEEP else labels)
        reader.read_run(run)


def test_a_truncated_keep_file_is_named(queried, tmp_path):
    run = _copy(queried[0], tmp_path)
    (run / layout.KEEP).write_bytes((run / layout.KEEP).read_bytes()[:-3])
    _edit(run, lambda obj: obj.pop("files"))  # even without a recorded sha256
    with pytest.raises(layout.RunDirError, match=r"keep.npy is not a readable .npy file \(truncated\?"):
        reader.read_run(run)


def test_records_without_files_are_not_checked(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10)
    keep = np.load(tmp_path / layout.KEEP)
    layout.save_npy(tmp_path / layout.KEEP, keep[::-1])
    np.testing.assert_array_equal(reader.read_run(tmp_path).keep, keep[::-1])
    layout.save_npy(tmp_path / layout.LABELS, np.full(10, -1, np.int32))  # out of range is named all the same
    with pytest.raises(
        layout.RunDirError,
        match=r"labels.npy holds labels -1 \(examples 0, 1, 2, 3, 4, \.\.\.\) outside the 3 classes 0\.\.2 of the run\.",
    ):
        reader.read_run(tmp_path)


# --- 4. code is imported only when the command names it -----------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("evilmod ran")
def net(num_classes, conv_impl, dtype):
    raise AssertionError("never built")
"""


def test_a_run_directory_never_makes_lira_import_code(queried, tmp_path, monkeypatch):
    run = _copy(queried[0], tmp_path)
    shutil.rmtree(run / layout.LOGITS_DIR)
    (tmp_path / "evilmod.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit(run, lambda obj: obj["flags"].update(arch="evilmod:net"))
    before = (run / layout.CONFIG).read_bytes()
    refused = (
        f"The run in {run} was trained with --arch=evilmod:net, a model of your own code, which lira imports only "
        "when the command names it: add --arch=evilmod:net (if you trust that module)."
    )
    for stage in (query.query, query.query_whitebox):
        with pytest.raises(ValueError) as error:
            stage(run, QueryConfig(), progress=False)
        assert str(error.value) == refused
    with pytest.raises(
        ValueError, match="--arch=other:net: the run in .* was trained with --arch=evilmod:net"
    ):
        query.query(run, QueryConfig(arch="other:net"), progress=False)
    with pytest.raises(ValueError, match="is a module:factory model that this command did not import"):
        models.get_model("evilmod:net", 3)  # what any reader of config.json's arch gets
    with pytest.raises(ValueError, match="did not import"):
        list(loop.load_slice_states(run, "evilmod:net", 4, config.TrainingConfig(), np.zeros((8, 8, 3)), 96))
    assert not (tmp_path / "imported.marker").exists() and "evilmod" not in sys.modules
    assert (run / layout.CONFIG).read_bytes() == before and not (run / layout.LOGITS_DIR).exists()

    assert models.import_arch("evilmod:net") == "evilmod:net"  # named by the command: imported
    assert (tmp_path / "imported.marker").read_text() == "evilmod ran"
    sys.modules.pop("evilmod")
    models._REGISTRY.pop("evilmod:net")


def test_inference_py_refuses_in_one_line_before_importing(queried, tmp_path):
    run = _copy(queried[0], tmp_path)
    (tmp_path / "evilmod.py").write_text(EVIL)
    _edit(run, lambda obj: obj["flags"].update(arch="evilmod:net"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "inference.py"), "--logdir=run", "--progress=false"],
        cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip() == (
        "inference.py: error: The run in run was trained with --arch=evilmod:net, a model of your own code, which "
        "lira imports only when the command names it: add --arch=evilmod:net (if you trust that module)."
    )
    assert not (tmp_path / "imported.marker").exists()


def test_a_missing_module_says_where_modules_are_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        models.import_arch("no_such_module_here:net")
    assert str(error.value) == (
        f"--arch='no_such_module_here:net': no module 'no_such_module_here' in the current directory ({tmp_path}) "
        "or on PYTHONPATH, where modules are found; run from the folder that holds it, or add that folder to "
        "PYTHONPATH."
    )


# --- 5. a failed first run does not block the corrected one -------------------------------------


def test_settings_that_computed_nothing_are_replaced(tmp_path, monkeypatch, capsys):
    run_config = tiny_image_run_config(tmp_path, num_models=2, models_per_step=2, augment="mirror")
    run_config = run_config.replace(arch="mlp-tiny", epochs=1)
    failing = run_config.replace(batch_size=1000)

    def out_of_memory(**_):
        raise RuntimeError("RESOURCE_EXHAUSTED")

    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_models", out_of_memory)
        with pytest.raises(RuntimeError):
            train.train(tmp_path / "run", failing, progress=False)
    run = tmp_path / "run"
    assert _json(run)["flags"]["batch_size"] == 1000
    _edit(run, lambda obj: obj.update(inference={"queries": 18}))  # a stale entry of the failed settings
    layout.append_jsonl(run / layout.TRAIN_LOG, [{"model": 0, "epoch": 5, "test_acc": 0.9}])

    slice_lock = lock.acquire(run / layout.CKPT_DIR / ".models_00000-00002.lock")  # a trainer at work
    with pytest.raises(ValueError, match=r"other settings \(--batch_size: 1000 before, 16 now\)"):
        train.train(run, run_config, progress=False)
    slice_lock.release()

    train.train(run, run_config, progress=False)
    assert "that computed nothing (no checkpoint, logits or white-box file); these settings replace it" in (
        capsys.readouterr().out
    )
    obj = _json(run)
    assert obj["flags"]["batch_size"] == 16 and "inference" not in obj
    assert [row["epoch"] for row in layout.read_jsonl(run / layout.TRAIN_LOG)] == [1, 1]

    with pytest.raises(ValueError) as error:  # now checkpoints exist: refused as before
        train.train(run, failing, progress=False)
    assert "--batch_size: 16 before, 1000 now" in str(error.value) and "its checkpoints would be lost" in str(
        error.value
    )


# --- 6. a truncated or badly typed config.json -----------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda obj: obj["flags"].update(epochs="abc"), 'flags.epochs is "abc"; expected int'),
        (lambda obj: obj["flags"].update(pkeep=True), "flags.pkeep is true; expected float"),
        (lambda obj: obj["flags"].update(pool_size=1.5), "flags.pool_size is 1.5; expected int or null"),
        (lambda obj: obj["flags"].update(arch=None), "flags.arch is null; expected str"),
        (lambda obj: obj.update(flags=[]), "flags is []; expected a JSON object"),
        (lambda obj: obj.update(inference={"queries": "2"}), 'inference.queries is "2"; expected int'),
        (lambda obj: obj.update(files={"keep.npy": 1}), "files.keep.npy is 1; expected str"),
        (lambda obj: obj.update(data=7), "data is 7; expected dict"),
    ],
)
def test_a_badly_typed_record_is_named_in_one_line(tmp_path, edit, problem):
    records.save_record(tmp_path, records.RunRecord(config.Config(), {"num_examples": 4}, queries=2))
    _edit(tmp_path, edit)
    with pytest.raises(layout.RunDirError) as error:
        records.load_record(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / layout.CONFIG}: {problem} (re-running experiments/train.py with the run's flags rewrites it)."
    )


def test_every_flag_is_type_checked():
    assert set(record_types._flag_kinds()) == set(config.Config().flat())
    for name, value in config.Config().flat().items():
        assert record_types.problems({"flags": {name: [value]}})[0][0] == "flags"


def test_train_repairs_an_unreadable_record_of_its_own_run(queried, tmp_path, capsys):
    run, run_config = queried
    run = _copy(run, tmp_path)
    whole = _json(run)
    (run / layout.CONFIG).write_text((run / layout.CONFIG).read_text()[:40])
    with pytest.raises(layout.RunDirError, match=r"config.json is not readable JSON \(truncated\?") as error:
        query.query(run, QueryConfig(), progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(
        layout.RunDirError, match="these flags cannot: .*keep.npy is not what they and --seed draw"
    ):
        train.train(run, run_config.replace(seed=7), progress=False)
    train.train(run, run_config, progress=False)
    assert "Note: " in capsys.readouterr().out
    repaired = _json(run)
    assert {k: repaired[k] for k in ("flags", "data", "files")} == {
        k: whole[k] for k in ("flags", "data", "files")
    }

    _edit(
        run, lambda obj: obj["flags"].update(epochs="one")
    )  # readable JSON, a bad entry: the others are kept
    repaired["inference"] = {"queries": 2}
    _edit(run, lambda obj: obj.update(inference={"queries": 2}))
    train.train(run, run_config, progress=False)
    assert {k: v for k, v in _json(run).items() if k != "versions"} == {
        k: v for k, v in repaired.items() if k != "versions"
    }
