"""lira's XLA:CPU flags and the CPU defaults that follow from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lira import xla_flags
from lira.training import layers, loop
from lira.training import step as step_lib


def test_import_added_the_flags():
    assert xla_flags.ynn_enabled()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, xla_flags.YNN_DOT),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
         f"--xla_force_host_platform_device_count=4 {xla_flags.YNN_DOT}"),
        # The user's own value of the same flag stays.
        ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE"},
         "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE"),
        ({"LIRA_XLA_FLAGS": "0"}, None),
    ],
)  # fmt: skip
def test_add_cpu_flags(before, after):
    environ = dict(before)
    xla_flags.add_cpu_flags(environ, "0.10.2")
    assert environ.get("XLA_FLAGS") == after
    xla_flags.add_cpu_flags(environ, "0.10.2")  # idempotent
    assert environ.get("XLA_FLAGS") == after


def test_untested_jaxlib_gets_no_flags():
    environ = {}
    xla_flags.add_cpu_flags(environ, "0.11.0")
    assert "XLA_FLAGS" not in environ


def test_cpu_defaults_follow_the_flags(monkeypatch):
    assert layers.default_conv_impl("cpu") == "xla"
    assert loop.default_models_per_step("cnn32", "cpu") == 1
    assert loop.default_models_per_step("mlp", "cpu") == 4
    monkeypatch.setenv("XLA_FLAGS", "")  # as with LIRA_XLA_FLAGS=0: XLA:CPU's own convolutions
    assert layers.default_conv_impl("cpu") == "im2col"
    assert loop.default_models_per_step("cnn32", "cpu") == 4
    assert layers.default_conv_impl("gpu", "cnn32") == "im2col"
    assert layers.default_conv_impl("gpu", "wrn28-2") == "xla"
    assert loop.default_models_per_step("wrn28-2", "gpu") == 1
    assert loop.default_models_per_step("cnn32", "gpu") == 64


@pytest.mark.parametrize("num_models", [1, 3])
def test_vmap_models_equals_vmap(num_models):
    def fn(state, x, scale):
        return {"y": state["w"] @ x * scale, "n": state["n"] + 1}, jnp.sum(x)

    keys = jax.random.split(jax.random.key(0), 2)
    state = {"w": jax.random.normal(keys[0], (num_models, 4, 5)), "n": jnp.arange(num_models)}
    x = jax.random.normal(keys[1], (5,))
    got = step_lib.vmap_models(fn, (0, None, None))(state, x, 2.0)
    expected = jax.vmap(fn, in_axes=(0, None, None))(state, x, 2.0)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6)
