import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lira.training import layers, models

# Exact parameter counts for 10 classes (WRN-28-2 and WRN-28-10 match the published 1.47M / 36.5M).
PARAM_COUNTS = {
    ("mlp", (600,)): 473_226,
    ("cnn32", (32, 32, 3)): 94_538,
    ("cnn64", (32, 32, 3)): 373_386,
    ("wrn28-2", (32, 32, 3)): 1_467_610,
    ("wrn28-10", (32, 32, 3)): 36_479_194,
}


def count(arch, shape):
    model = models.get_model(arch, 10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(("arch", "shape"), list(PARAM_COUNTS))
def test_parameter_counts(arch, shape):
    assert count(arch, shape) == PARAM_COUNTS[(arch, shape)]


def test_alias_and_unknown_arch():
    assert models.canonical_arch("wrn28") == "wrn28-2"
    with pytest.raises(ValueError, match="valid: .*cnn32"):
        models.get_model("resnet9000", 10)


@pytest.mark.parametrize(
    ("kernel", "stride"), [((3, 3), (1, 1)), ((3, 3), (2, 2)), ((1, 1), (2, 2)), ((5, 3), (1, 2))]
)
@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.slow
def test_im2col_equals_native_convolution(kernel, stride, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    native = layers.Conv(5, kernel, stride, impl="xla")
    params = native.init(jax.random.key(1), x)
    expected = native.apply(params, x)
    got = layers.Conv(5, kernel, stride, impl="im2col").apply(params, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_register_model():
    models.register_model(
        "test-linear", lambda num_classes, conv_impl, dtype: models.MLP(num_classes, hidden=())
    )
    assert count("test-linear", (4,)) == 4 * 10 + 10
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("test-linear", lambda *a: None)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_pool_bias_relu_equals_flax_reference(shape, ties):
    """relu(max_pool(y) + bias) with flax's max-pool: the same values and gradients, ties
    included (the gradient goes to the first maximum of each window in row-major order)."""
    y = jax.random.normal(jax.random.key(0), shape)
    bias = jnp.linspace(-1.0, 1.0, shape[-1])
    if ties:  # y in {0, 1, 2} and bias in {-1, 0, 1}: sums are exact, most windows tie
        y, bias = jnp.floor(jax.nn.sigmoid(y) * 3), jnp.round(bias)
    g = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    ours = lambda y, b: layers.pool_bias_relu(layers._pool_windows(y), b, (2, 4))
    flax = lambda y, b: nn.relu(nn.max_pool(y, (2, 2), (2, 2)) + b)
    np.testing.assert_array_equal(ours(y, bias), flax(y, bias))
    assert (ours(y, bias) == 0).any() and (ours(y, bias) > 0).any()  # both sides of the ReLU
    loss = lambda f: lambda y, b: jnp.sum(f(y, b) * g)
    got = jax.grad(loss(ours), (0, 1))(y, bias)
    expected = jax.grad(loss(flax), (0, 1))(y, bias)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_space_to_depth_convolution_equals_native():
    """An RGB stem with even sides runs its forward pass on 2x2 blocks of pixels: the same
    convolution, grouped by pool window, with the native weight and input gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    native = layers._native_conv(x, kernel)  # [2, 8, 6, 5]
    blocks = layers._space_to_depth_conv(x, kernel)  # [2, 4, 3, 4, 5]
    np.testing.assert_allclose(blocks, layers._to_blocks(native), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layers._from_blocks(layers._to_blocks(native)), native)
    g = jax.random.normal(jax.random.key(2), blocks.shape)
    blocked_native = lambda x, k: layers._to_blocks(layers._native_conv(x, k))
    got = jax.grad(lambda x, k: jnp.sum(layers._space_to_depth_conv(x, k) * g), (0, 1))(x, kernel)
    expected = jax.grad(lambda x, k: jnp.sum(blocked_native(x, k) * g), (0, 1))(x, kernel)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    layer = layers.Conv(5, pool_relu=True)
    assert layer._uses_space_to_depth(x) and not layer._uses_space_to_depth(x[:, :7])
    assert not layers.Conv(5, pool_relu=True, impl="im2col")._uses_space_to_depth(x)
    assert not layer._uses_space_to_depth(jnp.zeros((2, 8, 6, 8)))


@pytest.mark.parametrize("conv_impl", ["xla", "im2col"])
@pytest.mark.parametrize("shape", [(3, 9, 8, 3), (3, 8, 8, 3)])  # odd; even (space-to-depth stem)
@pytest.mark.slow
def test_cnn_equals_conv_relu_pool_reference(shape, conv_impl):
    """CNN pools before its bias and ReLU; the textbook order gives the same logits and grads."""
    model = models.get_model("cnn-tiny", 10, conv_impl)
    x = jax.random.normal(jax.random.key(0), shape)
    params = model.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)

    def reference(params, x):
        for block in range(2):
            conv = params[f"Conv_{block}"]
            x = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
            x = nn.max_pool(nn.relu(x + conv["bias"]), (2, 2), (2, 2))
        return x.mean(axis=(1, 2)) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]

    ours = lambda p: model.apply({"params": p}, x)
    np.testing.assert_allclose(ours(params), reference(params, x), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(ours(p) ** 2))(params)
    expected = jax.grad(lambda p: jnp.sum(reference(p, x) ** 2))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, expected)
