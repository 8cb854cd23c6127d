"""Fault injection on the stage scripts: a kill -9 or a full disk at every write point,
two writers on one run directory, corrupted and changed inputs. After each, re-running the same
command must give what an uninterrupted run gives, bit for bit, and an error must be one line.

tests/faults_runner.py runs a script with the fault at its K-th write point; a first, unfaulted
run of each stage (the `reference` fixture) lists the points; tests/faults_harness.py runs the
scripts and compares run directories. Each test starts stage processes (seconds each): the fast
tier runs two points of each stage, a full disk mid-inference, two inference writers and the check
of how temporaries are created; the sweeps and the other cases are marked slow. A sweep takes
every SWEEP_STRIDE-th write point (the kill and the full-disk sweeps different ones, so together
they cover a sixth of the points at the default 12, within CI's time); LIRA_FAULT_STRIDE=1
sweeps every point (docs/testing.md says when that was last run, and what it found).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from faults_harness import (
    KILLED,
    OLD_ATTACK,
    assert_readable,
    assert_same,
    copy_run,
    ok,
    one_line_error,
    points,
    snapshot,
    stage,
    write_data,
)  # fmt: skip

from lira.run import layout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, each stage counted: copies of the run directory after train
    ("trained"), inference ("queried"), an attack with OLD_ATTACK ("old_report") and with ATTACK
    ("attacked"), their snapshots, and each stage's write points (the last attack's over the old
    report)."""
    root = tmp_path_factory.mktemp("faults")
    ref = {"root": root, "data": write_data(root / "data.npz")}
    run = root / "run"
    for name, step in [
        ("trained", "train"),
        ("queried", "inference"),
        ("old_report", "old"),
        ("attacked", "attack"),
    ]:
        counted = root / f"{step}.points"
        if step == "old":
            ok(stage("attack", run, *OLD_ATTACK))
        else:
            ok(stage(step, run, data=ref["data"], count=counted))
            ref[f"{step}_points"] = points(counted)
        ref[name] = copy_run(run, root / name)
        ref[f"{name}_snapshot"] = snapshot(run)
    return ref


def sample(items: list, count: int) -> list:
    """`count` evenly spaced items, the last included."""
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)] if items else []


def fault_and_resume(reference, tmp_path, step: str, fault: str, at: int) -> None:
    """Runs `step` with `fault` at write point `at` on the directory the stage before it left,
    then re-runs it unfaulted; the result must equal the uninterrupted run's."""
    before, after = {"train": (None, "trained"), "inference": ("trained", "queried"),
                     "attack": ("old_report", "attacked")}[step]  # fmt: skip
    run = tmp_path / f"run_{at}"
    if before is not None:
        copy_run(reference[before], run)
    faulted = stage(step, run, data=reference["data"], fault=fault, at=at)
    if fault == "kill":
        assert faulted.returncode in (KILLED, 0), faulted.stderr[-3000:]
    else:
        one_line_error(faulted, step, "No space left on device")
    assert_readable(run)
    if step == "attack" and (run / layout.REPORT_DIR).exists():  # the old report or the new, never a mix
        old, new = (snapshot(reference[n], layout.REPORT_DIR) for n in ("old_report", "attacked"))
        assert snapshot(run, layout.REPORT_DIR) in (old, new), f"a mixed report after a {fault} at {at}"
    ok(stage(step, run, data=reference["data"]))
    assert_same(run, reference[f"{after}_snapshot"])


def fast_points(reference, step):
    """Two write points of `step`: one mid-run, and the last."""
    return [k for k, *_ in sample(reference[f"{step}_points"], 3)[1:]]


@pytest.mark.parametrize("step", ["train", "inference", "attack"])
def test_a_kill_at_sampled_write_points_resumes_bit_identical(reference, tmp_path, step):
    for at in fast_points(reference, step):
        fault_and_resume(reference, tmp_path, step, "kill", at)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["train", "inference", "attack"])
def test_a_kill_at_every_write_point_resumes_bit_identical(reference, tmp_path, step):
    sweep(reference, tmp_path, step, "kill")


@pytest.mark.parametrize(
    "step",
    [
        pytest.param("train", marks=pytest.mark.slow),
        "inference",
        pytest.param("attack", marks=pytest.mark.slow),
    ],
)
def test_a_full_disk_is_one_line_and_a_rerun_completes(reference, tmp_path, step):
    for at in fast_points(reference, step)[:1]:
        fault_and_resume(reference, tmp_path, step, "enospc", at)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["train", "inference", "attack"])
def test_a_full_disk_at_every_write_point(reference, tmp_path, step):
    sweep(reference, tmp_path, step, "enospc")


SWEEP_STRIDE = int(os.environ.get("LIRA_FAULT_STRIDE", "12"))


