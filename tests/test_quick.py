"""Quick stand-ins for the fast tier (./run.sh test --fast), for modules whose own tests are all
marked slow: each is one of those tests shrunk to a small model and a single setting. The slow
originals still run in the full suite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import synthetic_images

from lira.training import dpsgd, grad_norms
from lira.training.models import get_model


def test_ghost_clipping_equals_per_example_clipping_on_a_tiny_mlp():
    """tests/test_dp.py's clipping tests at one clip norm, which clips some examples and not others:
    the ghost sum equals jax-privacy's per-example one, and padding adds nothing."""
    x, y = synthetic_images(num_examples=6)
    model = get_model("mlp-tiny", 3)
    params = model.init(jax.random.key(0), jnp.zeros((1, *x.shape[1:])), train=False)["params"]
    assert dpsgd.ghost_applies(model, params, jnp.asarray(x[0]), dense_only=True)
    padding = jnp.asarray(np.arange(len(y)) >= 4)  # two padding rows
    norms = np.asarray(jax.jit(grad_norms.per_example_norms, static_argnums=0)(model, params, x, y))[:4]
    clip = float(np.median(norms))  # binds for some examples only
    assert (norms > clip).any() and (norms < clip).any()
    sums = {}
    for method in ("per_example", "ghost"):
        clipped_sum = jax.jit(dpsgd.make_clipped_sum(model, clip, method))
        sums[method] = clipped_sum(params, x, y, is_padding_example=padding)[0]
        all_padding = clipped_sum(params, x, y, is_padding_example=jnp.ones(len(y), bool))[0]
        assert all(not np.asarray(v).any() for v in jax.tree.leaves(all_padding))
    assert 0 < float(optax.tree.norm(sums["ghost"])) <= 4 * clip * (1 + 1e-5)
    for a, b in zip(jax.tree.leaves(sums["per_example"]), jax.tree.leaves(sums["ghost"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
