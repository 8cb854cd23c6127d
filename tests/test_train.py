"""The trainer's invariants: vectorized == single-model, OUT examples unseen, resume == uninterrupted."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_models, synthetic_images, train_run

from lira.config import TrainingConfig
from lira.data import load_dataset
from lira.run import checkpoint, masks
from lira.training import loop
from lira.training import step as step_lib
from lira.training.models import get_model


@pytest.mark.parametrize("arch", ["cnn-tiny", "wrn10-1", "mlp-tiny"])
@pytest.mark.slow
def test_vectorized_model_equals_single_model_run(tmp_path, arch):
    x, y = synthetic_images()
    together = train_run(tmp_path / "all", x, y, arch=arch, num_models=4, models_per_step=4)
    alone = train_run(tmp_path / "one", x, y, arch=arch, num_models=4, model_ids=(2, 3), models_per_step=1)
    assert set(alone) == {2}
    for a, b in zip(together[2], alone[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # The models differ from one another, so the comparison above has teeth.
    assert not np.allclose(together[1][0], together[2][0])


@pytest.mark.slow
def test_model_never_sees_out_examples(tmp_path):
    x, y = synthetic_images()
    keep = masks.make_keep(2, len(y), 0.5, seed=0)
    clean = train_run(tmp_path / "clean", x, y, num_models=2, keep=keep, models_per_step=2)
    out_of_model0 = ~keep[0]
    x_bad, y_bad = x.copy(), y.copy()
    x_bad[out_of_model0] = 1e6
    y_bad[out_of_model0] = (y[out_of_model0] + 1) % 3
    y_bad[0] = max(y_bad[0], 0)  # num_classes stays 3
    corrupted = train_run(tmp_path / "bad", x_bad, y_bad, num_models=2, keep=keep, models_per_step=2)
    for a, b in zip(clean[0], corrupted[0], strict=True):
        np.testing.assert_array_equal(a, b)
    # Model 1 trains on some of those examples, so it must change: the corruption is real.
    assert not np.array_equal(clean[1][0], corrupted[1][0])


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    x, y = synthetic_images()
    straight = train_run(tmp_path / "straight", x, y, epochs=3, models_per_step=2)
    interrupted = tmp_path / "interrupted"
    partial = train_run(interrupted, x, y, epochs=3, models_per_step=2, stop_after_epochs=4)
    assert set(partial) == {0, 1}  # first slice finished (3 epochs), second stopped after 1 epoch
    resumed = train_run(interrupted, x, y, epochs=3, models_per_step=2)
    for m in range(4):
        for a, b in zip(straight[m], resumed[m], strict=True):
            np.testing.assert_array_equal(a, b)
    rows = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert sorted({(r["model"], r["epoch"]) for r in rows}) == [(m, e) for m in range(4) for e in (1, 2, 3)]
    assert len(rows) == 12  # no epoch was trained twice


def test_non_finite_loss_names_models_and_step(tmp_path):
    x, y = synthetic_images()
    keep = masks.make_keep(4, len(y), 0.5, seed=0)
    only_models_2_and_3 = np.flatnonzero(keep[2] & keep[3])  # each example is IN for exactly 2 of 4
    assert only_models_2_and_3.size
    x = x.copy()
    x[only_models_2_and_3] = np.nan
    with pytest.raises(loop.NonFiniteLossError, match=r"model 2 at step \d+, model 3 at step \d+") as error:
        train_run(tmp_path, x, y, keep=keep, augment="none")
    assert "model 0" not in str(error.value) and "model 1" not in str(error.value)


@pytest.mark.slow
def test_train_log_has_accuracies(tmp_path):
    x, y = synthetic_images()
    train_run(tmp_path, x, y, num_models=2, models_per_step=2)
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {"model", "epoch", "loss", "train_acc", "test_acc"} <= set(rows[0])
    assert all(0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 for r in rows)


@pytest.mark.parametrize("eval_every", [0, 2])
def test_test_accuracy_is_logged_at_the_last_epoch_whatever_eval_every(tmp_path, eval_every):
    x, y = synthetic_images()
    config = TrainingConfig(epochs=3, batch_size=16, lr=0.05, augment="none", seed=1, models_per_step=2,
                            eval_every=eval_every)  # fmt: skip
    loop.train_models(
        logdir=tmp_path, x_train=x, y_train=y, x_test=x[:32], y_test=y[:32], num_classes=int(y.max()) + 1,
        keep=masks.make_keep(2, len(y), 0.5, seed=0), arch="mlp-tiny", config=config, model_ids=(0, 2),
        progress=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    evaluated = sorted({row["epoch"] for row in rows if "test_acc" in row})
    assert evaluated == ([3] if eval_every == 0 else [2, 3])  # 0 means: only after the last epoch


def _conv_summary(hlo: str) -> list[tuple[str, int, int]]:
    """(window size, feature_group_count, batch_group_count) of every convolution in HLO text."""
    out = []
    for line in hlo.splitlines():
        if " convolution(" not in line:
            continue
        window = re.search(r"window=\{size=(\S+)", line)
        features = re.search(r"feature_group_count=(\d+)", line)
        batches = re.search(r"batch_group_count=(\d+)", line)
        out.append((
            window.group(1) if window else "", int(features.group(1)) if features else 1,
            int(batches.group(1)) if batches else 1,
        ))  # fmt: skip
    return out


def _wrn_step_inputs(num_models: int, batch_size: int = 8):
    config = TrainingConfig(batch_size=batch_size, augment="weak", models_per_step=num_models, seed=3)
    model = get_model("wrn10-1", 10, "xla")
    x, y = synthetic_images(64, 10, (8, 8, 3))
    programs = loop.Programs(model, config, 4, jnp.asarray(x[0]))
    inputs = loop.SliceInputs.place(masks.make_keep(num_models, len(y), 0.5, seed=0), 0, num_models)
    state = programs.init_slice(inputs, config.seed)
    order = programs.order(inputs.keep, inputs.ids, 0, config.seed)
    return model, programs.tx, config, state, (order, inputs.num_in, inputs.ids, x, y)


@pytest.mark.slow
def test_vectorized_wrn_step_takes_weight_gradients_as_batch_grouped_convolutions():
    """With the gradient outside the vmap, each weight gradient is one convolution with
    batch_group_count = M (what XLA's GPU rewriter gives cuDNN's backward-filter kernels); vmapping
    a step that contains the gradient makes it a feature-grouped convolution whose window is the
    whole activation map. The kernels are 3x3 and 1x1: any feature-grouped convolution with
    another window is a weight gradient computed the slow way."""
    model, tx, config, state, args = _wrn_step_inputs(4)
    kernel_windows = {"3x3", "1x1"}
    num_conv_layers = sum(
        1 for path in jax.tree_util.tree_leaves_with_path(state.params) if "Conv" in str(path)
    )

    def convs(step):
        return _conv_summary(jax.jit(step).lower(state, *args, 0).as_text(dialect="hlo"))

    new = convs(step_lib.make_vectorized_step(model, tx, config))
    assert not [c for c in new if c[1] > 1 and c[0] not in kernel_windows]
    assert sum(1 for c in new if c[2] == 4) == num_conv_layers  # one per conv layer: every weight gradient
    old = convs(
        step_lib.vmap_models(step_lib.make_train_step(model, tx, config), (0, 0, 0, 0, None, None, None))
    )
    assert [c for c in old if c[1] > 1 and c[0] not in kernel_windows]  # the check has teeth


@pytest.mark.parametrize("arch", ["wrn10-1", "cnn-tiny", "mlp-tiny"])
@pytest.mark.slow
def test_vectorized_step_equals_vmapped_gradient_and_single_model_steps(arch):
    """Per-model parameters after a few steps: the gradient outside the vmap gives what the
    vmapped single-model step gave (float32, relative 1e-6), and what each model's own step gives."""
    model, tx, config, state, args = _wrn_step_inputs(3)
    if arch != "wrn10-1":
        model = get_model(arch, 10, "xla")
        programs = loop.Programs(model, config, 4, jnp.asarray(args[3][0]))
        tx, state = programs.tx, programs.init_slice(loop.SliceInputs.place(
            masks.make_keep(3, len(args[4]), 0.5, seed=0), 0, 3), config.seed)  # fmt: skip
    new_step = jax.jit(step_lib.make_vectorized_step(model, tx, config))
    old_step = jax.jit(
        step_lib.vmap_models(step_lib.make_train_step(model, tx, config), (0, 0, 0, 0, None, None, None))
    )
    single_step = jax.jit(step_lib.make_train_step(model, tx, config))
    new, old = state, state
    singles = [jax.tree.map(lambda v, m=m: v[m], state) for m in range(3)]
    order, num_in, ids, x, y = args
    for step in range(3):
        new = new_step(new, *args, step)[0]
        old = old_step(old, *args, step)[0]
        singles = [single_step(s, order[m], num_in[m], ids[m], x, y, step)[0] for m, s in enumerate(singles)]
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))
    for m, single in enumerate(singles):
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(single.params), strict=True):
            np.testing.assert_allclose(a[m], b, rtol=1e-6, atol=1e-6 * float(np.abs(b).max()))
    first = jax.tree.leaves(new.params)[0]
    assert not np.allclose(first[0], first[1])  # the models differ, so the comparisons have teeth


