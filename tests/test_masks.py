import numpy as np
import pytest
from scipy import stats

from lira.run import masks


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


def _chi_square_pvalue(counts: np.ndarray, trials: int, p: float) -> float:
    """Goodness of fit of observed sums `counts` to Binomial(trials, p), bins of expected < 5 pooled
    into their neighbours."""
    observed = np.bincount(counts, minlength=trials + 1).astype(float)
    expected = stats.binom.pmf(np.arange(trials + 1), trials, p) * len(counts)
    merged_observed, merged_expected, o, e = [], [], 0.0, 0.0
    for obs, exp in zip(observed, expected):
        o, e = o + obs, e + exp
        if e >= 5:
            merged_observed.append(o)
            merged_expected.append(e)
            o, e = 0.0, 0.0
    merged_observed[-1] += o
    merged_expected[-1] += e
    return stats.chisquare(merged_observed, merged_expected).pvalue


@pytest.mark.parametrize("pkeep", [0.5, 0.3])
def test_canary_columns_are_independent_bernoulli_and_the_rest_stay_balanced(pkeep):
    num_models, num_examples = 16, 3000
    canaries = np.sort(np.random.default_rng(9).choice(num_examples, 2000, replace=False))
    keep = masks.make_keep(num_models, num_examples, pkeep, seed=5, canaries=canaries)
    others = np.setdiff1d(np.arange(num_examples), canaries)
    # Every other column is exactly as in a run without canaries: balanced.
    np.testing.assert_array_equal(
        keep[:, others], masks.make_keep(num_models, num_examples, pkeep, seed=5)[:, others]
    )
    np.testing.assert_array_equal(keep[:, others].sum(axis=0), round(pkeep * num_models))
    # Canary columns: sums vary as Binomial(M, pkeep) (M independent draws per canary), each model's
    # canary count as Binomial(K, pkeep) (independent draws across canaries), mean pkeep.
    column_sums = keep[:, canaries].sum(axis=0)
    assert len(np.unique(column_sums)) > 5
    assert _chi_square_pvalue(column_sums, num_models, pkeep) > 1e-3
    row_sums = keep[:, canaries].sum(axis=1)
    assert abs(row_sums.mean() - pkeep * len(canaries)) < 4 * np.sqrt(
        pkeep * (1 - pkeep) * len(canaries) / num_models
    )
    assert abs(keep[:, canaries].mean() - pkeep) < 4 * np.sqrt(pkeep * (1 - pkeep) / keep[:, canaries].size)
    # No dependence between two models' canary draws (a balanced column would correlate them negatively).
    correlation = np.corrcoef(keep[:, canaries].astype(float))[np.triu_indices(num_models, 1)]
    assert np.abs(correlation).max() < 4.5 / np.sqrt(len(canaries))
    balanced = np.corrcoef(keep[:, others].astype(float))[np.triu_indices(num_models, 1)]
    assert balanced.mean() < -0.5 / num_models  # the contrast: balanced columns correlate models (-1/(M-1))
    # From the seed (and the canaries) alone: every process agrees.
    np.testing.assert_array_equal(
        keep, masks.make_keep(num_models, num_examples, pkeep, seed=5, canaries=canaries)
    )
    other_seed = masks.make_keep(num_models, num_examples, pkeep, seed=6, canaries=canaries)
    assert not np.array_equal(other_seed[:, canaries], keep[:, canaries])


def test_chi_square_check_rejects_balanced_columns():
    # The check above can fail: balanced columns (every sum M/2) are far from Binomial(M, 1/2).
    keep = masks.make_keep(16, 2000, 0.5, seed=5)
    assert _chi_square_pvalue(keep.sum(axis=0), 16, 0.5) < 1e-6


@pytest.mark.parametrize("bad", [[3, 3], [-1], [10]])
def test_bad_canary_indices(bad):
    with pytest.raises(ValueError, match="canaries must be distinct pool indices"):
        masks.make_keep(4, 10, 0.5, canaries=np.array(bad))
