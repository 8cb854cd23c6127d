"""lira.data: the three dataset sources, their preprocessing, the pool slice and the errors."""

import signal
import socket
import time

import numpy as np
import pytest
from conftest import SHARED_DATA

from lira import data


def _assert_standardized(x, axes):
    x = x.astype(np.float64)  # float32 sums over millions of pixels are off by ~1e-3
    np.testing.assert_allclose(x.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=axes), 1.0, atol=1e-5)


# ---- digits (the default, no network) ----


def test_digits_shapes_dtypes_and_standardization():
    ds = data.load_dataset("digits")
    assert ds.name == "digits" and ds.is_image and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    _assert_standardized(ds.x_train, (0, 1, 2))
    # Stratified: every class keeps about its share in both splits.
    assert np.all(np.abs(np.bincount(ds.y_test) / 360 - np.bincount(ds.y_train) / 1437) < 0.01)
    assert ds.facts() == {
        "name": "digits", "num_examples": 1437, "num_test": 360, "num_classes": 10, "input_shape": [8, 8, 1],
    }  # fmt: skip


def test_digits_split_is_reproducible_and_pool_is_a_prefix():
    full, again = data.load_dataset("digits"), data.load_dataset("digits")
    np.testing.assert_array_equal(full.x_train, again.x_train)
    np.testing.assert_array_equal(full.y_test, again.y_test)
    pool = data.load_dataset("digits", pool_size=100)
    assert pool.x_train.shape == (100, 8, 8, 1) and pool.facts()["num_examples"] == 100
    # Statistics come from the whole train split, so the pool's inputs do not depend on its size.
    np.testing.assert_array_equal(pool.x_train, full.x_train[:100])
    np.testing.assert_array_equal(pool.y_train, full.y_train[:100])
    np.testing.assert_array_equal(pool.x_test, full.x_test)


@pytest.mark.parametrize("pool_size", [0, -3, 1438])
def test_pool_size_out_of_range_names_both_numbers(pool_size):
    with pytest.raises(data.DatasetError, match=rf"pool_size={pool_size}.*1437"):
        data.load_dataset("digits", pool_size=pool_size)


def test_raw_images_line_up_with_the_pool():
    raw = data.load_raw_images("digits", pool_size=50)
    assert raw.shape == (50, 8, 8, 1) and raw.dtype == np.uint8 and raw.max() == 255
    # Same order as load_dataset: the brightest standardized pixel is the brightest raw one.
    x = data.load_dataset("digits", pool_size=50).x_train
    assert np.array_equal(np.argmax(raw.reshape(50, -1), 1), np.argmax(x.reshape(50, -1), 1))


def test_unknown_spec_lists_the_choices():
    with pytest.raises(data.DatasetError, match="cifar11") as info:
        data.load_dataset("cifar11")
    for choice in ("digits", "npz:PATH", *data.TFDS_DATASETS):
        assert choice in str(info.value)


