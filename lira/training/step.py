"""Vectorized shadow training: the pure core.

A `TrainState` holds M models stacked on a leading model axis. `make_train_step` builds the step
of one model and `make_vectorized_step` the step of M at once, its gradient taken outside the
vmap (its docstring says why); every model draws its own minibatches from its own IN set (its
own permutation every epoch) and its own augmentation, all on the device.

Randomness is a function of (seed, model index, epoch or step) alone:

    model_key = fold_in(root, model_index)
    init      = fold_in(model_key, 0)
    epoch order   fold_in(fold_in(model_key, 1), epoch)
    augmentation  fold_in(fold_in(model_key, 2), global_step)
    dropout       fold_in(fold_in(model_key, 5), global_step)   (flax's "dropout" rng, any model's;
                                                                 other streams: stochastic_rngs)
    DP batches    numpy's default_rng([seed, model_index, 3, epoch])   (lira/training/sampling.py)
    DP noise      fold_in(model_key, 4), then split every step          (jax-privacy's privatizer)

so model i comes out the same whether it trains alone, in a vectorized chunk, in another
process's `--shadow_ids` slice, or after a resume.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lira.config import TrainingConfig
from lira.training import augment as augment_lib

_INIT, _ORDER, _AUGMENT, _NOISE, _DROPOUT = 0, 1, 2, 4, 5  # 3: lira/training/sampling.py's batches


@flax.struct.dataclass
class TrainState:
    """One model's state; stacked, every leaf gains a leading [M] axis."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@flax.struct.dataclass
class DeviceImages:
    """Images on the device as uint8 [N, H, W, C], standardized where they are read (`take`) by
    lira.data.Pixels' table: the same float32 values as the host's x_train, from a quarter of
    the bytes. Anywhere the trainer takes x, it takes either this or a float array."""

    pixels: jax.Array  # uint8 [N, H, W, C]
    table: jax.Array  # float32 [256, C]: table[v, c] the standardized value of pixel v in channel c

    @classmethod
    def of(cls, pixels, like) -> DeviceImages:
        """uint8 `pixels` with the table of `like` (a lira.data.Pixels)."""
        return cls(pixels, like.table)

    @property
    def shape(self):
        return self.pixels.shape

    def rows(self, start: int, stop: int) -> DeviceImages:
        return self.replace(pixels=self.pixels[start:stop])

    def take(self, index=slice(None)):
        """float32 [..., H, W, C]: the standardized images pixels[index]."""
        pixels = self.pixels[index].astype(jnp.int32)
        return self.table[pixels, jnp.arange(pixels.shape[-1])]


def take(x, index=slice(None)):
    """x[index] of a float array or a DeviceImages, as float."""
    return x.take(index) if isinstance(x, DeviceImages) else x[index]


def steps_per_epoch(num_examples: int, pkeep: float, batch_size: int) -> int:
    """Steps in one epoch, from the expected IN-set size, the same for every model.

    Models' IN sets differ by a few examples; a model whose set is smaller wraps around, so
    every model sees every IN example at least once in nearly every epoch and all models
    advance in lockstep, as one vectorized program requires.
    """
    return max(1, math.ceil(round(pkeep * num_examples) / batch_size))


def model_key(seed: int, model_index):
    return jax.random.fold_in(jax.random.key(seed), model_index)


