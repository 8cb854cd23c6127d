"""DP-SGD in the trainer (lira/training/{dpsgd,sampling,step}.py) and its accounting (lira/dp.py):
clipping, noise, Poisson batches, the accounting, vectorized == single model, canaries, and the
refusals."""

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import synthetic_images, train_run
from jax_privacy import accounting as jp_accounting

from lira import dp
from lira.config import Config, TrainingConfig
from lira.data import mislabel
from lira.run import masks
from lira.stages import train
from lira.training import dpsgd, sampling, step
from lira.training.models import get_model, uses_batch_norm


def _model_and_params(arch="cnn-tiny", num_classes=3, shape=(8, 8, 1)):
    model = get_model(arch, num_classes)
    params = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)["params"]
    return model, params


def _norm(tree) -> float:
    return float(optax.tree.norm(tree))


@pytest.mark.parametrize("method", ["per_example", "ghost"])
@pytest.mark.parametrize("arch", ["cnn-tiny", "mlp-tiny"])
@pytest.mark.slow
def test_every_clipped_per_example_gradient_is_within_the_clip_norm(arch, method):
    x, y = synthetic_images(num_examples=12)
    model, params = _model_and_params(arch)
    clip = 0.05  # well below these examples' gradient norms, so clipping binds
    clipped_sum = jax.jit(dpsgd.make_clipped_sum(model, clip, method))
    raw = jax.jit(
        lambda p, xi, yi: jax.grad(
            lambda q: step.cross_entropy(model.apply({"params": q}, xi[None]), yi[None])[0]
        )(p)
    )
    binding = 0
    for i in range(len(y)):
        # Every other example is padding: the sum is example i's clipped gradient.
        alone = np.arange(len(y)) != i
        grad, _, _ = clipped_sum(params, x, y, is_padding_example=jnp.asarray(alone))
        unclipped = raw(params, x[i], y[i])
        assert _norm(grad) <= clip * (1 + 1e-5)
        # Direction kept: the clipped gradient is the raw one scaled by min(1, C / ||g||).
        scale = min(1.0, clip / _norm(unclipped))
        np.testing.assert_allclose(
            np.concatenate([np.ravel(v) for v in jax.tree.leaves(grad)]),
            scale * np.concatenate([np.ravel(v) for v in jax.tree.leaves(unclipped)]), rtol=1e-4, atol=1e-7,
        )  # fmt: skip
        binding += _norm(unclipped) > clip
    assert binding == len(y)
    # Padding contributes nothing: all padding sums to zero.
    grad, _, _ = clipped_sum(params, x, y, is_padding_example=jnp.ones(len(y), bool))
    assert _norm(grad) == 0


