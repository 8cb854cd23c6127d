"""The run directory's writers under a second writer, a hostile file and a full disk: unique and
exclusive temporaries, stale ones removed, the unit locks (training slice, a model's logits, the
report), checkpoints verified and repaired, a robust train_log.jsonl, the report replaced whole,
and a full disk as one line. (Kills at every write point: tests/test_faults.py.)"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import synthetic_images, tiny_image_run_config, train_run

from lira import config
from lira.run import checkpoint, layout, lock, synthetic, temporaries
from lira.stages import attack, query, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# Temporaries


def test_temporaries_are_unique_exclusive_and_name_their_writer(tmp_path):
    fd1, first = temporaries.create_file(tmp_path, "00001.npy")
    fd2, second = temporaries.create_file(tmp_path, "00001.npy")
    os.close(fd1), os.close(fd2)
    assert first != second
    for path in (first, second):
        assert path.name.startswith(f".00001.npy.{temporaries.HOST}.{os.getpid()}.") and path.name.endswith(
            ".tmp"
        )


def test_a_symlink_planted_at_a_temporary_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = iter([".a.json.planted.tmp", ".a.json.free.tmp"])
    monkeypatch.setattr(temporaries, "temporary_name", lambda name, kind="tmp": next(names))
    (tmp_path / ".a.json.planted.tmp").symlink_to(victim)
    layout.save_json(tmp_path / "a.json", {"x": 1})  # the planted name is taken: the next is used
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_partial_npy_equals_np_save_and_leaves_no_temporary(tmp_path):
    values = np.arange(60, dtype=np.float32).reshape(5, 3, 4)
    partial = layout.PartialNpy(tmp_path / "00003.npy", values.shape)
    partial.array[:] = values
    partial.commit()
    np.save(tmp_path / "reference.npy", values)
    assert (tmp_path / "00003.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    layout.PartialNpy(tmp_path / "00004.npy", values.shape).discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00003.npy", "reference.npy"]


def test_stale_temporaries_of_dead_writers_go_and_others_stay(tmp_path):
    logits = tmp_path / "logits"
    logits.mkdir()
    dead, live = _dead_pid(), os.getppid()
    stale = logits / f".00001.npy.{temporaries.HOST}.{dead}.0123abcd.tmp"
    alive = logits / f".00002.npy.{temporaries.HOST}.{live}.0123abcd.tmp"
    elsewhere = logits / f".00003.npy.otherhost.{dead}.0123abcd.tmp"
    legacy_free, legacy_held = logits / ".00004.partial.npy", logits / ".00005.partial.npy"
    report = tmp_path / f".report.{temporaries.HOST}.{dead}.0123abcd.tmp"
    for path in (stale, alive, elsewhere, legacy_free, legacy_held):
        path.write_bytes(b"x")
    (report / "scores").mkdir(parents=True)
    with lock.try_acquire(logits / ".00005.lock"):
        removed = temporaries.remove_stale(tmp_path)
    assert sorted(removed) == sorted([stale, legacy_free, report])
    assert alive.exists() and elsewhere.exists() and legacy_held.exists() and not report.exists()


def test_a_report_set_aside_by_a_killed_swap_is_put_back(tmp_path):
    aside = tmp_path / f".report.{temporaries.HOST}.{_dead_pid()}.0123abcd.old"
    aside.mkdir()
    (aside / "metrics.json").write_text("{}")
    temporaries.remove_stale(tmp_path)
    assert (tmp_path / "report" / "metrics.json").read_text() == "{}" and not aside.exists()


# train_log.jsonl


def test_a_torn_log_line_swallows_no_row_and_the_last_row_of_an_epoch_counts(tmp_path):
    log = tmp_path / "train_log.jsonl"
    layout.append_jsonl(
        log, [{"model": 0, "epoch": 1, "test_acc": 0.1}, {"model": 0, "epoch": 2, "test_acc": 0.2}]
    )
    with open(log, "a") as f:
        f.write('{"model": 0, "epoch": 3, "te')  # killed mid-append
    layout.append_jsonl(
        log, [{"model": 0, "epoch": 2, "test_acc": 0.4}, {"model": 1, "epoch": 2, "test_acc": 0.6}]
    )
    rows = layout.read_jsonl(log)
    assert [(r["model"], r["epoch"], r["test_acc"]) for r in rows] == [(0, 1, 0.1), (0, 2, 0.4), (1, 2, 0.6)]
    assert layout.final_accuracies(rows)["test_acc"][0] == pytest.approx(0.5)


def test_a_log_torn_before_appends_ended_torn_lines_keeps_the_row_after_it(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"model": 0, "epoch": 1}\n{"model": 0, "ep{"model": 0, "epoch": 2, "test_acc": 0.3}\n')
    assert [(r["epoch"], r.get("test_acc")) for r in layout.read_jsonl(log)] == [(1, None), (2, 0.3)]


# Checkpoints


def test_checkpoints_keep_two_epochs_and_a_truncated_one_is_repaired_by_training_again(tmp_path, capsys):
    x, y = synthetic_images(num_examples=64)
    run = tmp_path / "run"
    train_run(run, x, y, num_models=2, models_per_step=2, epochs=3, checkpoint_every=1, arch="mlp-tiny")
    folder = checkpoint.slice_dir(run, 0, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_00002.npz", "epoch_00003.npz"]
    last = folder / "epoch_00003.npz"
    with np.load(last) as archive:
        trained = {name: archive[name] for name in archive.files}
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(checkpoint.CorruptCheckpoint, match=f"{last}.*experiments/train.py --logdir={run}"):
        checkpoint.restore(folder, 3, None)
    train_run(run, x, y, num_models=2, models_per_step=2, epochs=3, checkpoint_every=1, arch="mlp-tiny")
    assert "epoch_00003.npz is not a whole checkpoint" in capsys.readouterr().out
    assert (folder / "epoch_00003.npz.corrupt").exists()
    checkpoint.verify(last)
    with np.load(last) as archive:  # epoch 3 trained again from epoch 2: the same state
        assert sorted(archive.files) == sorted(trained)
        for name in trained:
            np.testing.assert_array_equal(archive[name], trained[name])
    rows = layout.read_jsonl(run / layout.TRAIN_LOG)
    assert sorted((r["model"], r["epoch"]) for r in rows) == [(m, e) for m in range(2) for e in (1, 2, 3)]


# Locks


def test_a_slice_held_by_another_process_is_left_to_it(tmp_path, capsys):
    x, y = synthetic_images(num_examples=64)
    slice_lock = tmp_path / "run" / layout.CKPT_DIR / ".models_00002-00004.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from lira.run import lock
            held = lock.try_acquire({str(slice_lock)!r})
            print("held" if held else "refused", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run([sys.executable, "-c", f"from lira.run import lock; "
                                  f"print(lock.try_acquire({str(slice_lock)!r}) is None)"],
                                 capture_output=True, text=True, env=ENV, check=True)  # fmt: skip
        assert refused.stdout.strip() == "True"  # the race for one slice: one process gets it
        trained = train_run(
            tmp_path / "run", x, y, num_models=4, models_per_step=2, epochs=1, arch="mlp-tiny"
        )
    finally:
        holder.communicate("\n", timeout=60)
    out = capsys.readouterr().out
    assert sorted(trained) == [0, 1]
    assert f"models 2-3 are being trained by PID {holder.pid}" in out and "models 2-3 were left to" in out
    assert not list((tmp_path / "run" / layout.CKPT_DIR).glob(".models_00000-00002.lock"))  # released


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """6 mlp-tiny models on 96 8x8 images, one a slice, 1 epoch, trained and not queried."""
    root = tmp_path_factory.mktemp("trained")
    run_config = tiny_image_run_config(root, num_models=6, models_per_step=1).replace(
        arch="mlp-tiny", epochs=1
    )
    train.train(root / "run", run_config, progress=False)
    return root / "run"


def _query_process(logdir):
    code = (
        f"from lira import config; from lira.stages import query; "
        f"query.query({str(logdir)!r}, config.QueryConfig(queries=1), progress=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def test_two_query_runs_on_one_logdir_write_what_one_run_writes(trained_run, tmp_path):
    import shutil

    alone, shared = tmp_path / "alone", tmp_path / "shared"
    shutil.copytree(trained_run, alone)
    shutil.copytree(trained_run, shared)
    query.query(alone, config.QueryConfig(queries=1), progress=False)
    processes = [_query_process(shared) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    for m in range(6):
        name = f"{m:05d}.npy"
        assert (shared / "logits" / name).read_bytes() == (alone / "logits" / name).read_bytes(), m
    assert sorted(p.name for p in (shared / "logits").iterdir()) == [f"{m:05d}.npy" for m in range(6)]


def test_a_model_held_by_another_process_is_skipped(trained_run, tmp_path, capsys):
    import shutil

    logdir = Path(shutil.copytree(trained_run, tmp_path / "run"))
    with lock.try_acquire(logdir / "logits" / ".00001.lock"):
        written = query.query(logdir, config.QueryConfig(queries=1), progress=False)
    assert sorted(written) == [0, 2, 3, 4, 5]
    assert f"models 1 are being queried by PID {os.getpid()}" in capsys.readouterr().out
    assert query.query(logdir, config.QueryConfig(queries=1), progress=False) == [1]


# The report


def _attack(logdir, attacks):
    return attack.attack(logdir, config.AttackConfig(attacks=list(attacks), num_targets=2, bootstrap=0))


def test_a_second_attack_is_refused_naming_the_holder(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=6, num_examples=40)
    with lock.try_acquire(tmp_path / ".report.lock"):
        with pytest.raises(
            lock.LockHeld, match=f"The report of {tmp_path} is being written by PID {os.getpid()}"
        ):
            _attack(tmp_path, ["loss"])
    assert not (tmp_path / "report").exists()


def test_an_attack_on_fewer_attacks_leaves_no_stale_scores(tmp_path):
    synthetic.make_synthetic_rundir(tmp_path, num_models=6, num_examples=40)
    _attack(tmp_path, ["loss", "lira_offline"])
    assert sorted(p.name for p in (tmp_path / "report" / "scores").iterdir()) == [
        "lira_offline.npy",
        "loss.npy",
    ]
    _attack(tmp_path, ["loss"])
    assert sorted(p.name for p in (tmp_path / "report" / "scores").iterdir()) == ["loss.npy"]
    assert list(json.loads((tmp_path / "report" / "metrics.json").read_text())["attacks"]) == ["loss"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report")) == []


def test_a_failed_attack_leaves_the_old_report_whole(tmp_path, monkeypatch):
    from lira.report import writer

    synthetic.make_synthetic_rundir(tmp_path, num_models=6, num_examples=40)
    _attack(tmp_path, ["loss", "lira_offline"])
    before = {
        p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()
    }

    def broken(*args, **kwargs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(writer.plots, "per_class_risk", broken)  # after metrics, scores and ROC figures
    with pytest.raises(RuntimeError, match="killed midway"):
        _attack(tmp_path, ["loss"])
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.")] == []


# A full disk


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    code = textwrap.dedent(f"""
        import errno, os, sys
        from lira import cli
        from lira.run import layout

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        os.posix_fallocate = full
        sys.argv = ["inference.py"]
        cli.run(lambda argv: layout.PartialNpy({str(tmp_path / "logits" / "00007.npy")!r}, (1000, 2, 10)))
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"inference.py: error: No space left on device while writing {tmp_path / 'logits' / '00007.npy'}; free "
        "space and re-run the same command: nothing already written is lost."
    ]
    assert list((tmp_path / "logits").iterdir()) == []


def test_other_os_errors_keep_their_traceback():
    code = textwrap.dedent("""
        import errno, sys
        from lira import cli

        def main(argv):
            raise PermissionError(errno.EACCES, "Permission denied", "/some/file")

        sys.argv = ["attack.py"]
        cli.run(main)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "Permission denied" in result.stderr
