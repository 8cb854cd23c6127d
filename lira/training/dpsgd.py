"""DP-SGD's train step: per-example clipping of one model's gradients, vmapped over models like
lira/training/step.py's ordinary step (noise: step.make_optimizer; batches: sampling.py).

Two ways to the same sum of clipped per-example gradients (--dp_clipping):

- "per_example": jax-privacy's clipped_grad, which forms every example's gradient (a vmap of
  jax.grad), clips it and sums: B copies of the parameters per step.
- "ghost": every example's gradient norm without forming the gradient (lira.training.grad_norms:
  the loss gradient w.r.t. each Dense and Conv output and the layer's input give the kernel's
  gradient norm, ||a||^2 ||g||^2 for a Dense), then one ordinary backward pass of
  sum_i c_i loss_i with c_i = min(1, C / ||g_i||) held constant: its gradient is
  sum_i c_i g_i, the clipped sum (Li et al. 2022, "ghost clipping"). Only for models whose every
  parameter belongs to such a layer.
- "auto" (default): ghost for models of Dense layers only, per_example elsewhere. On the CPU
  (bench/dp.py; the figures in docs/dp.md, "Cost") ghost makes the MLP's DP step many times
  cheaper, while on cnn32 the two are level: its convolutions' per-example gradients are cheap
  next to the Gram matrices or patch products that their norms need.

tests/test_dp.py checks that both give the same sum, and jax-privacy's is the reference.
"""

from __future__ import annotations

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import jax_privacy
import optax
from flax import traverse_util

from lira.config import TrainingConfig
from lira.training import augment as augment_lib
from lira.training import grad_norms
from lira.training import step as step_lib


def ghost_applies(model: nn.Module, params, sample, dense_only: bool = False) -> bool:
    """Whether every parameter of `model` (params: arrays or shapes) is a tapped layer's, so that
    ghost clipping gets every per-example norm (with dense_only, and every such layer a Dense);
    sample [...] one example."""
    taps = grad_norms.find_taps(model, {"params": params}, sample)
    dense = all(tap.method == "__call__" for tap in taps.values())
    return all(key[:-1] in taps for key in traverse_util.flatten_dict(params)) and (dense or not dense_only)


def uses_rngs(model: nn.Module, params, sample) -> bool:
    """Whether `model` in training mode draws randomness (nn.Dropout, or any layer's make_rng);
    params: arrays or shapes, sample [...] one example. Traced on shapes only."""
    try:
        jax.eval_shape(
            lambda p, x: model.apply({"params": p}, x[None], train=True), params, jnp.asarray(sample)
        )
    except flax.errors.InvalidRngError:
        return True
    return False


def make_clipped_sum(model: nn.Module, clip_norm: float, method: str = "per_example"):
    """fn(params, images [P, ...], labels [P], is_padding_example=bool [P], rng=None) -> (the sum
    over the non-padding examples of each one's cross-entropy gradient clipped to clip_norm,
    per-example losses [P], per-example correct predictions [P]). method: "per_example" or "ghost"
    (module docstring); BatchNorm-free models only.

    rng: the step's key for the model's stochastic layers (step.stochastic_rngs). Example i of the
    physical batch draws from fold_in(rng, i), so each example's dropout mask (or noise) is its
    own, as in a batched forward pass, and its clipped gradient is that of the loss it trained on. "ghost" takes deterministic models
    only (its norms come from a forward pass in inference mode; make_dp_train_step refuses it)."""

    def logits_of(params, images, rngs):
        return model.apply({"params": params}, images, train=True, rngs=rngs)

    if method == "per_example":

        def example_loss(params, images, labels, keys):  # one example, as [1, ...]
            rngs = {} if keys is None else step_lib.stochastic_rngs(jax.random.wrap_key_data(keys[0]))
            logits = logits_of(params, images, rngs)
            return step_lib.cross_entropy(logits, labels).sum(), jnp.sum(jnp.argmax(logits, -1) == labels)

        clipped = jax_privacy.clipped_grad(
            example_loss, has_aux=True, return_values=True, l2_clip_norm=clip_norm, batch_argnums=(1, 2, 3)
        )

        def per_example(params, images, labels, is_padding_example, rng=None):
            keys = None
            if rng is not None:  # [P, 2] raw keys: clipped_grad slices its batch arguments
                keys = jax.random.key_data(
                    jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(len(labels)))
                )
            grads, aux = clipped(params, images, labels, keys, is_padding_example=is_padding_example)
            return grads, aux.values, aux.aux

        return per_example
    if method != "ghost":
        raise ValueError(f"Unknown DP clipping {method!r}; valid: per_example, ghost.")

    def ghost(params, images, labels, is_padding_example, rng=None):
        norms = grad_norms.per_example_norms(model, params, images, labels)  # [P]
        scale = jnp.where(is_padding_example | ~jnp.isfinite(norms), 0.0, jnp.minimum(1.0, clip_norm / norms))
        scale = jax.lax.stop_gradient(scale)

        def weighted(params):
            logits = logits_of(params, images, {})
            losses = step_lib.cross_entropy(logits, labels)
            return jnp.sum(scale * losses), (losses, jnp.argmax(logits, -1) == labels)

        grads, (losses, correct) = jax.grad(weighted, has_aux=True)(params)
        return grads, losses, correct

    return ghost


def make_dp_train_step(model: nn.Module, tx: optax.GradientTransformation, config: TrainingConfig,
                       sample) -> callable:  # fmt: skip
    """DP-SGD's step(state, batches, sizes, model_index, x, y, step_in_epoch) -> (state, loss,
    correct), the signature of step.make_train_step's; sample [...] one example.

    For one model: batches int32 [S, P] and sizes int32 [S] from sampling.py's Poisson sampling
    for this epoch (P the physical batch); row `step_in_epoch` holds the step's draw, then
    padding, which contributes exactly zero. tx (step.make_optimizer's DP chain) adds the noise.
    The model must hold no BatchNorm: its statistics would mix examples before clipping. A model
    with dropout draws each example's mask from the step's dropout key (step.dropout_key, as in
    ordinary training) folded with the example's row, and is clipped per example.
    """
    method = config.dp_clipping
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(sample)[None], train=False))
    stochastic = uses_rngs(model, params["params"], sample)
    if method == "ghost" and stochastic:
        raise ValueError(
            "--dp_clipping=ghost takes a deterministic model, but this one draws randomness in "
            "training (dropout); use --dp_clipping=per_example or auto."
        )
    if method == "auto":
        ghost = not stochastic and ghost_applies(model, params["params"], sample, dense_only=True)
        method = "ghost" if ghost else "per_example"
    clipped_sum = make_clipped_sum(model, config.dp_clip_norm, method)

    def dp_step(state, batches, sizes, model_index, x, y, step_in_epoch):
        index, size = batches[step_in_epoch], sizes[step_in_epoch]
        padding = jnp.arange(index.shape[0]) >= size
        key = step_lib.augment_key(config, model_index, state.step)
        images = augment_lib.augment(step_lib.take(x, index), key, config.augment)
        rng = step_lib.dropout_key(config, model_index, state.step)
        grads, losses, correct = clipped_sum(
            state.params, images, y[index], is_padding_example=padding, rng=rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = jnp.sum(jnp.where(padding, 0.0, losses)) / jnp.maximum(size, 1)
        new_state = step_lib.TrainState(
            step=state.step + 1, params=params, batch_stats=state.batch_stats, opt_state=opt_state
        )
        return new_state, loss, jnp.sum(jnp.where(padding, 0, correct))

    return dp_step
