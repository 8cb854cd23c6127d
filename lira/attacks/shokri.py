"""Shokri et al. 2017 ("Membership Inference Attacks Against Machine Learning Models").

One binary attack classifier per target and class, trained on reference models' prediction
vectors of that class's examples, labelled IN or OUT, then applied to the target's prediction
vectors. The score is the classifier's probability of IN.

Features: the softmax vector over all C classes, unsorted (each classifier serves one true
class, so the position of the true class is fixed and carries information), concatenated over
the Q queries: [Q * C] per example. This is the paper's feature set; it does not see the label.

Training data of target t and class c: the (reference model r, example n) pairs with n of class
c and `is_in[t, r, n]` or `is_out[t, r, n]` (label IN = is_in), at most `max_train_per_class`
of them drawn without replacement from the target's seed. The target's own row is False in both
masks, so its outputs never reach its classifiers.

Cost at the papers' scale (M = 256, N = 50,000, Q = 18, C = 10, T = 16): the [M, N, Q, C] softmax
stack would be 9 GB, so prediction vectors are read model by model, only the rows some
classifier drew; and the T * C = 160 classifiers of the default "mlp" are trained as one
vectorized JAX program (`train_mlps`) instead of one scikit-learn fit after another.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lira.attacks.common import AttackInputs
from lira.attacks.options import Option
from lira.signals import softmax

DEFAULT_CLASSIFIER = "mlp"
DEFAULT_MAX_TRAIN_PER_CLASS = 5000


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """The default attack model: the paper's one hidden layer of 64 ReLU units, trained as
    scikit-learn's MLPClassifier trains it (Adam, lr 1e-3, minibatches of 200, L2 penalty
    alpha = 1e-4 on the weight matrices, early stopping on a 10% validation split with patience
    10), with the validation loss (not accuracy) as the criterion and the best epoch's
    parameters kept.

    Why early stopping, not a fixed number of epochs: the best epoch count depends on the size
    of the training set. Measured on synthetic runs (planted signal 1.0, pooled AUC of 2
    targets, 10 classes): at 5000 pairs and 180 features (M = 64, Q = 18) a fixed schedule's AUC
    falls from 0.646 (5 epochs) to 0.601 (40) and 0.575 (100) as the network overfits, while at
    1,800 pairs and 20 features (M = 16, Q = 2) it is 0.617-0.624 at 5 epochs and peaks at 20-40
    (0.628-0.630). Early stopping gives 0.650 and 0.623 (best epochs 2-6 and 2-78);
    MLPClassifier gives 0.649 and 0.596. A vectorized batch runs until its last classifier
    stops (the others are frozen by then); `max_steps` bounds that at about 87 epochs of 5000
    pairs, in case the validation loss keeps creeping down."""

    hidden: int = 64
    max_epochs: int = 300  # MLPClassifier's cap in the previous pipeline
    max_steps: int = 2000  # also stop after this many minibatches: bounds the cost of a big set
    patience: int = 10
    tolerance: float = 1e-4
    validation_percent: int = 10  # an integer, so the split's size is exact integer arithmetic
    batch_size: int = 200
    learning_rate: float = 1e-3
    l2: float = 1e-4


def _glorot(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    """MLPClassifier's initialisation: uniform in +-sqrt(6 / (fan_in + fan_out)), biases too."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _init_params(key: jax.Array, num_features: int, hidden: int) -> dict:
    keys = jax.random.split(key, 4)
    return {
        "hidden_w": _glorot(keys[0], (num_features, hidden), num_features, hidden),
        "hidden_b": _glorot(keys[1], (hidden,), num_features, hidden),
        "out_w": _glorot(keys[2], (hidden,), hidden, 1),
        "out_b": _glorot(keys[3], (), hidden, 1),
    }


def _logit(params: dict, x: jax.Array) -> jax.Array:
    """Standardized features x [..., F] -> logit of P(IN) [...]."""
    hidden = jax.nn.relu(x @ params["hidden_w"] + params["hidden_b"])
    return hidden @ params["out_w"] + params["out_b"]


def _row_order(key: jax.Array, include: jax.Array) -> jax.Array:
    """A random order of the rows [L] with the included ones first. Each row's sort key comes
    from the row's own index, so the order of the included rows does not depend on how many
    padding rows follow (what makes a padded batch equal a classifier trained alone)."""
    sort_keys = jax.vmap(lambda row: jax.random.uniform(jax.random.fold_in(key, row)))(
        jnp.arange(len(include))
    )
    return jnp.argsort(jnp.where(include, sort_keys, 2.0))


