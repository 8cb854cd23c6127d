"""Training augmentation and the query views (lira/training/augment.py, lira/run/views.py): the
views a query set names are the pixels make_queries makes, and the views training draws are
those trained_views says."""

import itertools

import jax
import numpy as np
import pytest

from lira.config import AUGMENTS, QUERY_COUNTS
from lira.run import views
from lira.training import augment


def test_shift_matches_numpy_reflect_pad():
    images = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for dy, dx in [(0, 0), (-4, 3), (2, -1), (4, 4)]:
        expected = padded[:, 4 + dy : 4 + dy + 6, 4 + dx : 4 + dx + 6]
        np.testing.assert_array_equal(augment.shift(images, dy, dx), expected)


@pytest.mark.parametrize("count", QUERY_COUNTS)
def test_queries(count):
    images = np.random.default_rng(0).normal(size=(3, 10, 10, 2)).astype(np.float32)
    queries = np.asarray(augment.make_queries(images, count))
    assert queries.shape == (3, count, 10, 10, 2)
    np.testing.assert_array_equal(queries[:, 0 if count < 18 else count // 4], images)  # the unshifted view
    if count >= 2:
        mirrored = [i for i, (m, dy, dx) in enumerate(views.query_offsets(count)) if m and dy == dx == 0]
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


def _drawn_views(kind: str, num_draws: int = 4000) -> set[tuple[bool, int, int]]:
    """The (mirror, dy, dx) views that `augment` actually draws, found by matching each augmented
    copy of one 16x16 image against every candidate view made by hand with numpy (reflect padding;
    on images of 8 pixels some shifts of the image equal shifts of its mirror)."""
    image = np.random.default_rng(1).normal(size=(16, 16, 1)).astype(np.float32)
    candidates = {}
    for mirror in (False, True):
        padded = np.pad(image[:, ::-1] if mirror else image, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        for dy, dx in itertools.product(range(-4, 5), repeat=2):
            candidates[padded[4 + dy : 20 + dy, 4 + dx : 20 + dx].tobytes()] = (mirror, dy, dx)
    assert len(candidates) == 162  # every view differs, so a copy names its view
    drawn = np.asarray(augment.augment(np.repeat(image[None], num_draws, 0), jax.random.key(3), kind))
    return {candidates[copy.tobytes()] for copy in drawn}


@pytest.mark.parametrize("kind", AUGMENTS)
def test_trained_views_are_what_training_draws(kind):
    # 4,000 draws miss one of weak's 162 equally likely views with probability < 1e-8.
    assert views.trained_views(kind) == _drawn_views(kind)


@pytest.mark.parametrize(
    ("kind", "is_image", "counts", "default"),
    [
        ("none", True, (1,), 1),
        ("mirror", True, (1, 2), 2),
        ("weak", True, (1, 2, 18, 162), 18),
        ("weak", False, (1,), 1),
        ("mirror", False, (1,), 1),
    ],
)
def test_default_and_valid_queries_follow_the_augmentation(kind, is_image, counts, default):
    assert views.trained_query_counts(kind, is_image) == counts
    for count in counts:  # a valid count is every one of its views trained (reference: the sets)
        assert not is_image or set(views.query_offsets(count)) <= views.trained_views(kind)
        assert views.resolve_queries(count, kind, is_image) == count
    assert views.resolve_queries(0, kind, is_image) == default
    assert default in counts


def test_untrained_views_are_refused_in_one_line_unless_allowed():
    with pytest.raises(ValueError) as error:
        views.resolve_queries(18, "mirror", True)
    assert str(error.value) == (
        "--queries=18 has 16 views the models never trained on (the run's --augment=mirror); valid: "
        "0 (as trained: 2), 1, 2, or add --allow_untrained_views to query them anyway."
    )
    with pytest.raises(
        ValueError,
        match=r"--whitebox_queries=2 has 1 view the .* --augment=none\); valid: 0 \(as trained: 1\), 1, or add",
    ):
        views.resolve_queries(2, "none", True, flag="--whitebox_queries")
    assert views.resolve_queries(18, "mirror", True, allow_untrained_views=True) == 18
    assert views.resolve_queries(162, "none", True, allow_untrained_views=True) == 162
    # Non-image data has one query, whatever is allowed.
    with pytest.raises(ValueError, match="--queries=2: non-image data has a single query; valid: 0"):
        views.resolve_queries(2, "weak", False, allow_untrained_views=True)
