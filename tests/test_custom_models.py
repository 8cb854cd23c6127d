"""Models of one's own: stochastic layers get their own rngs, per model and step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_run

from lira.config import TrainingConfig
from lira.run import masks
from lira.stages import preflight
from lira.training import dpsgd, loop, models
from lira.training import step as step_lib


class DropoutNet(nn.Module):
    num_classes: int
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, train):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def _steps(model, num_models: int = 3, steps: int = 3):
    """(vectorized state, [each model's own state]) after `steps` steps of models 0..num_models-1."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(40, 6)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 3, 40).astype(np.int32))
    config = TrainingConfig(batch_size=8, lr=0.1, epochs=1, augment="none")
    programs = loop.Programs(model, config, 4, x[0])
    inputs = loop.SliceInputs.place(masks.make_keep(num_models, 40, 0.5, seed=0), 0, num_models)
    state = programs.init_slice(inputs, config.seed)
    order = programs.order(inputs.keep, inputs.ids, 0, config.seed)
    vectorized = jax.jit(step_lib.make_vectorized_step(model, programs.tx, config))
    single = jax.jit(step_lib.make_train_step(model, programs.tx, config))
    alone = [jax.tree.map(lambda v, m=m: v[m], state) for m in range(num_models)]
    for i in range(steps):
        state = vectorized(state, order, inputs.num_in, inputs.ids, x, y, i)[0]
        alone = [
            single(s, order[m], inputs.num_in[m], inputs.ids[m], x, y, i)[0] for m, s in enumerate(alone)
        ]
    return state, alone


def test_dropout_trains_vectorized_as_each_model_alone():
    together, alone = _steps(DropoutNet(3))
    for m, single in enumerate(alone):
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(single.params), strict=True):
            np.testing.assert_allclose(a[m], b, rtol=1e-6, atol=1e-7)
    again, _ = _steps(DropoutNet(3))  # the masks are a function of (seed, model, step) alone
    for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    without, _ = _steps(DropoutNet(3, rate=0.0))  # and dropout did act
    assert not np.allclose(jax.tree.leaves(together.params)[0], jax.tree.leaves(without.params)[0])


def test_a_wrong_head_and_a_wrong_factory_are_one_line_each(monkeypatch):
    registry = models._REGISTRY  # monkeypatched: no other test sees these models
    monkeypatch.setitem(
        registry, "test-dropout", lambda num_classes, conv_impl, dtype: DropoutNet(num_classes)
    )
    monkeypatch.setitem(
        registry, "test-wide", lambda num_classes, conv_impl, dtype: DropoutNet(num_classes + 2)
    )
    monkeypatch.setitem(
        registry, "test-two-arguments", lambda num_classes, conv_impl: DropoutNet(num_classes)
    )
    params, _ = preflight.model_shapes("test-dropout", 3, (6,))  # a model with dropout is sized, not refused
    assert params == 4 * (6 * 16 + 16 + 16 * 3 + 3)
    with pytest.raises(ValueError, match=r"returns outputs of shape \(1, 5\).* 3 classes"):
        preflight.model_shapes("test-wide", 3, (6,))
    with pytest.raises(ValueError, match=r"factory must take \(num_classes, conv_impl, dtype\)"):
        models.get_model("test-two-arguments", 3)


def _flat(tree):
    return np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)])


