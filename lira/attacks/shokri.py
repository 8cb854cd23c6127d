"""Shokri et al. 2017 ("Membership Inference Attacks Against Machine Learning Models").

One binary attack classifier per class, trained on reference models' prediction vectors of
that class's examples, labelled IN or OUT, then applied to the target's prediction vectors.
The score is the classifier's probability of IN.

Features: the softmax vector over all C classes, unsorted (each classifier serves one true
class, so the position of the true class is fixed and carries information), concatenated over
the Q queries: [Q * C] per example. This is the paper's feature set; it does not see the label.

Training data per class: (reference, example) pairs the driver marked IN or OUT, at most
`max_train_per_class` of them drawn without replacement from the seed, which bounds the cost
at M * N pairs for a big run.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lira.attacks.common import AttackContext, References
from lira.signals import Signals

DEFAULT_CLASSIFIER = "mlp"
DEFAULT_MAX_TRAIN_PER_CLASS = 5000


def _logreg(seed: int, num_train: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _mlp(seed: int, num_train: int):
    # One hidden layer of 64, as in the paper's attack models. Early stopping bounds the cost on
    # big training sets; on small ones its 10% validation split is too few examples to judge by.
    network = MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=300, early_stopping=num_train >= 2000, random_state=seed
    )
    return make_pipeline(StandardScaler(), network)


def _gbdt(seed: int, num_train: int):
    return HistGradientBoostingClassifier(max_iter=100, random_state=seed)


CLASSIFIERS = {"logreg": _logreg, "mlp": _mlp, "gbdt": _gbdt}


def _features(softmax: np.ndarray) -> np.ndarray:
    """softmax [..., Q, C] -> [..., Q * C]."""
    return softmax.reshape(*softmax.shape[:-2], -1)


def shokri(
    target: Signals,
    references: References,
    context: AttackContext,
    classifier: str = DEFAULT_CLASSIFIER,
    max_train_per_class: int = DEFAULT_MAX_TRAIN_PER_CLASS,
) -> np.ndarray:
    """target.softmax [N, Q, C], references softmax [R, N, Q, C] -> P(IN) [N]."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"Unknown Shokri classifier {classifier!r}; choose from {sorted(CLASSIFIERS)}.")
    if target.softmax is None or references.signals.softmax is None:
        raise ValueError("shokri needs prediction vectors: compute signals with with_softmax=True.")
    rng = np.random.default_rng(context.seed)
    labeled = references.is_in | references.is_out
    scores = np.full(len(context.labels), 0.5)
    for label in np.unique(context.labels):
        examples = np.flatnonzero(context.labels == label)
        pairs = np.flatnonzero(labeled[:, examples])  # flat indices into [R, len(examples)]
        if len(pairs) > max_train_per_class:
            pairs = rng.choice(pairs, size=max_train_per_class, replace=False)
        reference, position = np.unravel_index(pairs, (labeled.shape[0], len(examples)))
        inputs = _features(references.signals.softmax[reference, examples[position]])
        is_member = references.is_in[reference, examples[position]]
        if is_member.all() or not is_member.any():
            continue  # one label only: nothing to learn, the class keeps the chance score 0.5
        model = CLASSIFIERS[classifier](int(rng.integers(2**31)), len(inputs))
        with warnings.catch_warnings():  # the iteration cap is the cost bound; hitting it is expected
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(inputs, is_member)
        scores[examples] = model.predict_proba(_features(target.softmax[examples]))[:, 1]
    return scores