# ---- npz: a user's own data ----


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_images(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    x_train[..., 2] = 7  # a constant channel must become 0, not NaN
    y_train, y_test = np.arange(40) % 6, np.array([0, 5, 1])
    spec = _write_npz(tmp_path / "mine.npz", x_train=x_train, y_train=y_train,
                      x_test=x_train[:3], y_test=y_test)  # fmt: skip
    ds = data.load_dataset(spec, pool_size=30)
    assert ds.name == "mine" and ds.is_image and ds.num_classes == 6  # the largest train label + 1
    assert ds.x_train.shape == (30, 6, 6, 3) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32
    full = data.load_dataset(spec).x_train
    _assert_standardized(full[..., :2], (0, 1, 2))
    np.testing.assert_array_equal(full[..., 2], 0.0)
    expected = (x_train[..., 0] / 255 - (x_train[..., 0] / 255).mean()) / (x_train[..., 0] / 255).std()
    np.testing.assert_allclose(full[..., 0], expected, atol=1e-5)
    np.testing.assert_array_equal(data.load_raw_images(spec, pool_size=30), x_train[:30])


def test_npz_grayscale_gets_a_channel(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (20, 5, 5), dtype=np.uint8)
    spec = _write_npz(tmp_path / "gray.npz", x_train=x, y_train=np.arange(20) % 2,
                      x_test=x[:4], y_test=np.ones(4, np.int64))  # fmt: skip
    ds = data.load_dataset(spec)
    assert ds.x_train.shape == (20, 5, 5, 1) and ds.x_test.shape == (4, 5, 5, 1) and ds.num_classes == 2
    assert data.load_raw_images(spec).shape == (20, 5, 5, 1)


def test_npz_float_images_display_by_their_range(tmp_path):
    unit = np.random.default_rng(3).random((8, 4, 4, 3)).astype(np.float32)  # 0..1
    y = np.arange(8) % 2
    for name, x, pixel_max in (("unit", unit, 1.0), ("bytes", unit * 255.0, 255.0)):
        spec = _write_npz(tmp_path / f"{name}.npz", x_train=x, y_train=y, x_test=x, y_test=y)
        np.testing.assert_array_equal(
            data.load_raw_images(spec), np.round(x / pixel_max * 255).astype(np.uint8)
        )
        _assert_standardized(data.load_dataset(spec).x_train, (0, 1, 2))


def test_npz_tabular(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(loc=[1e6, -3.0, 0.0], scale=[5.0, 0.1, 0.0], size=(64, 3))  # feature 2 is constant
    spec = _write_npz(tmp_path / "table.npz", x_train=x, y_train=rng.integers(0, 3, 64).astype(float),
                      x_test=x[:8], y_test=np.full(8, 2.0))  # fmt: skip
    ds = data.load_dataset(spec)
    assert not ds.is_image and ds.x_train.shape == (64, 3) and ds.x_train.dtype == np.float32
    assert ds.facts()["input_shape"] == [3] and ds.num_classes == 3
    _assert_standardized(ds.x_train[:, :2], 0)
    np.testing.assert_array_equal(ds.x_train[:, 2], 0.0)
    assert data.load_raw_images(spec) is None


def test_npz_errors_name_the_file_and_the_fault(tmp_path):
    x, y = np.zeros((10, 4), np.float32), np.zeros(10, np.int32)
    with pytest.raises(data.DatasetError, match=r"absent\.npz.*no such file"):
        data.load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    spec = _write_npz(tmp_path / "nokey.npz", x_train=x, y_train=y, x_test=x)
    with pytest.raises(data.DatasetError, match=r"nokey\.npz lacks y_test"):
        data.load_dataset(spec)
    spec = _write_npz(tmp_path / "short.npz", x_train=x, y_train=y[:9], x_test=x, y_test=y)
    with pytest.raises(
        data.DatasetError, match=r"short\.npz: x_train has 10 examples but y_train has shape \(9,\)"
    ):
        data.load_dataset(spec)
    spec = _write_npz(tmp_path / "neg.npz", x_train=x, y_train=y - 1, x_test=x, y_test=y)
    with pytest.raises(data.DatasetError, match=r"neg\.npz: y_train has a negative label"):
        data.load_dataset(spec)
    spec = _write_npz(tmp_path / "wide.npz", x_train=x, y_train=y, x_test=x[:, :3], y_test=y)
    with pytest.raises(data.DatasetError, match=r"wide\.npz: x_train examples have shape \(4,\)"):
        data.load_dataset(spec)
    spec = _write_npz(tmp_path / "frac.npz", x_train=x, y_train=y + 0.5, x_test=x, y_test=y)
    with pytest.raises(data.DatasetError, match=r"frac\.npz: y_train must hold integer class labels"):
        data.load_dataset(spec)
    nchw = np.zeros((10, 3, 8, 8), np.uint8)
    spec = _write_npz(tmp_path / "nchw.npz", x_train=nchw, y_train=y, x_test=nchw, y_test=y)
    with pytest.raises(data.DatasetError, match=r"channels first .*x_train\.transpose\(0, 2, 3, 1\)"):
        data.load_dataset(spec)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(data.DatasetError, match=r"junk\.npz is not a readable \.npz"):
        data.load_dataset(f"npz:{tmp_path / 'junk.npz'}")


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10_6k.npz").exists(),
    reason=f"no offline data at {SHARED_DATA} (only the development machines have ../shared/data)",
)
def test_shared_cifar10_subset():
    ds = data.load_dataset(f"npz:{SHARED_DATA / 'cifar10_6k.npz'}")
    assert ds.x_train.shape == (5170, 32, 32, 3) and ds.x_test.shape == (1017, 32, 32, 3)
    assert ds.num_classes == 10 and ds.name == "cifar10_6k"
    _assert_standardized(ds.x_train, (0, 1, 2))


# ---- tensorflow-datasets ----


@pytest.fixture
def no_network(monkeypatch):
    """Records, and refuses, every attempt to open a connection from Python.

    TF's own C++ file systems bypass this; tfds keeps them off GCS by default, and the elapsed
    time check would catch a download retry loop anyway.
    """
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def deadline():
    """Fails the test instead of letting a regression (a download retry loop) hang the suite."""

    def expire(signum, frame):
        raise TimeoutError("the tfds load did not return within 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_unprepared_tfds_fails_fast_with_what_to_do(tmp_path, no_network, deadline):
    pytest.importorskip("tensorflow_datasets")
    start = time.monotonic()
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "'cifar10' is not prepared" in message and str(tmp_path) in message
    assert "download_and_prepare()" in message and "--data_dir" in message and "npz:PATH" in message
    assert no_network == [] and list(tmp_path.iterdir()) == []  # no connection tried, nothing written


def test_tfds_loads_through_the_real_code_path(tmp_path, no_network, deadline):
    """mock_data fakes only the records; is_prepared, as_dataset and batching run for real.

    mock_data leaves is_prepared() False, so write the dataset's real metadata (code-only,
    no network) where a prepared copy would keep it; mock_data then reads that folder.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        ds = data.load_dataset("mnist", data_dir=str(tmp_path), pool_size=10)
        raw = data.load_raw_images("mnist", data_dir=str(tmp_path), pool_size=10)
    assert ds.facts() == {
        "name": "mnist", "num_examples": 10, "num_test": 12, "num_classes": 10, "input_shape": [28, 28, 1],
    }  # fmt: skip
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert np.all((ds.y_train >= 0) & (ds.y_train < 10))
    assert raw.shape == (10, 28, 28, 1) and raw.dtype == np.uint8
    assert no_network == []