def sweep(reference, tmp_path, step: str, fault: str) -> None:
    """fault_and_resume at every SWEEP_STRIDE-th write point of `step` (starting at the first for a
    kill, the second for a full disk) and at its last; fails naming every point that failed."""
    failed, all_points = [], reference[f"{step}_points"]
    chosen = all_points[(fault == "enospc") % SWEEP_STRIDE :: SWEEP_STRIDE]
    for at, call, path, _ in chosen + [p for p in all_points[-1:] if p not in chosen]:
        try:
            fault_and_resume(reference, tmp_path, step, fault, at)
        except AssertionError as error:
            failed.append(f"{at} ({call} {path}): {str(error).splitlines()[0]}")
    assert not failed, f"{len(failed)} of {len(reference[f'{step}_points'])} points:\n" + "\n".join(failed)


def test_temporaries_are_created_exclusively(reference):
    """A temporary is created with O_EXCL (so a planted symlink or file makes it fail, never be
    followed or truncated), and never opened by name for writing afterwards."""
    for step in ("train", "inference", "attack"):
        for k, call, path, how in reference[f"{step}_points"]:
            name = Path(path).name
            if name.startswith(".") and not name.endswith(".lock") and call != "os.fsync":
                created = call == "os.open" or (call == "open" and "excl" in how)
                later = call in ("os.replace", "os.rename", "os.posix_fallocate", "np.save", "np.savez")
                assert (created and "excl" in how) or later, f"{step} point {k}: {call} {path} {how}"


@pytest.mark.slow
def test_a_symlink_at_the_old_temporary_name_is_not_followed(reference, tmp_path):
    run = copy_run(reference["trained"], tmp_path / "run")
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"precious")
    (run / layout.LOGITS_DIR).mkdir()
    for m in range(4):
        (run / layout.LOGITS_DIR / f".{m:05d}.partial.npy").symlink_to(victim)
    ok(stage("inference", run))
    assert victim.read_bytes() == b"precious"
    for m in range(4):
        assert (
            snapshot(run, layout.LOGITS_DIR)[f"logits/{m:05d}.npy"]
            == reference["queried_snapshot"][f"logits/{m:05d}.npy"]
        )


def wait_for(folder: Path, pattern: str, process, timeout_s: float = 300) -> None:
    """Until a file matching `pattern` is in `folder` (the slow writer holds a unit), so that the
    second writer starts while the first writes."""
    deadline = time.monotonic() + timeout_s
    while not (folder.exists() and any(folder.glob(pattern))):
        assert process.poll() is None and time.monotonic() < deadline, "the first writer took no lock"
        time.sleep(0.05)


def test_two_inference_processes_write_what_one_writes(reference, tmp_path):
    """A slow writer (every write point delayed) and a normal one on one run directory: the second
    skips what the first holds, and together they write the one writer's logits, no zero rows."""
    run = copy_run(reference["trained"], tmp_path / "run")
    slow = stage("inference", run, fault="sleep", wait=False)
    wait_for(run / layout.LOGITS_DIR, ".0*.lock", slow)
    fast = stage("inference", run, wait=False)
    for process in (slow, fast):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    assert_same(run, reference["queried_snapshot"])


@pytest.mark.slow
def test_two_trainers_split_the_slices(reference, tmp_path):
    """Two trainers with one model a slice on one run directory train each slice once, and the
    result is one trainer's."""
    one = tmp_path / "one"
    ok(stage("train", one, "--models_per_step=1", data=reference["data"]))
    run = tmp_path / "run"
    processes = [
        stage("train", run, "--models_per_step=1", data=reference["data"], fault="sleep", wait=False)
    ]
    wait_for(run / "ckpt", ".models_*.lock", processes[0])
    processes.append(stage("train", run, "--models_per_step=1", data=reference["data"], wait=False))
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    assert_same(run, snapshot(one))
    lines = (run / layout.TRAIN_LOG).read_text().splitlines()
    assert len(lines) == 4 * 2, "a slice was trained twice"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_and_train_repairs_it(reference, tmp_path):
    run = copy_run(reference["trained"], tmp_path / "run")
    checkpoint = run / "ckpt" / "models_00002-00004" / "epoch_00002.npz"
    truncate(checkpoint)
    one_line_error(stage("inference", run), "inference", checkpoint.name)
    ok(stage("train", run, data=reference["data"]))
    assert_same(
        run, reference["trained_snapshot"], "ckpt", set_aside=True
    )  # config.json may hold the query count
    ok(stage("inference", run))
    assert_same(run, reference["queried_snapshot"], set_aside=True)


@pytest.mark.slow
def test_truncated_logits_are_named_and_inference_repairs_them(reference, tmp_path):
    run = copy_run(reference["queried"], tmp_path / "run")
    truncate(layout.logits_path(run, 1))
    one_line_error(stage("attack", run), "attack", "00001.npy")
    ok(stage("inference", run))
    assert_same(run, reference["queried_snapshot"], set_aside=True)


