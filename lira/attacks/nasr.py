"""Nasr, Shokri and Houmansadr 2019 ("Comprehensive Privacy Analysis of Deep Learning"): the
white-box attack model, as ML Privacy Meter's first release built it.

One attack network per target, trained on its reference models' (model, example) pairs labelled
IN or OUT (the target's own row is False in both masks, so its outputs never train it), then
applied to the target's examples; the score is the network's P(IN). Its inputs, each optional
(`use`, the attack stage's --nasr_inputs), concatenated per example:

    gradients    log of the loss-gradient norm of every layer with parameters and of the whole
                 model, per white-box query: [Qw * (L + 1)]
    activations  the penultimate activations, averaged over the white-box queries: [F]
    loss         the cross-entropy on each black-box query: [Q]
    label        the one-hot label: [C]

In spirit of the paper's architecture, not a copy: the paper feeds each component through a
small fully connected (or, for the gradient matrices, convolutional) encoder and combines them
in a further network. Here the components are standardized and concatenated into one network
with a hidden layer of 128 ReLU units (Shokri's trainer, lira.attacks.shokri.train_mlps, with
early stopping on a validation split). Gradient *norms* per layer stand in for the gradient
matrices, which at M x N x Q would not fit on a disk (issue 15: store norms, not gradients).
"""

from __future__ import annotations

import jax
import numpy as np

from lira.attacks.common import AttackInputs
from lira.attacks.options import Option
from lira.attacks.shokri import MLPConfig, TrainingSet, fit_mlps, gather_features

INPUTS = ("gradients", "activations", "loss", "label")

DEFAULT_MAX_TRAIN = 10_000
NETWORK = MLPConfig(hidden=128)


def draw_training_sets(inputs: AttackInputs, max_train: int) -> list[TrainingSet]:
    """One training set per target: at most `max_train` of its labelled (reference model,
    example) pairs, drawn from np.random.default_rng(seed of the target)."""
    num_models, num_examples = inputs.is_in.shape[1:]
    sets = []
    for row in range(inputs.num_targets):
        rng = np.random.default_rng(inputs.seeds[row])
        pairs = np.flatnonzero(inputs.is_in[row] | inputs.is_out[row])
        if len(pairs) > max_train:
            pairs = np.sort(rng.choice(pairs, size=max_train, replace=False))
        models, examples = np.unravel_index(pairs, (num_models, num_examples))
        is_member = inputs.is_in[row, models, examples]
        if is_member.all() or not is_member.any():
            continue
        sets.append(TrainingSet(row, -1, models, examples, is_member, int(rng.integers(2**31))))
    return sets


def features(inputs: AttackInputs, use: tuple[str, ...], model: int, rows: np.ndarray) -> np.ndarray:
    """The attack network's inputs for model `model` (a row of the signals) at examples `rows`:
    float32 [len(rows), F] (module docstring)."""
    signals = inputs.signals
    norms, activations = signals.whitebox(model)
    parts = []
    if "gradients" in use:
        parts.append(np.log(np.maximum(np.asarray(norms[rows], np.float64), 1e-30)).reshape(len(rows), -1))
    if "activations" in use:
        parts.append(np.asarray(activations[rows], np.float64).mean(axis=1))
    if "loss" in use:
        parts.append(signals.ce[model, rows].astype(np.float64))
    if "label" in use:
        parts.append(np.eye(int(inputs.labels.max()) + 1)[inputs.labels[rows]])
    return np.concatenate(parts, axis=1).astype(np.float32)


def whitebox_nasr(inputs: AttackInputs, use: list[str] | tuple[str, ...] = INPUTS,
                  max_train: int = DEFAULT_MAX_TRAIN) -> np.ndarray:  # fmt: skip
    """P(IN) of every target's examples under its attack network: scores [T, N] (0.5 for a
    target whose references give no IN or no OUT pair)."""
    use = tuple(dict.fromkeys(use))
    unknown = [name for name in use if name not in INPUTS]
    if unknown or not use:
        raise ValueError(f"Unknown Nasr inputs {unknown or use}; choose from {', '.join(INPUTS)}.")
    if inputs.signals.whitebox is None:
        raise ValueError("whitebox_nasr needs white-box signals: run experiments/inference.py --whitebox.")
    scores = np.full((inputs.num_targets, len(inputs.labels)), 0.5)
    sets = draw_training_sets(inputs, max_train)
    if not sets:
        return scores
    read = lambda model, rows: features(inputs, use, model, rows)
    predict = fit_mlps(jax.device_put(gather_features(read, sets)), sets, NETWORK)
    everything = np.arange(len(inputs.labels))
    for k, training_set in enumerate(sets):
        target = int(inputs.targets[training_set.target_row])
        scores[training_set.target_row] = predict(k, read(target, everything))
    return scores


OPTIONS = (
    Option(
        "nasr_inputs", "use", INPUTS, "whitebox_nasr's inputs, any of: gradients (per-layer gradient norms), "
        "activations (penultimate), loss, label.", choices=INPUTS, convert=list,
    ),
)  # fmt: skip