def _standardization(features: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features [L, F], weights [L] -> weighted mean, std [F]. A feature whose spread is float32
    rounding keeps scale 1 (as in StandardScaler): dividing by it would blow rounding up."""
    total = jnp.maximum(weights.sum(), 1.0)
    mean = weights @ features / total
    std = jnp.sqrt(weights @ (features - mean) ** 2 / total)
    return mean, jnp.where(std > 10 * jnp.finfo(jnp.float32).eps * jnp.abs(mean), std, 1.0)


def _train_one(features: jax.Array, weights: jax.Array, labels: jax.Array, key: jax.Array, mean: jax.Array,
               std: jax.Array, config: MLPConfig) -> tuple[dict, jax.Array]:  # fmt: skip
    """One classifier: features float [L, F], weights {0, 1} [L] (0 = padding row), labels
    float [L] (1 = IN), its standardization mean, std [F] -> (params, best epoch).

    Padding never counts: the mean and std are weighted, the validation split and each epoch's
    shuffle are `_row_order`s, a batch's loss is its weighted mean, and a batch of padding
    leaves the parameters and Adam's state as they were. So a classifier trained in a padded
    batch equals the same classifier trained alone (`test_vectorized_trainer_equals_single`)."""
    num_rows, num_features = features.shape
    split_key, init_key, shuffle_key = jax.random.split(key, 3)
    # Validation: the first n * 10 // 100 real rows of a random order, gathered into a block of
    # fixed size; the other real rows train. Static sizes come from L, the longest classifier's n.
    percent = config.validation_percent
    num_validation = (weights > 0).sum() * percent // 100
    validation_rows = _row_order(split_key, weights > 0)[: max(num_rows * percent // 100, 1)]
    validation_weights = (jnp.arange(len(validation_rows)) < num_validation).astype(jnp.float32)
    is_validation = jnp.zeros(num_rows, bool).at[validation_rows].set(validation_weights > 0)
    train_weights = jnp.where(is_validation, 0.0, weights)
    max_train = num_rows - num_rows * percent // 100  # n - n * percent // 100 grows with n
    batch = max(min(config.batch_size, max_train), 1)
    steps = -(-max_train // batch)
    slots = jnp.arange(steps * batch)
    max_epochs = min(config.max_epochs, -(-config.max_steps // steps))

    def loss_fn(params, x, y, w):
        count = jnp.maximum(w.sum(), 1.0)
        cross_entropy = optax.sigmoid_binary_cross_entropy(_logit(params, x), y)
        penalty = 0.5 * config.l2 * (jnp.sum(params["hidden_w"] ** 2) + jnp.sum(params["out_w"] ** 2))
        return (w @ cross_entropy + penalty) / count  # MLPClassifier's loss: alpha/2 |W|^2 / batch

    optimizer = optax.adam(config.learning_rate)

    def step(carry, batch_rows):
        params, opt_state = carry
        index, w = batch_rows
        x = (features[index] - mean) / std
        grads = jax.grad(loss_fn)(params, x, labels[index], w)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(w.sum() > 0, new, old)
        return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)), None

    def validation_loss(params):
        x = (features[validation_rows] - mean) / std
        cross_entropy = optax.sigmoid_binary_cross_entropy(_logit(params, x), labels[validation_rows])
        return validation_weights @ cross_entropy / jnp.maximum(validation_weights.sum(), 1.0)

    def epoch(state):
        epoch_index, params, opt_state, best_params, best_loss, since_best = state
        order = _row_order(jax.random.fold_in(shuffle_key, epoch_index), train_weights > 0)
        index = jnp.pad(order, (0, max(steps * batch - num_rows, 0)))[: steps * batch]
        w = jnp.where(slots < num_rows, train_weights[index], 0.0)
        batches = (index.reshape(steps, batch), w.reshape(steps, batch))
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        loss = validation_loss(params)
        # Without validation rows (tiny sets) every epoch counts as the best: train to max_epochs.
        improved = (loss < best_loss - config.tolerance) | (num_validation == 0)
        best_params = jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, best_params)
        best_loss = jnp.where(improved, loss, best_loss)
        since_best = jnp.where(improved, 0, since_best + 1)
        return epoch_index + 1, params, opt_state, best_params, best_loss, since_best

    def running(state):
        epoch_index, *_, since_best = state
        return (epoch_index < max_epochs) & (since_best < config.patience)

    params = _init_params(init_key, num_features, config.hidden)
    zero = jnp.zeros((), jnp.int32)
    state = (zero, params, optimizer.init(params), params, jnp.full((), jnp.inf), zero)
    epochs, _, _, best_params, _, since_best = jax.lax.while_loop(running, epoch, state)
    return best_params, epochs - since_best


class MLPs(NamedTuple):
    """K trained classifiers, each field with a leading K axis: params, the standardization
    (mean, std [K, F]) and the epoch whose parameters were kept (best_epoch int [K], 1-based)."""

    params: dict
    mean: jax.Array
    std: jax.Array
    best_epoch: jax.Array


@functools.partial(jax.jit, static_argnames="config")
def train_mlps(features: jax.Array, weights: jax.Array, labels: jax.Array, seeds: jax.Array,
               config: MLPConfig = MLPConfig()) -> MLPs:  # fmt: skip
    """K classifiers at once: features float32 [K, L, F] (each classifier's rows zero-padded to
    L), weights [K, L] (1 = real row, 0 = padding), labels [K, L] (1 = IN), seeds int [K].
    Deterministic from the seeds; classifier k equals `train_mlps` of its rows alone."""
    weights, labels = weights.astype(jnp.float32), labels.astype(jnp.float32)
    # One classifier at a time (lax.map): vmapped, the [K, L, F] temporary of the centred
    # features would double the memory of the largest array.
    mean, std = jax.lax.map(lambda pair: _standardization(*pair), (features, weights))
    keys = jax.vmap(jax.random.key)(seeds)
    train = functools.partial(_train_one, config=config)
    params, best_epoch = jax.vmap(train)(features, weights, labels, keys, mean, std)
    return MLPs(params, mean, std, best_epoch)


@jax.jit
def predict_mlp(mlps: MLPs, k: jax.Array, features: jax.Array) -> jax.Array:
    """Classifier k's P(IN): features float [n, F] -> [n]."""
    params, mean, std, _ = jax.tree.map(lambda leaf: leaf[k], mlps)
    return jax.nn.sigmoid(_logit(params, (features - mean) / std))


def _logreg(seed: int, num_train: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _sklearn_mlp(seed: int, num_train: int):
    # The previous default, kept for comparison with "mlp". Early stopping bounds the cost on big
    # training sets; on small ones its 10% validation split is too few examples to judge by.
    network = MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=300, early_stopping=num_train >= 2000, random_state=seed
    )
    return make_pipeline(StandardScaler(), network)


def _gbdt(seed: int, num_train: int):
    return HistGradientBoostingClassifier(max_iter=100, random_state=seed)


SKLEARN_CLASSIFIERS = {"logreg": _logreg, "sklearn_mlp": _sklearn_mlp, "gbdt": _gbdt}
CLASSIFIERS = ("mlp", *SKLEARN_CLASSIFIERS)  # the JAX "mlp", then scikit-learn's, fitted one by one


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """The pairs of one classifier: reference models int [n], examples int [n], is_member bool [n]."""

    target_row: int  # t, the target's row in AttackInputs
    label: int
    models: np.ndarray
    examples: np.ndarray
    is_member: np.ndarray
    seed: int


def draw_training_sets(inputs: AttackInputs, max_train_per_class: int) -> list[TrainingSet]:
    """Every target's training pairs, class by class, drawn from np.random.default_rng(seed of
    the target). A class whose pairs are all IN or all OUT gets no classifier (chance, 0.5)."""
    num_models = inputs.is_in.shape[1]
    sets = []
    for row in range(inputs.num_targets):
        rng = np.random.default_rng(inputs.seeds[row])
        labeled = inputs.is_in[row] | inputs.is_out[row]  # [M, N]
        for label in np.unique(inputs.labels):
            examples = np.flatnonzero(inputs.labels == label)
            pairs = np.flatnonzero(labeled[:, examples])  # flat indices into [M, len(examples)]
            if len(pairs) > max_train_per_class:
                pairs = rng.choice(pairs, size=max_train_per_class, replace=False)
            models, position = np.unravel_index(pairs, (num_models, len(examples)))
            is_member = inputs.is_in[row, models, examples[position]]
            if is_member.all() or not is_member.any():
                continue
            seed = int(rng.integers(2**31))
            sets.append(TrainingSet(row, int(label), models, examples[position], is_member, seed))
    return sets


def _features(logits: np.ndarray) -> np.ndarray:
    """logits [..., Q, C] -> softmax features float32 [..., Q * C]."""
    return softmax(logits).astype(np.float32).reshape(*logits.shape[:-2], -1)


def _aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros at a 64-byte aligned address: JAX on the CPU then adopts the buffer instead
    of copying it (numpy aligns to 16 bytes only), so the largest array exists once."""
    size = int(np.prod(shape)) * 4
    raw = np.zeros(size + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset : offset + size].view(np.float32).reshape(shape)


def gather_features(read, sets: list[TrainingSet]) -> np.ndarray:
    """Features of every training set, zero-padded to the longest: float32 [K, L, F].

    `read(m, rows)` gives model m's features of examples `rows` [n, F]; it is called once per
    model, with only the rows some classifier drew (a memory-mapped file reads just those
    pages), so no [M, N, ...] stack of model outputs ever exists."""
    sizes = np.array([len(s.models) for s in sets])
    models = np.concatenate([s.models for s in sets])
    examples = np.concatenate([s.examples for s in sets])
    classifier = np.repeat(np.arange(len(sets)), sizes)
    slot = np.concatenate([np.arange(size) for size in sizes])
    by_model = np.argsort(models, kind="stable")
    starts = np.searchsorted(models[by_model], np.unique(models))
    out = None
    for picked in np.split(by_model, starts[1:]):
        rows, inverse = np.unique(examples[picked], return_inverse=True)
        block = read(int(models[picked[0]]), rows)  # [len(rows), F]
        if out is None:
            out = _aligned_zeros((len(sets), sizes.max(), block.shape[-1]))
        out[classifier[picked], slot[picked]] = block[inverse]
    return out


def fit_mlps(features: jax.Array, sets: list[TrainingSet], config: MLPConfig = MLPConfig()):
    """The default: every classifier in one `train_mlps`; returns predict(k, x [n, F]) -> [n]."""
    sizes = np.array([len(s.models) for s in sets])
    weights = np.arange(features.shape[1]) < sizes[:, None]
    labels = np.zeros(weights.shape, np.float32)
    for k, s in enumerate(sets):
        labels[k, : sizes[k]] = s.is_member
    mlps = train_mlps(features, weights, labels, np.array([s.seed for s in sets], np.uint32), config)
    return lambda k, x: np.asarray(predict_mlp(mlps, k, x), np.float64)


def _fit_sklearn(classifier: str, features: np.ndarray, sets: list[TrainingSet]):
    """scikit-learn's classifiers, one by one; returns predict(k, x [n, F]) -> [n]."""
    models = []
    for k, s in enumerate(sets):
        model = SKLEARN_CLASSIFIERS[classifier](s.seed, len(s.models))
        with warnings.catch_warnings():  # the iteration cap is the cost bound; hitting it is expected
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features[k, : len(s.models)], s.is_member)
        models.append(model)
    return lambda k, x: models[k].predict_proba(x)[:, 1]


