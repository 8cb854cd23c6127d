"""White-box signals: per-example gradient norms equal single-example gradients, the vmapped
program equals the one-model one, features are the head's input, and sowing changes no logit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import synthetic_images

from lira.training import augment, loop, step, whitebox
from lira.training.models import get_model

LAYERS = {
    "mlp-tiny": ["Dense_0", "Dense_1"],
    "cnn-tiny": ["Conv_0", "Conv_1", "Dense_0"],
    "wrn10-1": [
        "BatchNorm_0",
        "Conv_0",
        "Dense_0",
        "WideResNetBlock_0",
        "WideResNetBlock_1",
        "WideResNetBlock_2",
    ],
}
QUERIES = {"mlp-tiny": 1, "cnn-tiny": 2, "wrn10-1": 2}
NUM_EXAMPLES = 3


@pytest.fixture(scope="module", params=list(LAYERS))
def models_state(request):
    """(arch, model, state of 2 models, x, y); mlp-tiny on tabular data. The state is stacked and
    sharded over the model mesh as the stages restore it, its BatchNorm statistics made far from
    their initial (0, 1) so that inference mode matters."""
    arch = request.param
    x, y = synthetic_images()
    if arch.startswith("mlp"):
        x = x.reshape(len(x), -1)
    model = get_model(arch, 3)
    state = jax.jit(jax.vmap(step.make_init(model, optax.sgd(0.1), jnp.asarray(x[0])), (0, None)))(
        jnp.arange(2), 0
    )
    rng = np.random.default_rng(0)
    stats = jax.tree_util.tree_map_with_path(  # means start at 0, variances at 1
        lambda path, v: rng.uniform(0.5, 2.0, v.shape) if path[-1].key == "var" else rng.normal(size=v.shape),
        jax.device_get(state.batch_stats),
    )
    state = state.replace(batch_stats=jax.tree.map(np.float32, stats))
    return arch, model, jax.device_put(state, loop.model_sharding(2)), x, y


def one(state, m):
    return jax.tree.map(lambda v: v[m], state)


def reference_norms(model, state, views, labels, names):
    """float64 [B, Q, L + 1] from a loop of single-example jax.grad calls on step.predict."""

    def loss(params, view, label):
        logits = step.predict(model, state.replace(params=params), view[None])
        return step.cross_entropy(logits, label[None])[0]

    grad = jax.jit(jax.grad(loss))
    out = np.zeros((*views.shape[:2], len(names) + 1))
    for b, q in np.ndindex(*views.shape[:2]):
        g = grad(state.params, views[b, q], labels[b])
        squares = [sum(np.sum(np.square(np.float64(v))) for v in jax.tree.leaves(g[n])) for n in names]
        out[b, q] = np.sqrt([*squares, sum(squares)])
    return out


def test_norms_equal_single_example_gradients_and_features_feed_the_head(models_state):
    arch, model, state, x, y = models_state
    queries, state = QUERIES[arch], one(state, 1)
    images, labels = x[:NUM_EXAMPLES], y[:NUM_EXAMPLES]
    names = whitebox.layer_names(state.params)
    assert names == LAYERS[arch]
    norms, features = jax.jit(whitebox.make_whitebox_fn(model, queries))(state, images, labels)
    shape_names, num_features = whitebox.whitebox_shapes(model, x[0])
    assert shape_names == names
    assert norms.shape == (NUM_EXAMPLES, queries, len(names) + 1) and norms.dtype == jnp.float32
    assert features.shape == (NUM_EXAMPLES, queries, num_features) and features.dtype == jnp.float32

    views = np.asarray(augment.make_queries(images, queries))
    expected = reference_norms(model, state, views, labels, names)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)
    # Teeth: examples differ, and so do a view and its mirror; every layer has a gradient.
    assert not np.allclose(norms[0], norms[1], rtol=1e-2)
    assert queries == 1 or not np.allclose(norms[:, 0], norms[:, 1], rtol=1e-2)
    assert (norms > 0).all()

    # The features are the head's input: the head maps them to the logits of step.predict.
    head = state.params["Dense_0" if arch != "mlp-tiny" else "Dense_1"]
    logits = step.predict(model, state, views.reshape(-1, *views.shape[2:])).reshape(*views.shape[:2], -1)
    np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)
    if arch == "mlp-tiny":  # by hand: the hidden layer's ReLU
        hidden = state.params["Dense_0"]
        np.testing.assert_allclose(
            features[:, 0], np.maximum(images @ hidden["kernel"] + hidden["bias"], 0), rtol=1e-5, atol=1e-6
        )


def test_vmapped_over_models_equals_one_model_at_a_time(models_state):
    arch, model, state, x, y = models_state
    queries = QUERIES[arch]
    images, labels = x[:NUM_EXAMPLES], y[:NUM_EXAMPLES]
    single = jax.jit(whitebox.make_whitebox_fn(model, queries))
    norms, features = whitebox.make_vmapped_whitebox_fn(model, queries)(state, images, labels)
    assert norms.shape[0] == features.shape[0] == 2
    for m in range(2):
        expected_norms, expected_features = single(one(state, m), images, labels)
        np.testing.assert_allclose(norms[m], expected_norms, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(features[m], expected_features, rtol=1e-5, atol=1e-7)
    assert not np.allclose(norms[0], norms[1], rtol=1e-2)  # the models differ
    if arch == "cnn-tiny":  # one model a call takes vmap_models' squeezed path
        alone = whitebox.make_vmapped_whitebox_fn(model, queries)(
            jax.tree.map(lambda v: v[1:], state), images, labels
        )
        np.testing.assert_allclose(alone[0][0], norms[1], rtol=1e-5, atol=1e-7)


def test_sowing_features_changes_no_logit(models_state):
    arch, model, state, x, _ = models_state
    state = one(state, 0)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    with_features = lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])
    for transform in (jax.jit, lambda f: f):  # compiled, and op by op
        plain = transform(lambda s, x: step.predict(model, s, x))(state, x[:16])
        logits, sown = transform(with_features)(variables, x[:16])
        np.testing.assert_array_equal(plain, logits)
        assert sown["intermediates"]["features"][0].shape == (16, whitebox.whitebox_shapes(model, x[0])[1])


class Linear(nn.Module):
    """A user's model that sows nothing."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_model_that_sows_nothing_has_no_features():
    x, y = synthetic_images(num_examples=4)
    model = Linear(3)
    state = step.make_init(model, optax.sgd(0.1), jnp.asarray(x[0]))(0, 0)
    norms, features = jax.jit(whitebox.make_whitebox_fn(model, 2))(state, x, y)
    assert norms.shape == (4, 2, 2) and features.shape == (4, 2, 0)
    assert whitebox.whitebox_shapes(model, x[0]) == (["Dense_0"], 0)
    np.testing.assert_allclose(norms[..., 0], norms[..., 1])  # one layer: its norm is the total


def test_layer_names_sort_by_module_type_then_index():
    params = {name: {} for name in ["WideResNetBlock_10", "Dense_0", "WideResNetBlock_2", "Conv_1", "Conv_0"]}
    assert whitebox.layer_names(params) == [
        "Conv_0", "Conv_1", "Dense_0", "WideResNetBlock_2", "WideResNetBlock_10",
    ]  # fmt: skip