def test_dp_clipping_gives_each_example_its_own_dropout_mask():
    """The per-example clipped sum with dropout, against a slow loop: example i's gradient on its
    own key fold_in(rng, i), clipped, summed over the non-padding rows."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 6)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 3, 6).astype(np.int32))
    model = DropoutNet(3)
    params = model.init(jax.random.key(0), x[:1], train=False)["params"]
    padding = jnp.asarray(np.arange(6) >= 5)
    key, clip = jax.random.key(7), 0.3
    got, losses, _ = dpsgd.make_clipped_sum(model, clip, "per_example")(params, x, y, padding, rng=key)

    def loss(p, i):
        logits = model.apply({"params": p}, x[i : i + 1], train=True,
                             rngs={"dropout": jax.random.fold_in(key, i)})  # fmt: skip
        return step_lib.cross_entropy(logits, y[i : i + 1]).sum()

    expected = np.zeros_like(_flat(params))
    for i in range(5):
        g = _flat(jax.grad(loss)(params, i))
        expected += g * min(1.0, clip / np.linalg.norm(g))
        np.testing.assert_allclose(losses[i], loss(params, i), rtol=1e-6)
    np.testing.assert_allclose(_flat(got), expected, rtol=1e-5, atol=1e-7)
    # The masks differ between examples: the same example in two rows gets two gradients.
    twice = jnp.stack([x[0], x[0]]), jnp.stack([y[0], y[0]])
    _, pair, _ = dpsgd.make_clipped_sum(model, clip, "per_example")(
        params, *twice, jnp.zeros(2, bool), rng=key
    )
    assert pair[0] != pair[1]


def test_dp_trains_a_dropout_model_vectorized_as_alone_and_refuses_ghost(tmp_path, monkeypatch):
    monkeypatch.setitem(
        models._REGISTRY, "test-dropout", lambda num_classes, conv_impl, dtype: DropoutNet(num_classes)
    )
    monkeypatch.setitem(
        models._REGISTRY,
        "test-no-dropout",
        lambda num_classes, conv_impl, dtype: DropoutNet(num_classes, 0.0),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    y = rng.integers(0, 3, 48).astype(np.int32)
    kwargs = dict(
        num_models=3, batch_size=8, epochs=2, augment="none", dp_noise_multiplier=1.0, dp_clip_norm=1.0
    )
    together = train_run(tmp_path / "all", x, y, arch="test-dropout", models_per_step=3, **kwargs)
    alone = train_run(
        tmp_path / "one", x, y, arch="test-dropout", model_ids=(1, 2), models_per_step=1, **kwargs
    )
    for a, b in zip(together[1], alone[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    without = train_run(tmp_path / "rate0", x, y, arch="test-no-dropout", models_per_step=3, **kwargs)
    assert not np.allclose(together[1][0], without[1][0])  # dropout acted under DP too
    config = TrainingConfig(dp_noise_multiplier=1.0, dp_clipping="ghost")
    with pytest.raises(ValueError, match="--dp_clipping=ghost takes a deterministic model.*per_example"):
        dpsgd.make_dp_train_step(DropoutNet(3), None, config, x[0])
    assert not dpsgd.uses_rngs(DropoutNet(3, 0.0), *_shapes(DropoutNet(3, 0.0), x[0]))
    assert dpsgd.uses_rngs(DropoutNet(3), *_shapes(DropoutNet(3), x[0]))


def _shapes(model, sample):
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(sample)[None], train=False))
    return params["params"], sample


class NoisyNet(nn.Module):
    """Gaussian noise on its hidden units in training, from a stream of its own ("noise")."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        if train:
            x = x + 0.5 * jax.random.normal(self.make_rng("noise"), x.shape)
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def test_a_layer_with_a_stream_of_its_own_trains_vectorized_as_each_model_alone():
    together, alone = _steps(NoisyNet(3))
    for m, single in enumerate(alone):
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(single.params), strict=True):
            np.testing.assert_allclose(a[m], b, rtol=1e-6, atol=1e-7)
    again, _ = _steps(NoisyNet(3))
    for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)
    x = jnp.ones((2, 6))
    params = NoisyNet(3).init(jax.random.key(0), x, train=False)
    rngs = [step_lib.stochastic_rngs(jax.random.key(k)) for k in (1, 2)]
    first, second = (NoisyNet(3).apply(params, x, train=True, rngs=r) for r in rngs)
    assert not np.allclose(first, second)  # the noise comes from the step's key
    assert dpsgd.uses_rngs(NoisyNet(3), params["params"], x[0])
