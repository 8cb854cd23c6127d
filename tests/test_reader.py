"""lira.run.reader: a run directory read once, its signals streamed model by model."""

import numpy as np
import pytest

from lira import config, signals
from lira.run import layout, reader, records, synthetic
from lira.stages import attack


def test_signals_stream_each_model_like_model_signals(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10, num_queries=2, num_classes=4)
    run = reader.read_run(tmp_path).with_signals(signals.ProbabilitySignal())
    labels = records.load_labels(tmp_path)
    np.testing.assert_array_equal(run.labels, labels)
    np.testing.assert_array_equal(run.keep, records.load_keep(tmp_path))
    got = run.signals
    assert got.phi.shape == (3, 10, 2) and got.probability.shape == (3, 10, 2) and got.phi.dtype == np.float32
    for m in range(3):
        logits = np.load(layout.logits_path(tmp_path, m))
        one = signals.model_signals(logits, labels, signals.ProbabilitySignal())
        for name in ("phi", "ce", "probability"):
            np.testing.assert_array_equal(getattr(got, name)[m], one[name])
        np.testing.assert_array_equal(got.logits(m), logits)  # prediction vectors, read back on demand
    assert reader.read_run(tmp_path).with_signals().signals.probability is None
    with pytest.raises(ValueError, match="Unknown RMIA signal 'sofmax'"):
        signals.ProbabilitySignal("sofmax")


def test_missing_and_misshapen_files_are_named(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10)
    layout.logits_path(tmp_path, 1).unlink()
    with pytest.raises(layout.RunDirError, match="models 1"):
        reader.read_run(tmp_path).with_signals()
    layout.save_npy(layout.logits_path(tmp_path, 1), np.zeros((9, 2, 3), np.float32))
    with pytest.raises(layout.RunDirError, match="00001.npy has shape"):
        reader.read_run(tmp_path).with_signals()
    layout.save_npy(tmp_path / layout.LABELS, np.zeros(9, np.int32))
    with pytest.raises(layout.RunDirError, match=r"labels.npy has shape \(9,\) but keep.npy has N=10"):
        reader.read_run(tmp_path)


def test_with_queries_selects_the_query_axis(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=3, num_examples=10, num_queries=4)
    run = reader.read_run(tmp_path).with_signals(signals.ProbabilitySignal())
    picked = run.with_queries([3, 0])
    np.testing.assert_array_equal(picked.signals.phi, run.signals.phi[..., [3, 0]])
    np.testing.assert_array_equal(picked.signals.probability, run.signals.probability[..., [3, 0]])
    np.testing.assert_array_equal(picked.signals.logits(1), run.signals.logits(1)[:, [3, 0]])
    assert picked.keep is run.keep and run.num_queries == 4 and picked.num_queries == 2


def test_the_attack_stage_reads_each_run_file_once(tmp_path, monkeypatch):
    synthetic.make_synthetic_rundir(tmp_path, num_models=8, num_examples=40, signal=2.0)
    counts = {}

    def counted(name, load):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return load(*args, **kwargs)

        return wrapper

    for module, name in [(records, "load_keep"), (records, "load_labels"), (records, "load_record"),
                         (records, "load_canaries"), (layout, "read_jsonl")]:  # fmt: skip
        monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    attack.attack(tmp_path, config.AttackConfig(attacks=["all"], num_targets=2, bootstrap=0))
    assert counts == {"load_keep": 1, "load_labels": 1, "load_record": 1, "load_canaries": 1, "read_jsonl": 1}