@pytest.mark.slow
def test_a_truncated_config_is_named_and_train_repairs_it(reference, tmp_path):
    run = copy_run(reference["trained"], tmp_path / "run")
    truncate(run / layout.CONFIG)
    one_line_error(stage("inference", run), "inference", layout.CONFIG)
    ok(stage("train", run, data=reference["data"]))
    assert_same(run, reference["trained_snapshot"], set_aside=True)


def first_point_after(points, calls: tuple[str, ...], path: str) -> int:
    """The write point right after the first of `calls` on `path`."""
    return next(k for k, call, p, _ in points if call in calls and p == path) + 1


SLICE_0_DONE = (("os.replace", "os.rename"), "ckpt/models_00000-00002/epoch_00002.npz")


@pytest.mark.slow
def test_a_changed_dataset_is_refused_on_resume(reference, tmp_path):
    """Killed once a slice is finished, then y_train permuted in the npz: the resume is refused in
    one line, and labels.npy stays as written."""
    data = write_data(tmp_path / "data.npz")
    run = tmp_path / "run"
    at = first_point_after(reference["train_points"], *SLICE_0_DONE)
    assert stage("train", run, data=data, fault="kill", at=at).returncode == KILLED
    labels = (run / layout.LABELS).read_bytes()
    write_data(data, permuted=True)
    one_line_error(stage("train", run, data=data), "train")
    assert (run / layout.LABELS).read_bytes() == labels
    assert not (run / "ckpt" / "models_00002-00004" / "epoch_00002.npz").exists()


@pytest.mark.slow
def test_a_changed_dataset_is_refused_by_inference(reference, tmp_path):
    data = write_data(tmp_path / "data.npz")
    run = tmp_path / "run"
    ok(stage("train", run, data=data))
    write_data(data, permuted=True)
    one_line_error(stage("inference", run), "inference")
    assert not (run / layout.LOGITS_DIR).exists() or not any((run / layout.LOGITS_DIR).glob("[0-9]*.npy"))


@pytest.mark.slow
def test_rerunning_train_keeps_the_inference_record(reference, tmp_path):
    run = copy_run(reference["queried"], tmp_path / "run")
    ok(stage("train", run, data=reference["data"]))
    assert json.loads((run / layout.CONFIG).read_text())["inference"] == {"queries": 1}
    assert "Wrote logits of 0 models" in ok(stage("inference", run)).stdout
    assert_same(run, reference["queried_snapshot"])


@pytest.mark.slow
def test_a_failed_first_run_does_not_block_the_corrected_command(reference, tmp_path):
    run = tmp_path / "run"
    one_line_error(
        stage("train", run, "--batch_size=100000000", data=reference["data"]), "train", "--batch_size"
    )
    ok(stage("train", run, data=reference["data"]))
    assert_same(run, reference["trained_snapshot"])


@pytest.mark.slow
def test_a_torn_log_line_loses_no_row(reference, tmp_path):
    """A kill mid-append leaves a line without its end; the resumed run's rows must not be glued
    to it (every (model, epoch) row of the uninterrupted run is there, and the attack's test
    accuracy is the last epoch's)."""
    run = tmp_path / "run"
    at = first_point_after(reference["train_points"], ("os.fsync",), layout.TRAIN_LOG)
    assert stage("train", run, data=reference["data"], fault="kill", at=at).returncode == KILLED
    with open(run / layout.TRAIN_LOG, "a") as log:
        log.write('{"epoch": 2, "loss": 0.5, "mod')
    ok(stage("train", run, data=reference["data"]))
    assert_same(run, reference["trained_snapshot"])
    ok(stage("inference", run))
    ok(stage("attack", run))
    assert_same(run, reference["attacked_snapshot"], layout.REPORT_DIR)


@pytest.mark.slow
def test_a_kill_between_a_checkpoint_and_its_log_rows_loses_no_row(reference, tmp_path):
    """Killed once a slice's last checkpoint is renamed into place, before its rows are logged:
    the resumed run must still log them (else the attack reports an earlier epoch's accuracy)."""
    run = tmp_path / "run"
    at = first_point_after(reference["train_points"], *SLICE_0_DONE)
    assert stage("train", run, data=reference["data"], fault="kill", at=at).returncode == KILLED
    ok(stage("train", run, data=reference["data"]))
    assert_same(run, reference["trained_snapshot"])


EVIL = """
from pathlib import Path
Path("imported").write_text("evilmod ran")
def net(num_classes, conv_impl, dtype):
    raise SystemExit("evilmod ran")
"""


@pytest.mark.slow
def test_an_architecture_in_config_json_is_never_imported(reference, tmp_path):
    run = copy_run(reference["trained"], tmp_path / "run")
    record = json.loads((run / layout.CONFIG).read_text())
    record["flags"]["arch"] = "evilmod:net"
    (run / layout.CONFIG).write_text(json.dumps(record))
    (tmp_path / "evilmod.py").write_text(EVIL)
    result = stage("inference", run, cwd=tmp_path)
    assert not (tmp_path / "imported").exists(), "inference imported a module named by config.json"
    one_line_error(result, "inference", "evilmod:net")
