"""Models of one's own: stochastic layers get their own rngs, per model and step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lira.config import TrainingConfig
from lira.run import masks
from lira.stages import preflight
from lira.training import loop, models
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
