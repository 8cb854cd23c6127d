"""A synthetic run directory with a planted membership signal, for tests and benchmarks.

Model m's logits on example n under query q: every class gets standard normal noise, and the
true class gets the example's difficulty (shared by all models) plus `signal` when n is IN for
m. Members therefore have higher confidence by `signal` logits, and a per-example-calibrated
attack (LiRA, RMIA) should beat the plain loss because difficulty varies between examples.

With `whitebox`, also the white-box files of experiments/inference.py --whitebox: each layer's
gradient norm is exp(-(difficulty + signal * IN + noise)), the whole model's their root sum of
squares, and the "activations" are noise plus signal * IN in their first coordinate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lira.run import layout, masks


def make_synthetic_rundir(logdir: Path, num_models: int = 8, num_examples: int = 64, num_queries: int = 2,
                          num_classes: int = 3, signal: float = 1.0, seed: int = 0,
                          keep: np.ndarray | None = None, whitebox: bool = False, num_layers: int = 2,
                          num_features: int = 4) -> dict:  # fmt: skip
    """Writes config.json, keep.npy, labels.npy, train_log.jsonl and logits/ under `logdir`.

    Returns the config. `keep` overrides the balanced mask (to build edge cases in tests).
    """
    logdir = Path(logdir)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    difficulty = rng.normal(2.0, 1.5, num_examples).astype(np.float32)
    keep = masks.make_keep(num_models, num_examples, 0.5, seed) if keep is None else np.asarray(keep, bool)
    config = {
        "flags": {
            "dataset": "synthetic",
            "arch": "none",
            "num_shadows": num_models,
            "seed": seed,
            "pkeep": 0.5,
        },
        "data": {
            "name": "synthetic",
            "num_examples": num_examples,
            "num_test": 0,
            "num_classes": num_classes,
            "input_shape": [8, 8, 1],
        },
        "versions": {},
        "git_commit": None,
        "inference": {"queries": num_queries},
    }
    layout.save_json(logdir / layout.CONFIG, config)
    layout.save_npy(logdir / layout.KEEP, keep)
    layout.save_npy(logdir / layout.LABELS, labels)
    rows = [
        {"model": m, "epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.5} for m in range(num_models)
    ]
    (logdir / layout.TRAIN_LOG).unlink(missing_ok=True)
    layout.append_jsonl(logdir / layout.TRAIN_LOG, rows)
    true_class = labels[:, None, None] == np.arange(num_classes)  # [N, 1, C]
    for m in range(num_models):
        model_rng = np.random.default_rng([seed, m])
        logits = model_rng.standard_normal((num_examples, num_queries, num_classes), dtype=np.float32)
        shift = difficulty + signal * keep[m]
        logits += np.where(true_class, shift[:, None, None], 0.0).astype(np.float32)
        layout.save_npy(layout.logits_path(logdir, m), logits)
        if whitebox:
            exponent = difficulty[:, None, None] + signal * keep[m][:, None, None]
            exponent = exponent + model_rng.standard_normal(
                (num_examples, num_queries, num_layers), dtype=np.float32
            )
            layers = np.exp(-exponent)
            whole = np.sqrt(np.sum(layers**2, axis=-1, keepdims=True))
            layout.save_npy(
                layout.whitebox_path(logdir, m, "norms"),
                np.concatenate([layers, whole], -1).astype(np.float32),
            )
            features = model_rng.standard_normal((num_examples, num_queries, num_features), dtype=np.float32)
            features[..., 0] += signal * keep[m][:, None]
            layout.save_npy(layout.whitebox_path(logdir, m, "features"), features)
    if whitebox:
        config["whitebox"] = {"queries": num_queries, "layers": [f"layer_{i}" for i in range(num_layers)],
                              "features": num_features}  # fmt: skip
        layout.save_json(logdir / layout.CONFIG, config)
    return config