def make_optimizer(config: TrainingConfig, num_steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum, linear warm-up then cosine decay, weight decay on kernels only.

    Under DP (config.dp), the gradient it receives is the sum of clipped per-example gradients:
    jax-privacy's Gaussian privatizer adds N(0, (sigma C)^2) noise to it first and the sum is
    divided by the expected batch size, both before anything else sees it (lira/dp.py). The
    privatizer's key is per model, set by make_init.
    """
    total = config.epochs * num_steps_per_epoch
    warmup = min(int(config.warmup_epochs * num_steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.lr, peak_value=config.lr, warmup_steps=warmup, decay_steps=total
    )
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )
    optimizer = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum or None),
    )
    if not config.dp:
        return optimizer
    if config.dp_noise_multiplier is None:
        raise ValueError("DP training needs its noise multiplier resolved from --dp_target_epsilon first.")
    from jax_privacy import noise_addition  # DP only: an accelerator image may lack jax-privacy

    privatizer = noise_addition.gaussian_privatizer(
        stddev=config.dp_noise_multiplier * config.dp_clip_norm, prng_key=jax.random.PRNGKey(0)
    )  # the key is a placeholder: make_init gives every model its own
    return optax.chain(privatizer, optax.scale(1.0 / config.batch_size), optimizer)


def make_init(model: nn.Module, tx: optax.GradientTransformation, sample_input: jax.Array, dp: bool = False):
    """init(model_index, seed) -> TrainState for one model; vmap it over model indices.

    With `dp`, tx is make_optimizer's DP chain, whose first state is the privatizer's
    (key, ()): its key becomes fold_in(model_key, _NOISE), so no two models share noise.
    """

    def init(model_index, seed):
        key = jax.random.fold_in(model_key(seed, model_index), _INIT)
        variables = model.init(key, sample_input[None], train=False)
        params = variables["params"]
        opt_state = tx.init(params)
        if dp:
            (_, inner), *rest = opt_state
            noise_key = jax.random.key_data(jax.random.fold_in(model_key(seed, model_index), _NOISE))
            opt_state = ((noise_key, inner), *rest)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=opt_state,
        )

    return init


def epoch_order(keep_row, model_index, epoch, seed):
    """keep_row: bool [N] -> int32 [N]: a fresh permutation of the IN examples, OUT ones last."""
    key = jax.random.fold_in(jax.random.fold_in(model_key(seed, model_index), _ORDER), epoch)
    draw = jax.random.uniform(key, keep_row.shape)
    return jnp.argsort(jnp.where(keep_row, draw, 2.0)).astype(jnp.int32)


def cross_entropy(logits, labels):
    """logits: [B, C], labels: [B] -> [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: TrainingConfig):
    """step(state, order, num_in, model_index, x, y, step_in_epoch) -> (state, loss, correct).

    For one model: order int32 [N] and num_in from its keep row; x [N, ...], y [N] the whole
    pool, shared by all models. Only positions < num_in of `order` are read, so a model never
    touches an OUT example. This is the single-model step: make_vectorized_step advances many.
    """
    batch, loss_fn, apply = _step_parts(model, tx, config)

    def step(state, order, num_in, model_index, x, y, step_in_epoch):
        images, labels, rng = batch(state, order, num_in, model_index, x, y, step_in_epoch)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, labels, rng
        )
        return apply(state, grads, batch_stats, loss, logits, labels)

    return step


def make_vectorized_step(model: nn.Module, tx: optax.GradientTransformation, config: TrainingConfig):
    """The step of make_train_step over M models stacked on a leading axis (every argument but
    x, y and step_in_epoch has it), with the gradient taken OUTSIDE the vmap.

    The models share no parameters, so the gradient of the sum over models of the vmapped
    per-model losses, with respect to the stacked parameters, holds each model's own gradient:
    the same values as vmapping a step that contains jax.grad. What differs is the program. Vmap a
    gradient and every weight gradient becomes a convolution grouped by features over the model
    axis whose window is the whole activation map, which XLA's GPU convolution rewriter cannot
    give to cuDNN's backward-filter kernels; differentiate a vmapped forward pass and the weight
    gradients carry batch_group_count = M, which it does (tests/test_train.py reads the HLO).
    With one model it is make_train_step's program exactly (vmap_models' squeezed path).
    """
    batch, loss_fn, apply = _step_parts(model, tx, config)
    batches = jax.vmap(batch, in_axes=(0, 0, 0, 0, None, None, None))
    losses = jax.vmap(loss_fn)

    def total_loss(params, batch_stats, images, labels, rngs):
        loss, aux = losses(params, batch_stats, images, labels, rngs)
        return jnp.sum(loss), (loss, aux)

    def step(state, order, num_in, model_index, x, y, step_in_epoch):
        images, labels, rngs = batches(state, order, num_in, model_index, x, y, step_in_epoch)
        (_, (loss, (logits, batch_stats))), grads = jax.value_and_grad(total_loss, has_aux=True)(
            state.params, state.batch_stats, images, labels, rngs
        )
        return jax.vmap(apply)(state, grads, batch_stats, loss, logits, labels)

    single = make_train_step(model, tx, config)

    def vectorized(state, order, num_in, model_index, x, y, step_in_epoch):
        if state.step.shape[0] == 1:
            return vmap_models(single, (0, 0, 0, 0, None, None, None))(
                state, order, num_in, model_index, x, y, step_in_epoch
            )
        return step(state, order, num_in, model_index, x, y, step_in_epoch)

    return vectorized