@pytest.mark.parametrize("steps_per_call", [2, 100])
@pytest.mark.parametrize("arch", ["mlp-tiny", "cnn-tiny"])
@pytest.mark.slow
def test_steps_in_one_program_equal_one_step_a_call(tmp_path, steps_per_call, arch):
    """A lax.fori_loop over the steps of an epoch (whole or in chunks) trains the models of one
    compiled call a step: bit-identical where both run the same kernels (the MLP's matmuls). A
    convolution inside a loop body is not given XLA:CPU's fast kernels (jax issue 12868: 60x
    slower, docs/results/steps_per_call_cpu/, which is why the CPU default is a call a step), and
    its naive loops sum in another order: the models then agree to float rounding."""
    x, y = synthetic_images()
    one = train_run(tmp_path / "one", x, y, arch=arch, epochs=2, models_per_step=2, steps_per_call=1)
    looped = train_run(
        tmp_path / "loop", x, y, arch=arch, epochs=2, models_per_step=2, steps_per_call=steps_per_call
    )
    for m in range(4):
        for a, b in zip(one[m], looped[m], strict=True):
            if arch == "mlp-tiny":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))
    assert not np.allclose(one[0][0], one[1][0])  # the models differ: the comparisons have teeth


@pytest.mark.slow
def test_checkpoint_every_resumes_from_the_last_save_and_logs_each_epoch_once(tmp_path):
    x, y = synthetic_images()
    straight = train_run(tmp_path / "straight", x, y, epochs=5, models_per_step=4, checkpoint_every=2)
    interrupted = tmp_path / "interrupted"
    train_run(interrupted, x, y, epochs=5, models_per_step=4, checkpoint_every=2, stop_after_epochs=3)
    folder = checkpoint.slice_dir(interrupted, 0, 4)
    assert checkpoint.latest_epoch(folder) == 2  # epoch 3 ran but was not saved: the "kill" lost it
    rows = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert sorted({r["epoch"] for r in rows}) == [1, 2]  # logged only what a checkpoint covers
    resumed = train_run(interrupted, x, y, epochs=5, models_per_step=4, checkpoint_every=2)
    for m in range(4):
        for a, b in zip(straight[m], resumed[m], strict=True):
            np.testing.assert_array_equal(a, b)
    rows = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["epoch"]) for r in rows) == [(m, e) for m in range(4) for e in range(1, 6)]
    assert checkpoint.latest_epoch(folder) == 5  # the last epoch is always saved


