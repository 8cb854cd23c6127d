"""One line, before the work: a --logdir that is a file, non-finite flags, data that does not fit
the architecture, single-class and stray labels, memory estimates, and logits or white-box files
that are truncated, of the wrong dtype or shape, or hold NaN (lira/stages/preflight.py, lira/run/verify.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lira import config, data
from lira.config import QueryConfig
from lira.run import layout, reader, records, synthetic, verify
from lira.stages import attack, preflight, query, train

ROOT = Path(__file__).resolve().parents[1]


def _npz(path, x_train, y_train, x_test, y_test, **extra):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return f"npz:{path}"


def test_a_logdir_that_is_a_file_is_refused_by_every_stage(tmp_path):
    logdir = tmp_path / "run"
    logdir.write_text("not a folder")
    with pytest.raises(layout.RunDirError, match=r"--logdir=.*run is a file, not a folder"):
        train.train(logdir, config.Config().replace(dataset="digits", arch="mlp-tiny"))
    with pytest.raises(layout.RunDirError, match="is a file, not a folder"):
        query.query(logdir, QueryConfig())
    with pytest.raises(layout.RunDirError, match="is a file, not a folder"):
        attack.attack(logdir, config.AttackConfig())
    with pytest.raises(layout.RunDirError, match=r"cannot be created: .*run is a file"):
        verify.check_logdir(logdir / "below")


@pytest.mark.parametrize(
    ("section", "changes"),
    [
        (config.TrainingConfig, {"lr": float("inf")}),
        (config.TrainingConfig, {"momentum": float("nan")}),
        (config.TrainingConfig, {"weight_decay": float("inf")}),
        (config.TrainingConfig, {"pkeep": float("nan")}),
        (config.TrainingConfig, {"dp_noise_multiplier": float("inf")}),
        (config.TrainingConfig, {"warmup_epochs": float("inf")}),
        (config.AttackConfig, {"audit_significance": float("nan")}),
        (config.AttackConfig, {"options": {"rmia_gamma": float("inf")}}),
    ],
)
def test_non_finite_floats_are_named(section, changes):
    flag, value = next(iter(changes.items()))
    if flag == "options":
        flag, value = next(iter(value.items()))
    with pytest.raises(ValueError, match=rf"^--{flag}={value}: must be a finite number\.$"):
        section(**changes).validate()


def test_tabular_data_with_a_conv_net_names_the_archs_that_fit(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), np.arange(40) % 2
    spec = _npz(tmp_path / "table.npz", x, y, x[:8], y[:8])
    with pytest.raises(ValueError, match=r"--arch=cnn-tiny does not take inputs of shape \(5,\).*do: mlp,"):
        train.train(tmp_path / "run", config.Config().replace(dataset=spec, arch="cnn-tiny", num_shadows=2))
    fitting = preflight.fitting_archs(2, (5,))  # other tests may register models of their own
    assert {"mlp", "mlp-tiny"} <= set(fitting) and not {"cnn32", "wrn28-2"} & set(fitting)
    assert not (tmp_path / "run" / layout.KEEP).exists()


@pytest.mark.parametrize(
    ("y_train", "y_test", "message"),
    [
        (np.zeros(20, int), np.zeros(4, int), r"single class \(0\)"),
        (np.r_[np.arange(19) % 3, 99], np.zeros(4, int),
         r"labels 0-2, 99, so C = 100 classes of which 3-98 have no train example; stray labels\? 99 \(1 examples\)"),
        (np.arange(20) % 3, np.array([0, 5000, 1, 2]), r"y_test holds labels 5000 \(example 1\) outside the 3 classes 0\.\.2 of the train labels\."),
        (np.r_[np.arange(19) % 3, -1], np.zeros(4, int), r"y_train has a negative label \(-1\)"),
    ],
)  # fmt: skip
def test_bad_labels_are_refused_at_load(tmp_path, y_train, y_test, message):
    x = np.random.default_rng(1).normal(size=(20, 3))
    with pytest.raises(data.DatasetError, match=message):
        data.load_dataset(_npz(tmp_path / "d.npz", x, y_train, x[:4], y_test))


def test_a_stated_num_classes_allows_empty_classes_and_a_pool_needs_two(tmp_path):
    x = np.random.default_rng(1).normal(size=(20, 3))
    y = np.r_[np.zeros(10, int), np.full(10, 7)]
    assert data.load_dataset(_npz(tmp_path / "d.npz", x, y, x[:4], y[:4], num_classes=10)).num_classes == 10
    with pytest.raises(data.DatasetError, match=r"--pool_size=5: the first 5 .* all have label 0"):
        data.load_dataset(f"npz:{tmp_path / 'd.npz'}", pool_size=5)


def test_memory_estimates_refuse_with_the_flag_and_an_override(monkeypatch):
    dataset = data.load_dataset("digits")
    base = train.resolve(config.Config().replace(dataset="digits", arch="cnn32"))
    preflight.check_training(base, dataset, base.training.num_shadows)  # the demo fits
    monkeypatch.setattr(preflight, "host_available", lambda: 24 * 2**30)
    monkeypatch.setattr(preflight, "device_available", lambda: None)
    for changes, flag in (({"num_shadows": 1_000_000}, "--num_shadows=1000000"),
                          ({"batch_size": 1_000_000}, "--batch_size=1000000")):  # fmt: skip
        big = base.replace(**changes)
        with pytest.raises(ValueError, match=rf"Training needs about [\d.]+ GiB of host memory .*approximate.*"
                                             rf"but 24 GiB is available; lower .*{flag}.*LIRA_SKIP_MEMORY_CHECK=1"):  # fmt: skip
            preflight.check_training(big, dataset, big.training.num_shadows)
    monkeypatch.setenv(preflight.SKIP_MEMORY_CHECK, "1")
    preflight.check_training(base.replace(batch_size=1_000_000), dataset, 16)


def test_attack_and_query_memory_estimates(tmp_path, monkeypatch):
    synthetic.make_synthetic_rundir(tmp_path, num_models=4, num_examples=10)
    run = reader.read_run(tmp_path)
    preflight.check_attack(run)
    monkeypatch.setattr(preflight, "host_available", lambda: 100)
    with pytest.raises(ValueError, match=r"The attack needs about .* GiB of host memory"):
        preflight.check_attack(run)


def _logits_run(tmp_path, num_models=3):
    synthetic.make_synthetic_rundir(
        tmp_path, num_models=num_models, num_examples=10, num_queries=2, num_classes=3
    )
    return layout.logits_path(tmp_path, 1)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: np.save(p, np.zeros((10, 2, 3), np.float16)), r"00001.npy has dtype float16, expected float32"),
        (lambda p: np.save(p, np.zeros((10, 2, 4), np.float32)), r"00001.npy has shape \(10, 2, 4\), expected \[10, 2, 3\]"),
        (lambda p: p.write_bytes(p.read_bytes()[:-40]), r"00001.npy has \d+ bytes where its header says \d+"),
        (lambda p: p.write_bytes(b"junk"), r"00001.npy is not a readable .npy file"),
    ],
)  # fmt: skip
def test_bad_logits_files_are_named_with_the_repair(tmp_path, damage, message):
    path = _logits_run(tmp_path)
    damage(path)
    with pytest.raises(
        layout.RunDirError, match=message + r".*experiments/inference.py --logdir=.* rewrites it"
    ):
        reader.read_run(tmp_path).with_signals()
    if "shape" not in message:  # the query stage (which checks N and Q) queries the file again
        assert not verify.usable(path, (10, 2, None))


def test_nan_logits_name_the_model_and_examples_before_any_attack(tmp_path, monkeypatch):
    path = _logits_run(tmp_path, num_models=8)
    logits = np.load(path)
    logits[[3, 7], 1, 0] = [np.nan, np.inf]
    np.save(path, logits)
    ran = []
    monkeypatch.setattr(attack, "run_attacks", lambda *args: ran.append(1))
    with pytest.raises(layout.RunDirError, match=r"00001.npy \(model 1\) holds non-finite logits on 2 examples "
                                                 r"\(first: 3, 7\)"):  # fmt: skip
        attack.attack(tmp_path, config.AttackConfig(attacks=["lira_offline"], num_targets=1, bootstrap=0))
    assert ran == []


@pytest.mark.parametrize("label", [-1, 3])
def test_labels_outside_the_logits_classes_are_refused(tmp_path, label):
    _logits_run(tmp_path)
    labels = records.load_labels(tmp_path)  # read_run refuses such a labels.npy itself: test load_signals
    labels[4] = label
    with pytest.raises(
        layout.RunDirError,
        match=rf"labels.npy holds labels {label} \(example 4\) outside the 3 classes 0\.\.2 of the logits;",
    ):
        reader.load_signals(tmp_path, records.load_keep(tmp_path), labels)


def test_whitebox_files_are_verified(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10, whitebox=True, num_layers=2)
    path = layout.whitebox_path(tmp_path, 2, "norms")
    np.save(path, np.load(path).astype(np.float16))
    with pytest.raises(
        layout.RunDirError, match=r"00002_norms.npy has dtype float16.*--whitebox rewrites it"
    ):
        reader.read_run(tmp_path).with_signals(whitebox=True)
    norms = np.ones((10, 2, 3), np.float32)
    norms[6, 0, -1] = np.nan
    np.save(path, norms)
    with pytest.raises(
        layout.RunDirError, match=r"\(model 2\) holds non-finite gradient norms on 1 examples \(first: 6\)"
    ):
        reader.read_run(tmp_path).with_signals(whitebox=True)


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    logdir = tmp_path / "file"
    logdir.write_text("")
    cases = {
        f"--logdir={logdir}": "is a file, not a folder",
        "--lr=inf": "--lr=inf: must be a finite number.",
    }
    for flag, expected in cases.items():
        command = [sys.executable, str(ROOT / "experiments" / "train.py"), "--dataset=digits", "--arch=mlp-tiny",
                   f"--logdir={tmp_path / 'run'}", flag]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert expected in lines[0]
    assert not (tmp_path / "run").exists()
