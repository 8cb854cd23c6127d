"""The model axis sharded over several devices gives the single-device models.

XLA's device count is fixed when JAX starts, so each run is its own Python process, with
XLA_FLAGS=--xla_force_host_platform_device_count standing in for several accelerators.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from helpers import synthetic_images, train_run
    from lira.training import loop
    assert len(jax.local_devices()) == {devices}, jax.local_devices()
    assert len(loop.model_mesh(4).devices.flat) == {devices}
    x, y = synthetic_images()
    models = train_run({logdir!r}, x, y, arch="wrn10-1", num_models=4, models_per_step=4)
    np.savez({out!r}, **{{f"{{m}}_{{i}}": leaf for m, leaves in models.items() for i, leaf in enumerate(leaves)}})
    """
)


def run_with_devices(tmp_path, devices):
    out = tmp_path / f"models_{devices}.npz"
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    code = SCRIPT.format(
        tests=str(TESTS), devices=devices, logdir=str(tmp_path / f"run{devices}"), out=str(out)
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=600)
    return dict(np.load(out))


@pytest.mark.slow
def test_sharded_over_four_devices_equals_one_device(tmp_path):
    one, four = run_with_devices(tmp_path, 1), run_with_devices(tmp_path, 4)
    assert one.keys() == four.keys() and len(one) > 4
    for name in one:
        np.testing.assert_allclose(four[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)
