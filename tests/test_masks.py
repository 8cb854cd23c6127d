import numpy as np
import pytest

from lira.training import masks


def test_balanced_per_example_and_reproducible():
    keep = masks.make_keep(16, 1000, 0.5, seed=3)
    assert keep.dtype == bool and keep.shape == (16, 1000)
    np.testing.assert_array_equal(keep.sum(axis=0), 8)
    np.testing.assert_array_equal(keep, masks.make_keep(16, 1000, 0.5, seed=3))
    assert not np.array_equal(keep, masks.make_keep(16, 1000, 0.5, seed=4))
    # Each model trains on about half the pool.
    assert np.all(np.abs(keep.sum(axis=1) - 500) < 80)


def test_pkeep_other_than_half():
    keep = masks.make_keep(10, 200, 0.3, seed=0)
    np.testing.assert_array_equal(keep.sum(axis=0), 3)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_bad_pkeep(bad):
    with pytest.raises(ValueError, match="pkeep"):
        masks.make_keep(4, 10, bad)


def test_parse_slice():
    assert masks.parse_slice(None, 8) == (0, 8)
    assert masks.parse_slice("2:5", 8) == (2, 5)
    assert masks.parse_slice(":3", 8) == (0, 3)
    assert masks.parse_slice("6:", 8) == (6, 8)
    for bad in ["5:2", "0:9", "a:b", "3"]:
        with pytest.raises(ValueError, match="shadow_ids"):
            masks.parse_slice(bad, 8)
