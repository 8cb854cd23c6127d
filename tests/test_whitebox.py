"""White-box signals: per-example gradient norms equal single-example gradients, the vmapped
program equals the one-model one, features are the head's input, and sowing changes no logit."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import synthetic_images

from lira.training import augment, grad_norms, layers, loop, step
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


@functools.partial(jax.jit, static_argnums=0)
def single_example_grad(model, state, view, label):
    """The gradient of one view's loss w.r.t. state.params, through step.predict."""

    def loss(params):
        logits = step.predict(model, state.replace(params=params), view[None])
        return step.cross_entropy(logits, label[None])[0]

    return jax.grad(loss)(state.params)


def reference_norms(model, state, views, labels, names):
    """float64 [B, Q, L + 1] from a loop of single-example jax.grad calls on step.predict."""
    out = np.zeros((*views.shape[:2], len(names) + 1))
    for b, q in np.ndindex(*views.shape[:2]):
        g = single_example_grad(model, state, views[b, q], labels[b])
        squares = [sum(np.sum(np.square(np.float64(v))) for v in jax.tree.leaves(g[n])) for n in names]
        out[b, q] = np.sqrt([*squares, sum(squares)])
    return out


@pytest.mark.slow
def test_norms_equal_single_example_gradients_and_features_feed_the_head(models_state):
    arch, model, state, x, y = models_state
    queries, state = QUERIES[arch], one(state, 1)
    images, labels = x[:NUM_EXAMPLES], y[:NUM_EXAMPLES]
    names = grad_norms.layer_names(state.params)
    assert names == LAYERS[arch]
    norms, features = jax.jit(grad_norms.make_whitebox_fn(model, queries))(state, images, labels)
    shape_names, num_features = grad_norms.whitebox_shapes(model, x[0])
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


@pytest.mark.slow
def test_vmapped_over_models_equals_one_model_at_a_time(models_state):
    arch, model, state, x, y = models_state
    queries = QUERIES[arch]
    images, labels = x[:NUM_EXAMPLES], y[:NUM_EXAMPLES]
    single = jax.jit(grad_norms.make_whitebox_fn(model, queries))
    norms, features = grad_norms.make_vmapped_whitebox_fn(model, queries)(state, images, labels)
    assert norms.shape[0] == features.shape[0] == 2
    for m in range(2):
        expected_norms, expected_features = single(one(state, m), images, labels)
        np.testing.assert_allclose(norms[m], expected_norms, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(features[m], expected_features, rtol=1e-5, atol=1e-7)
    assert not np.allclose(norms[0], norms[1], rtol=1e-2)  # the models differ
    if arch == "cnn-tiny":  # one model a call takes vmap_models' squeezed path
        alone = grad_norms.make_vmapped_whitebox_fn(model, queries)(
            jax.tree.map(lambda v: v[1:], state), images, labels
        )
        np.testing.assert_allclose(alone[0][0], norms[1], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_sowing_features_changes_no_logit(models_state):
    arch, model, state, x, _ = models_state
    state = one(state, 0)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    with_features = lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])
    for transform in (jax.jit, lambda f: f):  # compiled, and op by op
        plain = transform(lambda s, x: step.predict(model, s, x))(state, x[:16])
        logits, sown = transform(with_features)(variables, x[:16])
        np.testing.assert_array_equal(plain, logits)
        assert sown["intermediates"]["features"][0].shape == (16, grad_norms.whitebox_shapes(model, x[0])[1])


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
    norms, features = jax.jit(grad_norms.make_whitebox_fn(model, 2))(state, x, y)
    assert norms.shape == (4, 2, 2) and features.shape == (4, 2, 0)
    assert grad_norms.whitebox_shapes(model, x[0]) == (["Dense_0"], 0)
    np.testing.assert_allclose(norms[..., 0], norms[..., 1])  # one layer: its norm is the total


def test_layer_names_sort_by_module_type_then_index():
    params = {name: {} for name in ["WideResNetBlock_10", "Dense_0", "WideResNetBlock_2", "Conv_1", "Conv_0"]}
    assert grad_norms.layer_names(params) == [
        "Conv_0", "Conv_1", "Dense_0", "WideResNetBlock_2", "WideResNetBlock_10",
    ]  # fmt: skip


# --- The tapped layers: norms from each layer's input and output gradient -------------------------


def per_view_kernel_squares(x, g, kernel_size, strides):
    """float64: ||kernel gradient||^2 of a SAME convolution of one view x [1, H, W, I] whose output
    has loss gradient g [1, H', W', O], from jax.vjp of the convolution itself."""
    kernel = jnp.zeros((*kernel_size, x.shape[-1], g.shape[-1]))
    _, vjp = jax.vjp(lambda k: layers._native_conv(x, k, strides), kernel)
    return np.sum(np.square(np.float64(vjp(g)[0])))


