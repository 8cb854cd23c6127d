"""The train stage's config checks, the split of models among processes, atomic writes."""

import os
import stat

import pytest

from lira import config
from lira.run import layout
from lira.stages import train


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
        train.train(run_config, tmp_path / "run", shadow_ids)
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