def test_evaluations_before_the_last_epoch_use_the_fixed_subset(tmp_path):
    x, y = synthetic_images()
    config = TrainingConfig(epochs=2, batch_size=16, lr=0.05, augment="none", models_per_step=2, eval_every=1,
                            eval_examples=10)  # fmt: skip
    loop.train_models(
        logdir=tmp_path, x_train=x, y_train=y, x_test=x[:32], y_test=y[:32], num_classes=int(y.max()) + 1,
        keep=masks.make_keep(2, len(y), 0.5, seed=0), arch="mlp-tiny", config=config, model_ids=(0, 2),
        progress=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {(r["epoch"], r["test_examples"]) for r in rows} == {(1, 10), (2, 32)}


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_and_keeps_the_state_in_float32(tmp_path):
    x, y = synthetic_images(shape=(8, 8, 3))
    runs = {dtype: train_run(tmp_path / dtype, x, y, arch="wrn10-1", num_models=2, models_per_step=2, epochs=1,
                             dtype=dtype) for dtype in ("float32", "bfloat16")}  # fmt: skip
    for leaves in runs["bfloat16"].values():
        assert all(leaf.dtype == np.float32 and np.isfinite(leaf).all() for leaf in leaves)
    # bfloat16 rounding changes the models a little, not much
    for a, b in zip(runs["float32"][0], runs["bfloat16"][0], strict=True):
        assert not np.array_equal(a, b)
        np.testing.assert_allclose(a, b, atol=0.1 * float(np.abs(a).max()) + 1e-3)
    model = get_model("wrn10-1", 3, "xla", jnp.bfloat16)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    hlo = (
        jax.jit(lambda v, x: model.apply(v, x, train=False))
        .lower(variables, jnp.zeros((2, 8, 8, 3)))
        .as_text()
    )
    assert "bf16" in hlo and model.apply(variables, jnp.zeros((2, 8, 8, 3)), train=False).dtype == jnp.float32


@pytest.mark.slow
def test_uint8_pixels_standardized_on_the_device_train_the_same_models(tmp_path):
    """The dataset goes to the device as uint8 and each batch is standardized there: the same
    float32 inputs as lira.data's host preprocessing, so the same models, bit for bit."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 128).astype(np.int32)
    x = np.clip(rng.normal(60 + 50 * y[:, None, None, None], 40, (128, 8, 8, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:96], y_train=y[:96], x_test=x[96:], y_test=y[96:])
    dataset = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert dataset.pixels is not None and dataset.pixels.train.dtype == np.uint8
    on_device = step_lib.DeviceImages.of(jnp.asarray(dataset.pixels.train), dataset.pixels)
    np.testing.assert_array_equal(np.asarray(on_device.take()), dataset.x_train)
    config = TrainingConfig(epochs=2, batch_size=16, lr=0.05, augment="weak", seed=1, models_per_step=2)
    runs = {}
    for name, pixels in (("float", None), ("uint8", dataset.pixels)):
        loop.train_models(
            logdir=tmp_path / name, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
            y_test=dataset.y_test, num_classes=3, keep=masks.make_keep(2, 96, 0.5, seed=0), arch="cnn-tiny",
            config=config, model_ids=(0, 2), pixels=pixels, progress=False,
        )  # fmt: skip
        runs[name] = load_models(tmp_path / name, "cnn-tiny", dataset.x_train, dataset.y_train, config)
    for m in range(2):
        for a, b in zip(runs["float"][m], runs["uint8"][m], strict=True):
            np.testing.assert_array_equal(a, b)
    logs = [(tmp_path / name / "train_log.jsonl").read_text() for name in runs]
    assert logs[0] == logs[1]  # the evaluations too


def test_training_imports_without_the_dp_libraries():
    """An accelerator image may lack jax-privacy and dp-accounting (the GPU machine's does): the
    trainer, the query stage and the benchmarks import them only for DP."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jax_privacy', 'dp_accounting'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lira.training.loop, lira.stages.train, lira.stages.query, bench.training, bench.end_to_end\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
