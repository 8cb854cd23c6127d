import jax
import numpy as np
import pytest

from lira.training import augment


def test_shift_matches_numpy_reflect_pad():
    images = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for dy, dx in [(0, 0), (-4, 3), (2, -1), (4, 4)]:
        expected = padded[:, 4 + dy : 4 + dy + 6, 4 + dx : 4 + dx + 6]
        np.testing.assert_array_equal(augment.shift(images, dy, dx), expected)


@pytest.mark.parametrize("count", augment.QUERY_COUNTS)
def test_queries(count):
    images = np.random.default_rng(0).normal(size=(3, 10, 10, 2)).astype(np.float32)
    queries = np.asarray(augment.make_queries(images, count))
    assert queries.shape == (3, count, 10, 10, 2)
    np.testing.assert_array_equal(queries[:, 0 if count < 18 else count // 4], images)  # the unshifted view
    if count >= 2:
        mirrored = [i for i, (m, dy, dx) in enumerate(augment.query_offsets(count)) if m and dy == dx == 0]
        np.testing.assert_array_equal(queries[:, mirrored[0]], images[:, :, ::-1])
    assert len({q.tobytes() for q in queries[0]}) == count  # all views differ


def test_queries_reject_unknown_count_and_tabular_views():
    with pytest.raises(ValueError, match="valid: 1, 2, 18, 162"):
        augment.make_queries(np.zeros((1, 8, 8, 1)), 5)
    with pytest.raises(ValueError, match="single query"):
        augment.make_queries(np.zeros((2, 7)), 2)
    assert augment.make_queries(np.zeros((2, 7)), 1).shape == (2, 1, 7)


def test_weak_augment_flips_and_shifts_per_example():
    images = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype(np.float32)
    out = np.asarray(augment.augment(images, jax.random.key(0), "weak"))
    assert out.shape == images.shape
    unchanged = [np.array_equal(a, b) for a, b in zip(out, images, strict=True)]
    assert 0 < sum(unchanged) < 16  # most examples move, some draw the identity
    assert np.array_equal(augment.augment(images, jax.random.key(0), "none"), images)
