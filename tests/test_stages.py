"""The train stage's config checks, the split of models among processes, atomic writes, and the
query stage's views: those the models trained on by default, others only when asked for."""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_image_run_config

from lira import config
from lira.config import QueryConfig
from lira.run import layout, records
from lira.stages import query, train


@pytest.mark.parametrize(
    ("start", "stop", "per_step", "processes"), [(0, 16, 4, 2), (0, 10, 4, 3), (3, 11, 2, 4), (0, 2, 4, 3)]
)
def test_process_shares_cover_the_models_once(start, stop, per_step, processes):
    shares = [train.process_share(start, stop, per_step, p, processes) for p in range(processes)]
    covered = [m for a, b in shares for m in range(a, b)]
    assert covered == list(range(start, stop))
    assert all((b - a) % per_step == 0 for a, b in shares[:-1] if b < stop)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_shadows": 1}, "num_shadows must be >= 2"),
        ({"pkeep": 1.5}, "pkeep"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"arch": "vgg"}, "Unknown --arch='vgg'; valid:"),
        ({"augment": "strong"}, "--augment=strong: valid are none, mirror, weak"),
        ({"shadow_ids": "4:2"}, "shadow_ids=4:2"),
        ({"conv_impl": "fft"}, "--conv_impl=fft: valid are xla, im2col"),
        ({"models_per_step": -1}, "models_per_step"),
        ({"pool_size": 0}, "--pool_size must be >= 1, got 0."),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, changes, message):
    shadow_ids = changes.pop("shadow_ids", None)
    run_config = config.Config().replace(dataset="npz:/does/not/exist.npz", **changes)
    with pytest.raises(ValueError, match=message):
        train.train(tmp_path / "run", run_config, shadow_ids)
    assert not (tmp_path / "run").exists()


def test_atomic_writes_leave_no_temporary_and_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        layout.save_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    with pytest.raises(RuntimeError):
        layout.atomic_write(tmp_path / "b.npy", lambda f: (_ for _ in ()).throw(RuntimeError()), "wb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_figures_are_written_like_every_other_result(tmp_path):
    from matplotlib.figure import Figure

    from lira.report import plots

    old = os.umask(0o027)
    try:
        plots.save_figure(Figure(), tmp_path / "figure.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "figure.png").stat().st_mode) == 0o640
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


@pytest.fixture(scope="module")
def mirror_run(tmp_path_factory):
    """2 mlp-tiny models trained with --augment=mirror on 96 8x8 colour images, 1 epoch: a run
    whose trained views are the image and its mirror."""
    root = tmp_path_factory.mktemp("mirror_run")
    run_config = tiny_image_run_config(root, num_models=2, models_per_step=2, augment="mirror")
    run_config = run_config.replace(arch="mlp-tiny", epochs=1)
    train.train(root / "run", run_config, progress=False)
    return root / "run"


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("logits", "whitebox")))


@pytest.mark.parametrize(
    ("augment", "input_shape", "expected"),
    [("none", [8, 8, 3], 1), ("mirror", [8, 8, 3], 2), ("weak", [32, 32, 3], 18), ("weak", [64], 1)],
)
def test_default_queries_follow_the_runs_augmentation(augment, input_shape, expected):
    record = records.RunRecord(config.Config().replace(augment=augment), {"input_shape": input_shape})
    assert query.resolve_queries(record, 0) == expected


def test_query_records_the_views_it_made_and_refuses_untrained_ones(mirror_run, tmp_path):
    run = _copy(mirror_run, tmp_path)
    before = (run / layout.CONFIG).read_text()
    for kwargs in ({"queries": 18}, {"whitebox": True, "whitebox_queries": 18}):
        with pytest.raises(ValueError) as error:
            query.query(run, QueryConfig(**kwargs), progress=False)
        flag = "--whitebox_queries" if "whitebox" in kwargs else "--queries"
        assert str(error.value).startswith(f"{flag}=18 has 16 views the models never trained on (the run's "
                                           "--augment=mirror); valid: 0 (as trained: 2), 1, 2, or add "
                                           "--allow_untrained_views")  # fmt: skip
        assert (run / layout.CONFIG).read_text() == before and not (run / layout.LOGITS_DIR).exists()

    assert query.query(run, QueryConfig(), progress=False) == [0, 1]  # the default: as trained
    assert np.load(layout.logits_path(run, 0)).shape == (96, 2, 4)
    assert json.loads((run / layout.CONFIG).read_text())["inference"] == {"queries": 2}
    with pytest.raises(
        ValueError, match="holds logits for --queries=2; delete that folder to query with --queries=1"
    ):
        query.query(run, QueryConfig(queries=1), progress=False)


def test_untrained_views_are_queried_when_asked_for(mirror_run, tmp_path):
    run = _copy(mirror_run, tmp_path)
    assert query.query(run, QueryConfig(queries=18, allow_untrained_views=True), progress=False) == [0, 1]
    assert np.load(layout.logits_path(run, 1)).shape == (96, 18, 4)
    assert json.loads((run / layout.CONFIG).read_text())["inference"] == {"queries": 18}