@pytest.mark.parametrize(
    "hw, channels, kernel_size, strides, blocked, ghost",
    [
        ((8, 8), (3, 5), (3, 3), (1, 1), False, False),  # P = 64 positions: the K x O blocks
        ((8, 8), (3, 5), (3, 3), (1, 1), True, False),  # the same, output in 2x2 blocks
        ((4, 4), (24, 40), (3, 3), (1, 1), False, True),  # P = 16: Gram matrices
        ((4, 4), (24, 40), (3, 3), (1, 1), True, True),
        ((7, 5), (16, 64), (3, 3), (2, 2), False, True),  # strided, odd sizes
        ((7, 5), (40, 40), (1, 1), (2, 2), False, False),
    ],
)
def test_conv_tap_squares_equal_the_kernel_gradient(hw, channels, kernel_size, strides, blocked, ghost):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, *hw, channels[0])), jnp.float32)
    out_hw = [-(-size // stride) for size, stride in zip(hw, strides)]
    g = jnp.asarray(rng.normal(size=(1, *out_hw, channels[1])), jnp.float32)
    output = layers._to_blocks(g) if blocked else g
    tap = grad_norms._Tap(
        "tap",
        (*kernel_size, *channels),
        x.shape[1:],
        kernel_size,
        strides,
        jax.ShapeDtypeStruct(output.shape, g.dtype),
    )
    assert tap.ghost() == ghost  # the branch this case takes
    kernel, bias = grad_norms._tap_squares(tap, x, output)
    np.testing.assert_allclose(kernel, per_view_kernel_squares(x, g, kernel_size, strides), rtol=1e-5)
    np.testing.assert_allclose(bias, np.sum(np.square(np.float64(g).sum((0, 1, 2)))), rtol=1e-5)


class Mixed(nn.Module):
    """Layers the fast path taps (lira's Conv on each of its paths, nn.Dense on one position and on
    several) next to ones it must leave to per-view gradients (flax's nn.Conv, a Dense called
    twice, one inside nn.remat, BatchNorm)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv(4, pool_relu=True)(x)  # Conv_0: the space-to-depth stem, [5, 5, 4]
        x = layers.Conv(6, (1, 1), (2, 2), use_bias=False)(x)  # Conv_1: [3, 3, 6]
        tokens = nn.relu(nn.Dense(5)(x.reshape(x.shape[0], -1, 6)))  # Dense_0: 9 positions a view
        x = nn.Conv(5, (3, 3))(x)  # Conv_2, flax's
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = layers.Conv(8, pool_relu=True, impl="im2col")(x)  # Conv_3: 3x3 pooled to 1x1, a row dropped
        x = layers.Conv(8, pool_relu=True)(x)  # Conv_4: 1x1, nothing to pool
        shared = nn.Dense(8)  # Dense_1, called twice
        x = shared(nn.relu(shared(x.reshape(x.shape[0], -1)))) + tokens.mean(1).sum(-1, keepdims=True)
        x = nn.remat(nn.Dense)(8)(nn.relu(x))  # CheckpointDense_0
        self.sow("intermediates", grad_norms.FEATURES, x)
        return nn.Dense(3)(x)  # Dense_2


@pytest.mark.slow
def test_mixed_model_norms_equal_single_example_gradients():
    x, y = synthetic_images(num_examples=2, shape=(10, 10, 1))
    model = Mixed()
    state = jax.jit(step.make_init(model, optax.sgd(0.1), jnp.asarray(x[0])))(0, 0)
    rng = np.random.default_rng(1)  # BatchNorm statistics far from (0, 1)
    state = state.replace(
        batch_stats=jax.tree.map(lambda v: rng.uniform(0.5, 2.0, v.shape), state.batch_stats)
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    taps = grad_norms.find_taps(model, variables, jnp.asarray(x[0]))
    assert sorted(taps) == [("Conv_0",), ("Conv_1",), ("Conv_3",), ("Conv_4",), ("Dense_0",), ("Dense_2",)]
    assert taps[("Conv_0",)].output.shape == (1, 5, 5, 4, 4)  # the stem's 2x2 blocks
    names = grad_norms.layer_names(state.params)
    norms, _ = jax.jit(grad_norms.make_whitebox_fn(model, 2))(state, x, y)
    expected = reference_norms(model, state, np.asarray(augment.make_queries(x, 2)), y, names)
    np.testing.assert_allclose(norms, expected, rtol=1e-4)
    assert (norms > 0).all()


@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
@pytest.mark.slow
def test_cnn32_models_vmapped_equal_single_example_gradients(conv_impl):
    """cnn32 on 16x16 images, 2 models a call: the stem on 2x2 blocks (xla) or not (im2col), a
    conv layer through the K x O gradient and one through Gram matrices, and the dense head."""
    x, y = synthetic_images(num_examples=2, shape=(16, 16, 3))
    model = get_model("cnn32", 3, conv_impl)
    state = jax.jit(jax.vmap(step.make_init(model, optax.sgd(0.1), jnp.asarray(x[0])), (0, None)))(
        jnp.arange(2), 0
    )
    norms, _ = grad_norms.make_vmapped_whitebox_fn(model, 2)(state, x, y)
    views = np.asarray(augment.make_queries(x, 2))
    names = grad_norms.layer_names(state.params)
    for m in range(2):
        np.testing.assert_allclose(
            norms[m], reference_norms(model, one(state, m), views, y, names), rtol=1e-4
        )
    assert not np.allclose(norms[0], norms[1], rtol=1e-2)


def test_mlp_norms_equal_single_example_gradients():
    x, y = synthetic_images(num_examples=4)
    x = x.reshape(len(x), -1)
    model = get_model("mlp", 3)
    state = jax.jit(step.make_init(model, optax.sgd(0.1), jnp.asarray(x[0])))(0, 0)
    names = grad_norms.layer_names(state.params)
    assert names == ["Dense_0", "Dense_1", "Dense_2", "Dense_3"]
    norms, _ = jax.jit(grad_norms.make_whitebox_fn(model, 1))(state, x, y)
    np.testing.assert_allclose(norms, reference_norms(model, state, x[:, None], y, names), rtol=1e-4)