@pytest.mark.parametrize(
    "arch, shape",
    [("mlp-tiny", (8, 8, 1)), ("mlp", (6, 6, 2)), ("cnn-tiny", (8, 8, 1)), ("cnn32", (16, 16, 3))],
)
@pytest.mark.slow
def test_ghost_clipping_gives_jax_privacys_clipped_sum(arch, shape):
    x, y = synthetic_images(num_examples=10, shape=shape)
    model, params = _model_and_params(arch, shape=shape)
    assert dpsgd.ghost_applies(model, params, jnp.asarray(x[0]))
    assert dpsgd.ghost_applies(model, params, jnp.asarray(x[0]), dense_only=True) == arch.startswith("mlp")
    padding = jnp.asarray(np.arange(10) >= 7)  # three padding rows
    for clip in (1e-3, 1.0, 1e3):  # every gradient clipped, some, none
        reference = dpsgd.make_clipped_sum(model, clip, "per_example")(
            params, x, y, is_padding_example=padding
        )
        ghost = dpsgd.make_clipped_sum(model, clip, "ghost")(params, x, y, is_padding_example=padding)
        for a, b in zip(jax.tree.leaves(reference[0]), jax.tree.leaves(ghost[0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6 * clip)
        np.testing.assert_allclose(reference[1], ghost[1], rtol=1e-5)
        np.testing.assert_array_equal(reference[2], ghost[2])


@pytest.mark.slow
def test_noise_has_the_accounted_scale_and_differs_between_models():
    config = TrainingConfig(batch_size=8, epochs=1, dp_noise_multiplier=2.0, dp_clip_norm=0.5, lr=1.0,
                            momentum=0.0, weight_decay=0.0, warmup_epochs=0)  # fmt: skip
    tx = step.make_optimizer(config, 10)
    model, _ = _model_and_params("mlp-tiny")
    init = jax.vmap(step.make_init(model, tx, jnp.zeros((8, 8, 1)), dp=True), (0, None))
    states = init(jnp.arange(2), 0)
    zeros = jax.tree.map(jnp.zeros_like, states.params)
    updates, _ = jax.vmap(tx.update)(zeros, states.opt_state, states.params)  # an empty draw: noise alone
    flat = [np.concatenate([np.ravel(v[m]) for v in jax.tree.leaves(updates)]) for m in range(2)]
    # sigma C / B, the noise on the gradient, which lr 1 without momentum makes the update.
    expected = config.dp_noise_multiplier * config.dp_clip_norm / config.batch_size
    for noise in flat:
        assert noise.size > 1000
        assert abs(noise.std() / expected - 1) < 0.1
        assert abs(noise.mean()) < 4 * expected / math.sqrt(noise.size)
    assert not np.allclose(flat[0], flat[1])  # every model draws its own noise


@pytest.mark.slow
def test_dp_model_in_a_vectorized_slice_equals_the_model_trained_alone(tmp_path):
    x, y = synthetic_images()
    kwargs = dict(
        arch="cnn-tiny", num_models=4, batch_size=8, epochs=2, dp_noise_multiplier=1.0, dp_clip_norm=1.0
    )
    together = train_run(tmp_path / "all", x, y, models_per_step=4, **kwargs)
    alone = train_run(tmp_path / "one", x, y, model_ids=(2, 3), models_per_step=1, **kwargs)
    for a, b in zip(together[2], alone[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert not np.allclose(together[1][0], together[2][0])
    # And DP training is not ordinary training.
    plain = train_run(tmp_path / "plain", x, y, models_per_step=4, arch="cnn-tiny", num_models=4, batch_size=8,
                      epochs=2)  # fmt: skip
    assert not np.allclose(plain[2][0], together[2][0])


def test_poisson_batches_draw_in_examples_independently_and_reproducibly():
    keep = masks.make_keep(8, 2000, 0.5, seed=0)
    q, max_batch, steps = 0.05, 80, 400
    indices, sizes = sampling.poisson_batches(keep[3], q, max_batch, steps, seed=1, model_index=3, epoch=2)
    members = set(np.flatnonzero(keep[3]).tolist())
    for row, size in zip(indices, sizes):
        drawn = row[:size].tolist()
        assert set(drawn) <= members and len(set(drawn)) == size  # IN examples only, without repeats
    n = keep[3].sum()
    # Binomial(n, q) sizes: mean q n, variance q (1 - q) n (the truncation at 80 is 5 sd away).
    assert abs(sizes.mean() - q * n) < 4 * math.sqrt(q * (1 - q) * n / steps)
    assert abs(sizes.var() / (q * (1 - q) * n) - 1) < 0.25
    # Each member is drawn at rate q.
    counts = np.bincount(indices[np.arange(max_batch)[None] < sizes[:, None]], minlength=keep.shape[1])
    assert abs(counts[keep[3]].mean() / steps - q) < 0.005
    again = sampling.poisson_batches(keep[3], q, max_batch, steps, seed=1, model_index=3, epoch=2)
    np.testing.assert_array_equal(indices, again[0])
    other = sampling.poisson_batches(keep[3], q, max_batch, steps, seed=1, model_index=3, epoch=3)
    assert not np.array_equal(indices, other[0])


def test_truncation_keeps_at_most_max_batch():
    keep = np.ones(500, bool)
    indices, sizes = sampling.poisson_batches(keep, 0.5, 200, 20, seed=0, model_index=0, epoch=0)
    assert sizes.max() == 200 and indices.shape == (20, 200)


def test_epsilon_without_truncation_matches_jax_privacy_accountant():
    # max_batch >= n: plain Poisson sampling, which jax-privacy's own DP-SGD accountant covers.
    n, batch, steps, sigma, delta = 1000, 50, 300, 1.1, 1e-5
    ours = dp.epsilon(sigma, delta=delta, in_sizes=[n], q=batch / n, max_batch=n, steps=steps)
    theirs = jp_accounting.DpsgdTrainingAccountant(jp_accounting.PldAccountantConfig()).compute_epsilon(
        steps, jp_accounting.DpParams(noise_multipliers=sigma, num_samples=n, delta=delta, batch_size=batch)
    )
    assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.slow
def test_truncation_is_accounted_and_costs_privacy():
    n, batch, steps, sigma, delta = 900, 32, 360, 1.0, 1e-5
    budget = dict(delta=delta, in_sizes=[n], q=batch / n, steps=steps)
    free = dp.epsilon(sigma, max_batch=n, **budget)
    tight = dp.epsilon(sigma, max_batch=40, **budget)
    default = dp.epsilon(sigma, max_batch=sampling.max_batch_size(batch), **budget)
    direct = (
        dp_accounting.pld.PLDAccountant()
        .compose(dp_accounting.SelfComposedDpEvent(dp_accounting.TruncatedSubsampledGaussianDpEvent(n, batch / n, 40, sigma), steps))
        .get_epsilon(delta)
    )  # fmt: skip
    assert tight == pytest.approx(direct)
    assert tight > free * 1.05  # truncating at 1.4 sd is expensive...
    assert default == pytest.approx(free, rel=2e-3)  # ...at the default 5 sd it is not
    assert dp.epsilon(0.0, max_batch=40, **budget) == math.inf


@pytest.mark.slow
def test_target_epsilon_picks_noise_that_meets_it():
    budget = dict(
        delta=1e-5, in_sizes=[480, 520], q=32 / 500, max_batch=sampling.max_batch_size(32), steps=200
    )
    sigma = dp.noise_for_epsilon(3.0, **budget)
    assert dp.epsilon(sigma, **budget) <= 3.0
    assert dp.epsilon(sigma * 0.98, **budget) > 3.0  # and not much more noise than needed


@pytest.mark.slow
def test_account_records_the_run_guarantee():
    keep = masks.make_keep(4, 400, 0.5, seed=0)
    config = TrainingConfig(epochs=3, batch_size=20, dp_noise_multiplier=1.5, dp_clip_norm=2.0)
    guarantee = dp.account(config, keep).to_json()
    steps = 3 * step.steps_per_epoch(400, 0.5, 20)
    assert (
        guarantee["steps"] == steps and guarantee["noise_multiplier"] == 1.5 and guarantee["clip_norm"] == 2.0
    )
    budget = dict(
        delta=1e-5, in_sizes=keep.sum(1), q=20 / 200, max_batch=sampling.max_batch_size(20), steps=steps
    )
    assert guarantee["epsilon"] == pytest.approx(dp.epsilon(1.5, **budget))
    assert {"epsilon", "delta", "noise_multiplier", "clip_norm"} <= set(guarantee)


def test_batch_norm_models_are_refused_under_dp_before_any_work():
    assert uses_batch_norm("wrn10-1") and not uses_batch_norm("cnn32") and not uses_batch_norm("mlp")
    config = Config().replace(arch="wrn10-1", dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="BatchNorm.*cnn32"):
        train.resolve(config)
    train.resolve(config.replace(dp_noise_multiplier=None))  # ordinary training is fine


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(dp_noise_multiplier=1.0, dp_target_epsilon=2.0), "both given"),
        (dict(dp_noise_multiplier=-1.0), "dp_noise_multiplier must be >= 0"),
        (dict(dp_target_epsilon=0.0), "dp_target_epsilon must be > 0"),
        (dict(dp_clip_norm=0.0), "dp_clip_norm must be > 0"),
        (dict(dp_delta=1.0), "dp_delta must be in"),
        (dict(dp_max_batch_size=3, batch_size=8), "dp_max_batch_size must be 0"),
        (dict(canaries=-1), "canaries must be >= 0"),
    ],
)
def test_bad_dp_flags_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        Config().replace(**values).validate()


def test_mislabel_moves_each_canary_to_another_class_reproducibly():
    labels = np.random.default_rng(0).integers(0, 10, 500).astype(np.int32)
    canaries, relabelled = mislabel(labels, 10, 60, seed=3)
    assert len(canaries) == 60 and len(set(canaries.tolist())) == 60
    assert (relabelled[canaries] != labels[canaries]).all()
    others = np.setdiff1d(np.arange(500), canaries)
    np.testing.assert_array_equal(relabelled[others], labels[others])
    assert len(np.unique(relabelled[canaries] - labels[canaries])) > 3  # not one fixed shift
    np.testing.assert_array_equal(mislabel(labels, 10, 60, seed=3)[1], relabelled)
    with pytest.raises(ValueError, match="--canaries=501"):
        mislabel(labels, 10, 501, seed=3)
