"""Small synthetic data and training runs shared by the tests."""

from __future__ import annotations

import numpy as np

from lira.config import TrainingConfig
from lira.run import masks
from lira.training import loop


def synthetic_images(num_examples=96, num_classes=3, shape=(8, 8, 1), seed=0):
    """Images whose class shifts their mean, so a tiny model can learn something."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_examples).astype(np.int32)
    x = rng.normal(size=(num_examples, *shape)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    return x, y


def train_run(logdir, x, y, *, arch="cnn-tiny", num_models=4, model_ids=None, models_per_step=4, epochs=2,
              batch_size=16, augment="weak", keep=None, stop_after_epochs=None, conv_impl=None, dtype=None,
              **training):  # fmt: skip
    """Trains models `model_ids` of a run and returns {model index: params and batch_stats};
    `training`: further TrainingConfig fields (e.g. dp_noise_multiplier); dtype: the compute dtype."""
    keep = masks.make_keep(num_models, len(y), 0.5, seed=0) if keep is None else keep
    config = TrainingConfig(epochs=epochs, batch_size=batch_size, lr=0.05, augment=augment, seed=1,
                            models_per_step=models_per_step, **training)  # fmt: skip
    loop.train_models(
        logdir=logdir, x_train=x, y_train=y, x_test=x[:32], y_test=y[:32], num_classes=int(y.max()) + 1,
        keep=keep, arch=arch, config=config, model_ids=model_ids or (0, num_models), conv_impl=conv_impl,
        dtype=dtype, progress=False, stop_after_epochs=stop_after_epochs,
    )  # fmt: skip
    return load_models(logdir, arch, x, y, config)


def load_models(logdir, arch, x, y, config):
    out = {}
    states = loop.load_slice_states(logdir, arch, int(y.max()) + 1, config, x[0], len(y))
    for start, stop, state in states:
        for offset, m in enumerate(range(start, stop)):
            out[m] = [np.asarray(leaf[offset]) for leaf in _leaves(state)]
    return out


def _leaves(state):
    import jax

    return jax.tree.leaves((state.params, state.batch_stats))


def tiny_image_run_config(root, num_models: int, models_per_step: int, **changes):
    """A Config of `num_models` cnn-tiny models on 96 uint8 8x8 colour images of 4 classes (written
    to root/images.npz, 32 more as the test split), 2 epochs in batches of 16."""
    from lira import config

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 128)
    x = np.clip(rng.normal(60 + 40 * y[:, None, None, None], 40, (128, 8, 8, 3)), 0, 255).astype(np.uint8)
    np.savez(root / "images.npz", x_train=x[:96], y_train=y[:96], x_test=x[96:], y_test=y[96:])
    return config.Config().replace(
        dataset=f"npz:{root / 'images.npz'}", arch="cnn-tiny", num_shadows=num_models, epochs=2, batch_size=16,
        lr=0.05, models_per_step=models_per_step, **changes,
    )  # fmt: skip


def audit_run(logdir, attacks, **fields):
    """lira.stages.attack.run_audit on the run in `logdir`: `attacks` and the AttackConfig `fields`."""
    from lira.config import AttackConfig
    from lira.run.reader import read_run
    from lira.stages import attack

    return attack.run_audit(read_run(logdir), AttackConfig(attacks=list(attacks), **fields))
