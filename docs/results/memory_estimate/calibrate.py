"""One row of README.md's table: a training step's temporaries as XLA:CPU compiles them, against
the activations lira.stages.preflight captures for the same batch.

    python docs/results/memory_estimate/calibrate.py cnn32 8x8x1 4096
"""

import sys

import jax.numpy as jnp
import numpy as np

from lira.config import TrainingConfig
from lira.stages import preflight
from lira.training import loop
from lira.training import step as step_lib
from lira.training.models import get_model

NUM_EXAMPLES = 2000


def main(arch: str, shape: tuple[int, ...], batch: int) -> None:
    model = get_model(arch, 10, None, jnp.float32)
    config = TrainingConfig(batch_size=batch, models_per_step=1, epochs=1)
    programs = loop.Programs(
        model, config, step_lib.steps_per_epoch(NUM_EXAMPLES, 0.5, batch), jnp.zeros(shape)
    )
    inputs = loop.SliceInputs.place(np.ones((1, NUM_EXAMPLES), bool), 0, 1)
    state = programs.init_slice(inputs, 0)
    totals = loop.zero_totals(1, inputs.by_model)
    order = programs.order(inputs.keep, inputs.ids, 0, 0)
    x, y = jnp.zeros((NUM_EXAMPLES, *shape)), jnp.zeros(NUM_EXAMPLES, jnp.int32)
    compiled = programs.step.lower(state, totals, order, inputs.num_in, inputs.ids, x, y, 0).compile()
    temporaries = compiled.memory_analysis().temp_size_in_bytes
    _, captured = preflight.model_shapes(arch, 10, shape)
    estimate = batch * captured * preflight.TRAIN_ACTIVATION_FACTOR
    print(f"{arch} {shape} batch {batch}: XLA temporaries {temporaries / 2**20:.1f} MiB, estimate "
          f"{estimate / 2**20:.1f} MiB, temporaries / captured {temporaries / (batch * captured):.1f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(v) for v in sys.argv[2].split("x")), int(sys.argv[3]))
