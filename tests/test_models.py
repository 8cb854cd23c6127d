import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lira import models

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
def test_im2col_equals_native_convolution(kernel, stride, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    native = models.Conv(5, kernel, stride, impl="xla")
    params = native.init(jax.random.key(1), x)
    expected = native.apply(params, x)
    got = models.Conv(5, kernel, stride, impl="im2col").apply(params, x)
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
def test_max_pool_2x2_equals_flax_max_pool(shape, ties):
    x = jax.random.normal(jax.random.key(0), shape)
    if ties:  # values in {0, 1, 2}: most windows have several maxima
        x = jnp.floor(jax.nn.sigmoid(x) * 3)
    g = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    ours = lambda x: jnp.sum(models.max_pool_2x2(x) * g)
    flax = lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) * g)
    np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(flax)(x))


def test_cnn_equals_conv_relu_pool_reference():
    """CNN pools before its bias and ReLU; the textbook order gives the same logits and grads."""
    model = models.get_model("cnn-tiny", 10, "xla")
    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 3))
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