def shokri(inputs: AttackInputs, classifier: str = DEFAULT_CLASSIFIER,
           max_train_per_class: int = DEFAULT_MAX_TRAIN_PER_CLASS) -> np.ndarray:  # fmt: skip
    """P(IN) of every target's examples under its class's attack classifier: scores [T, N].

    classifier: "mlp" (default; the paper's attack model, every classifier trained at once in
    JAX), "sklearn_mlp" (the same network in scikit-learn, one at a time, with early stopping),
    "logreg" or "gbdt". Reads prediction vectors from `inputs.signals.logits`."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"Unknown Shokri classifier {classifier!r}; valid: {', '.join(CLASSIFIERS)}.")
    logits = inputs.signals.logits
    if logits is None:
        raise ValueError("shokri needs prediction vectors, but the signals carry no logits accessor.")
    scores = np.full((inputs.num_targets, len(inputs.labels)), 0.5)
    sets = draw_training_sets(inputs, max_train_per_class)
    if not sets:
        return scores
    features = gather_features(lambda m, rows: _features(np.asarray(logits(m)[rows])), sets)
    if classifier == "mlp":
        features = jax.device_put(features)  # adopts the aligned buffer: no copy
        predict = fit_mlps(features, sets)
    else:
        predict = _fit_sklearn(classifier, features, sets)
    del features
    for row in range(inputs.num_targets):
        own = [k for k, s in enumerate(sets) if s.target_row == row]
        if not own:
            continue
        target_features = _features(np.asarray(logits(int(inputs.targets[row]))))  # [N, F]
        for k in own:
            examples = np.flatnonzero(inputs.labels == sets[k].label)
            scores[row, examples] = predict(k, target_features[examples])
    return scores


OPTIONS = (
    Option(
        "shokri_classifier", "classifier", DEFAULT_CLASSIFIER, "Shokri's attack model.", choices=CLASSIFIERS
    ),
)
