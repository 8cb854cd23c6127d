"""White-box signals: per-example gradient norms and penultimate features of a trained model.

For every pool example and inference query (the views of lira/training/augment.py), the gradient
of that one view's cross-entropy with respect to the model's parameters, BatchNorm in inference
mode (the forward of step.predict), reduced to its L2 norm per layer and over all parameters;
and the penultimate activations, the input of the classification head, which the models of
lira/training/models.py sow as ("intermediates", "features").

Layers are the top-level entries of `params` (`layer_names`): every parameter array under one
top-level submodule belongs to its layer, so a WideResNetBlock_k is one layer (its convolutions,
shortcut projection and BatchNorm scales and offsets together), and the WRN's final BatchNorm_0
another. A parameter declared on the root module itself is a layer of its own.

Memory: the gradients are computed as jax.vmap(jax.grad(...)) over the B * Q views of a call,
so up to B * Q * num_params floats (times the models of a vmapped call) live at once before
they are reduced: 0.15 GB a view for WRN-28-10, 6 MB for WRN-28-2. Only the norms and the
features leave the function; the caller sizes B.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from lira.training import augment, step

FEATURES = "features"  # the name models sow their penultimate activations under, in "intermediates"


def layer_names(params) -> list[str]:
    """The layers of `params`: its top-level keys, sorted by module type then index
    ('Conv_0', 'Conv_1', 'Dense_0', ..., 'WideResNetBlock_2', 'WideResNetBlock_10').

    The order depends on the names alone, not on the dict's order, which jax.tree.map and
    checkpoint restores change (to lexicographic, which puts block 10 before block 2)."""

    def key(name: str):
        match = re.fullmatch(r"(.*?)_?(\d+)", name)
        return (match[1], int(match[2]), name) if match else (name, -1, name)

    return sorted(params, key=key)


def _features(intermediates, dtype=jnp.float32):
    """Everything sown under FEATURES (at any depth), one example's, flattened -> [F]."""
    leaves = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates)
        if any(getattr(entry, "key", None) == FEATURES for entry in path)
    ]
    if not leaves:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([leaf.reshape(-1).astype(dtype) for leaf in leaves])


def _squared_norms(grads, names: list[str]):
    """float32 [L]: the sum of squares of the gradient under each layer."""
    return jnp.stack(
        [
            sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads[name]))
            for name in names
        ]
    )


def make_whitebox_fn(model: nn.Module, num_queries: int):
    """fn(state, images, labels) -> (norms, features) for one model.

    images [B, ...] raw pool examples (the queries are made here, as the logits query stage makes
    them), labels int [B] -> norms float32 [B, Q, L + 1]: the gradient norm of each view's loss per
    layer of layer_names(state.params), then over all parameters; features float32 [B, Q, F]: the
    sown penultimate activations of each view (F = 0 for a model that sows none).
    """

    def one_view(state, view, label):  # view [...], label [] -> (norms [L + 1], features [F])
        def loss(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, sown = model.apply(variables, view[None], train=False, mutable=["intermediates"])
            return step.cross_entropy(logits, label[None])[0], sown.get("intermediates", {})

        grads, intermediates = jax.grad(loss, has_aux=True)(state.params)
        squared = _squared_norms(grads, layer_names(state.params))
        return jnp.sqrt(jnp.append(squared, squared.sum())), _features(intermediates)

    def fn(state, images, labels):
        views = augment.make_queries(images, num_queries)
        batch, queries = views.shape[:2]
        flat = views.reshape(batch * queries, *views.shape[2:])
        norms, features = jax.vmap(one_view, in_axes=(None, 0, 0))(state, flat, jnp.repeat(labels, queries))
        return norms.reshape(batch, queries, -1), features.reshape(batch, queries, -1)

    return fn


def make_vmapped_whitebox_fn(model: nn.Module, num_queries: int):
    """Jitted fn(state, images, labels) for a state stacked over M models -> (norms float32
    [M, B, Q, L + 1], features float32 [M, B, Q, F]); images and labels as make_whitebox_fn's.

    The images are broadcast over the model axis first: with a state sharded over the model
    mesh (as restored), JAX 0.10 has no vmap rule for the first convolution's per-example weight
    gradient when its input is shared by the models (NotImplementedError in the conv batching
    rule, cf. jax-ml/jax#32157); a per-model input takes the rule that exists, same values.
    """
    fn = step.vmap_models(make_whitebox_fn(model, num_queries), (0, 0, None))

    def mapped(state, images, labels):
        num_models = jax.tree.leaves(state)[0].shape[0]
        return fn(state, jnp.broadcast_to(images, (num_models, *images.shape)), labels)

    return jax.jit(mapped)


def whitebox_shapes(model: nn.Module, sample_image) -> tuple[list[str], int]:
    """(layer names, F) for `model` on examples shaped like sample_image [...], without computing
    anything: norms have len(names) + 1 columns, features F. The same for every query count."""
    _, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x[None], train=False, mutable=True),
        jnp.asarray(sample_image),
    )
    features = jax.eval_shape(_features, variables.get("intermediates", {}))
    return layer_names(variables["params"]), features.shape[0]
