"""The trainer's invariants: vectorized == single-model, OUT examples unseen, resume == uninterrupted."""

import json

import numpy as np
import pytest
from helpers import synthetic_images, train_run

from lira.config import TrainingConfig
from lira.training import loop, masks


@pytest.mark.parametrize("arch", ["cnn-tiny", "wrn10-1", "mlp-tiny"])
def test_vectorized_model_equals_single_model_run(tmp_path, arch):
    x, y = synthetic_images()
    together = train_run(tmp_path / "all", x, y, arch=arch, num_models=4, models_per_step=4)
    alone = train_run(tmp_path / "one", x, y, arch=arch, num_models=4, model_ids=(2, 3), models_per_step=1)
    assert set(alone) == {2}
    for a, b in zip(together[2], alone[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # The models differ from one another, so the comparison above has teeth.
    assert not np.allclose(together[1][0], together[2][0])


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