def _step_parts(model: nn.Module, tx: optax.GradientTransformation, config: TrainingConfig):
    """The three parts of one model's step, (batch, loss, apply), so that the single-model and
    the vectorized step differ only in where the gradient is taken.

    batch(state, order, num_in, model_index, x, y, step_in_epoch) -> (images, labels, rng): the
    model's minibatch, augmented, and the key of its stochastic layers for this step.
    loss(params, batch_stats, images, labels, rng) -> (mean cross-entropy, (logits, new
    batch_stats)): in float32 whatever the model computes in (the models cast their logits to
    float32); `rng` gives the model's stochastic layers their streams (stochastic_rngs), so a
    model of one's own with nn.Dropout or noise trains (the built-in models have no stochastic
    layer and ignore it).
    apply(state, grads, batch_stats, loss, logits, labels) -> (state, loss, correct).
    """

    def batch(state, order, num_in, model_index, x, y, step_in_epoch):
        positions = (step_in_epoch * config.batch_size + jnp.arange(config.batch_size)) % num_in
        index = order[positions]
        images = augment_lib.augment(
            take(x, index), augment_key(config, model_index, state.step), config.augment
        )
        return images, y[index], dropout_key(config, model_index, state.step)

    def loss_fn(params, batch_stats, images, labels, rng):
        variables = {"params": params, "batch_stats": batch_stats}
        logits, updates = model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs=stochastic_rngs(rng)
        )
        return cross_entropy(logits, labels).mean(), (logits, updates.get("batch_stats", {}))

    def apply(state, grads, batch_stats, loss, logits, labels):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, loss, correct

    return batch, loss_fn, apply


def augment_key(config: TrainingConfig, model_index, global_step):
    return jax.random.fold_in(jax.random.fold_in(model_key(config.seed, model_index), _AUGMENT), global_step)


def dropout_key(config: TrainingConfig, model_index, global_step):
    return jax.random.fold_in(jax.random.fold_in(model_key(config.seed, model_index), _DROPOUT), global_step)


def stochastic_rngs(key) -> dict:
    """The rngs of a training-mode apply, from one key: flax's "dropout" stream is `key`; any other
    stream a layer asks for (self.make_rng("noise"), ...) falls back in flax to the "params" stream,
    given as fold_in(key, 1). The parameters exist, so nothing is initialised from it."""
    return {"dropout": key, "params": jax.random.fold_in(key, 1)}


def predict(model: nn.Module, state: TrainState, x):
    """One model's logits [B, C] on x [B, ...], BatchNorm in inference mode (running statistics)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return model.apply(variables, x, train=False)


def vmap_models(fn, in_axes):
    """jax.vmap(fn, in_axes) over a leading model axis (in_axes entries 0 or None, outputs on
    axis 0), but when that axis has one model, fn itself on the squeezed arguments.

    Same values; the point is speed: a vmap of size one still batches every convolution
    (feature_group_count over the model axis), which costs XLA:CPU 5-15% of a training step.
    """
    batched = jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        sizes = {jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes) if ax == 0}
        if sizes != {1}:
            return batched(*args)
        args = [jax.tree.map(lambda v: v[0], a) if ax == 0 else a for a, ax in zip(args, in_axes)]
        return jax.tree.map(lambda v: v[None], fn(*args))

    return mapped


def in_counts(keep: np.ndarray) -> np.ndarray:
    """int32 [M]: size of each model's IN set."""
    counts = keep.sum(axis=1).astype(np.int32)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"Models {empty} have no training examples; raise --pkeep or --pool_size.")
    return counts
