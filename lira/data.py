"""Datasets as in-memory arrays: the audit pool (train split) and a held-out test split.

Three sources, chosen by one `spec` string:

    digits        scikit-learn's bundled 8x8 digits; needs no network (the default)
    npz:PATH      any dataset as x_train, y_train, x_test, y_test (a user's own data)
    cifar10, ...  tensorflow-datasets names in TFDS_DATASETS, prepared beforehand

Preprocessing is the same for all: images become float32 in [0, 1] and are standardized per
channel, tabular features per feature, with the mean and std of the WHOLE train split. The
statistics ignore `pool_size` on purpose: an example's model input is then the same whatever
pool size a run uses, and the non-pool train examples carry no membership (every shadow model
sees the same statistics, IN or OUT).

The pool is the first `pool_size` examples of the train split in the source's own order (tfds
files are read unshuffled), so every stage that reloads the data indexes the same examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "mnist", "fashion_mnist")
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CHUNK = 4096  # examples per step when computing statistics
_CANARY_SEED = 5  # tag of the canary draw, apart from lira/training/step.py's streams
_TFDS_BATCH = 4096  # not -1: whole-split batches abort the process under tfds.testing.mock_data


class DatasetError(ValueError):
    """A dataset spec names nothing loadable, or its arrays do not fit together."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Dataset:
    """Preprocessed arrays. x_*: float32 [N, H, W, C] images or [N, F] features; y_*: int32 [N]."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    pixels: Pixels | None = None

    @property
    def is_image(self) -> bool:
        """Images get augmentation and several queries; tabular rows get neither."""
        return self.x_train.ndim == 4

    def facts(self) -> dict:
        """What config.json records so later stages can check they see the same data."""
        return {
            "name": self.name,
            "num_examples": int(len(self.y_train)),
            "num_test": int(len(self.y_test)),
            "num_classes": int(self.num_classes),
            "input_shape": [int(d) for d in self.x_train.shape[1:]],
        }

    def fingerprint(self) -> str:
        """sha256 of x_train, y_train, x_test and y_test as loaded (preprocessed, before any
        canary is mislabelled), with their shapes and dtypes: config.json records it so a resumed
        or later stage can refuse data that changed under the run (a permuted y_train would
        otherwise train half the epochs on other labels, silently). One pass of sha256 over the
        arrays: a small part of what loading and standardizing them costs."""
        digest = hashlib.sha256()
        for name in ("x_train", "y_train", "x_test", "y_test"):
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name} {array.dtype.str} {array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_name(facts: dict, label: int) -> str:
    """A label's name for figures: CIFAR-10's class names for CIFAR-10 data (a tfds or npz copy;
    `facts` as Dataset.facts() records it in config.json), else the label number."""
    if str(facts.get("name", "")).startswith("cifar10") and facts.get("num_classes") == 10:
        return CIFAR10_CLASSES[label]
    return str(label)


@dataclasses.dataclass(frozen=True, eq=False)
class Pixels:
    """uint8 images with the table that standardizes them: table[v, c] is what x_train and x_test
    hold for pixel value v in channel c, computed by _preprocess itself. The trainer sends these
    to the device, a quarter of the float32 bytes, and standardizes each batch there by looking
    the table up (lira.training.step.DeviceImages): the same float32 values, bit for bit, which
    recomputing (v / pixel_max - mean) / std on the device is not (XLA fuses it differently)."""

    train: np.ndarray  # uint8 [N, H, W, C]
    test: np.ndarray  # uint8 [N_test, H, W, C]
    table: np.ndarray  # float32 [256, C]


@dataclasses.dataclass(frozen=True, eq=False)
class _Raw:
    """Arrays as the source holds them: images [N, H, W, C] in 0..pixel_max, or [N, F] floats."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    pixel_max: float | None  # None: tabular


def load_dataset(spec: str, data_dir: str | None = None, pool_size: int | None = None) -> Dataset:
    """Loads `spec` and preprocesses it; x_train/y_train hold the first `pool_size` examples.

    data_dir is the tfds data folder (ignored by digits and npz:).
    """
    raw = _load_raw(spec, data_dir)
    mean, std = _standardization(raw)
    pool = _pool_slice(len(raw.y_train), pool_size, spec)
    _check_pool_classes(raw.y_train[pool], spec, pool_size)
    pixels = None
    if raw.pixel_max is not None and raw.x_train.dtype == np.uint8 and raw.x_test.dtype == np.uint8:
        values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, raw.x_train.shape[-1]))
        pixels = Pixels(raw.x_train[pool], raw.x_test, _preprocess(values, raw.pixel_max, mean, std))
    return Dataset(
        name=raw.name,
        x_train=_preprocess(raw.x_train[pool], raw.pixel_max, mean, std),
        y_train=raw.y_train[pool],
        x_test=_preprocess(raw.x_test, raw.pixel_max, mean, std),
        y_test=raw.y_test,
        num_classes=raw.num_classes,
        pixels=pixels,
    )


def mislabel(labels: np.ndarray, num_classes: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(canaries int32 [count] sorted, labels int32 [N] with each canary's label moved to a
    uniformly random other class): `count` pool examples drawn without replacement from `seed`.
    Mislabelled examples are the strongest known black-box canaries: a model that fits one
    has memorised it."""
    if not 0 <= count <= len(labels):
        raise ValueError(f"--canaries={count}: the pool has {len(labels)} examples; give 0..{len(labels)}.")
    if count and num_classes < 2:
        raise ValueError("--canaries needs at least two classes to mislabel into.")
    rng = np.random.default_rng([seed, _CANARY_SEED])
    canaries = np.sort(rng.choice(len(labels), size=count, replace=False)).astype(np.int32)
    out = np.asarray(labels, np.int32).copy()
    out[canaries] = (out[canaries] + rng.integers(1, num_classes, size=count)) % num_classes
    return canaries, out


def load_raw_images(
    spec: str, data_dir: str | None = None, pool_size: int | None = None
) -> np.ndarray | None:
    """uint8 [N, H, W, C] of the pool, for display (the report's image grid); None for tabular data.

    Rows line up with load_dataset(spec, data_dir, pool_size).x_train.
    """
    raw = _load_raw(spec, data_dir)
    if raw.pixel_max is None:
        return None
    images = raw.x_train[_pool_slice(len(raw.y_train), pool_size, spec)]
    if images.dtype == np.uint8 and raw.pixel_max == 255:
        return images
    scaled = np.clip(images.astype(np.float32) / raw.pixel_max, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def _load_raw(spec: str, data_dir: str | None) -> _Raw:
    if spec == "digits":
        return _load_digits()
    if spec.startswith("npz:"):
        return _load_npz(spec[len("npz:") :])
    if spec in TFDS_DATASETS:
        return _load_tfds(spec, data_dir)
    raise DatasetError(
        f"Unknown dataset {spec!r}. Valid choices: digits, npz:PATH (x_train, y_train, x_test, "
        f"y_test in a .npz file), or a tensorflow-datasets name: {', '.join(TFDS_DATASETS)}."
    )


def _pool_slice(available: int, pool_size: int | None, spec: str) -> slice:
    if pool_size is None:
        return slice(None)
    if not 1 <= pool_size <= available:
        raise DatasetError(
            f"pool_size={pool_size} is out of range: {spec} has {available} train examples, "
            f"so pool_size must be between 1 and {available}."
        )
    return slice(0, pool_size)


def _standardization(raw: _Raw) -> tuple[np.ndarray, np.ndarray]:
    """float64 [C] or [F]: per-channel (images) or per-feature (tabular) mean and std of the
    whole train split.

    Accumulated in float64 over chunks of examples (Chan et al.'s pairwise update), so 50k
    CIFAR images neither lose precision nor need a float64 copy. A constant channel or feature
    gets std 1, so it becomes 0 rather than NaN.
    """
    x = raw.x_train
    count, mean, m2 = 0, np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK].reshape(-1, x.shape[-1]).astype(np.float64)
        if raw.pixel_max is not None:
            chunk /= raw.pixel_max
        chunk_mean = chunk.mean(axis=0)
        delta, total = chunk_mean - mean, count + len(chunk)
        m2 += ((chunk - chunk_mean) ** 2).sum(axis=0) + delta**2 * count * len(chunk) / total
        mean += delta * len(chunk) / total
        count = total
    std = np.sqrt(m2 / count)
    return mean, np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0)


def _preprocess(x: np.ndarray, pixel_max: float | None, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """x: [N, ...] raw -> float32 [N, ...] standardized (images scaled to [0, 1] first).

    Images work in place on one float32 copy, so memory peaks at the output's size (pixels are
    small integers, exact in float32). Tabular features go through float64: a feature near 1e6
    with std 5 would lose its variation to float32 rounding before the mean is subtracted.
    """
    if pixel_max is None:
        return ((x.astype(np.float64) - mean) / std).astype(np.float32)
    out = x.astype(np.float32)
    out /= np.float32(pixel_max)
    out -= mean.astype(np.float32)
    out /= std.astype(np.float32)
    return out


def _load_digits() -> _Raw:
    """1,797 8x8 grayscale digits (0..16) split 80/20, stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1]
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return _Raw("digits", x_train, y_train, x_test, y_test, 10, pixel_max=16.0)


def _load_npz(path_text: str) -> _Raw:
    """x: images [N, H, W, C] or grayscale [N, H, W] (taken as 0..255, or as 0..1 when
    float with no value above 1), or tabular features [N, F]; y: integer labels [N]; optionally
    num_classes, a scalar (else C = the largest train label + 1, and every class must have a
    train example: a stray label 99 would otherwise make 100 classes)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DatasetError(f"npz:{path_text}: no such file ({path.resolve()}).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in _NPZ_KEYS if k in archive.files}
            archive_num_classes = archive["num_classes"] if "num_classes" in archive.files else None
            present = archive.files
    except (OSError, ValueError) as error:  # not a zip, or pickled objects
        raise DatasetError(f"{path} is not a readable .npz file: {error}") from error
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"{path} lacks {', '.join(missing)} (it has: {', '.join(present) or 'no arrays'}); "
            f"an npz dataset needs {', '.join(_NPZ_KEYS)}."
        )
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:  # grayscale [N, H, W] -> [N, H, W, 1]
            x = arrays[f"x_{split}"] = x[..., None]
        if x.ndim not in (2, 4):
            raise DatasetError(
                f"{path}: x_{split} has shape {x.shape}; expected [N, H, W, C] or [N, H, W] images "
                "or [N, F] tabular features."
            )
        if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):  # PyTorch's layout
            raise DatasetError(
                f"{path}: x_{split} has shape {x.shape}, channels first [N, C, H, W]; lira reads images channels "
                f"last [N, H, W, C]: save x_{split}.transpose(0, 2, 3, 1)."
            )
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise DatasetError(f"{path}: x_{split} must hold finite numbers (dtype {x.dtype}).")
        if y.ndim != 1 or len(y) != len(x):
            raise DatasetError(
                f"{path}: x_{split} has {len(x)} examples but y_{split} has shape {y.shape}; "
                f"lengths must match (y_{split} must be [{len(x)}] labels)."
            )
        if len(y) == 0:
            raise DatasetError(f"{path}: the {split} split is empty.")
        arrays[f"y_{split}"] = _labels(y, f"{path}: y_{split}")
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{path}: x_train examples have shape {x_train.shape[1:]} but x_test examples have "
            f"{x_test.shape[1:]}."
        )
    pixel_max = None
    if x_train.ndim == 4:
        is_unit_float = not np.issubdtype(x_train.dtype, np.integer) and x_train.max() <= 1.0
        pixel_max = 1.0 if is_unit_float else 255.0
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    stated = _stated_num_classes(path, archive_num_classes)
    num_classes = stated if stated is not None else int(y_train.max()) + 1
    _check_classes(y_train, y_test, num_classes, stated is None, str(path))
    return _Raw(path.stem, x_train, y_train, x_test, y_test, num_classes, pixel_max)


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    """Integer-valued labels >= 0 -> int32; anything else is an error, not a silent cast."""
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise DatasetError(f"{what} must hold integer class labels (dtype {y.dtype}).")
    if y.min() < 0:
        raise DatasetError(f"{what} has a negative label ({y.min()}); labels must be 0..C-1.")
    return y.astype(np.int32)


def _stated_num_classes(path: Path, value) -> int | None:
    """An npz's optional `num_classes` (a scalar integer), or None."""
    if value is None:
        return None
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
        raise DatasetError(f"{path}: num_classes must be a scalar integer, got {value.dtype} {value.shape}.")
    return int(value)


def _check_classes(
    y_train: np.ndarray, y_test: np.ndarray, num_classes: int, inferred: bool, what: str
) -> None:
    """Labels (int, >= 0) that fit num_classes C: at least two classes; every label of both splits
    below C; and where C was inferred from the largest train label, a train example in every class,
    so that a stray label is named rather than silently adding classes."""
    from lira.run.layout import format_ranges, labels_outside

    present = np.unique(y_train)
    if num_classes < 2 or len(present) < 2:
        raise DatasetError(
            f"{what}: the train split holds a single class ({format_ranges(present.tolist())}); membership "
            "inference needs a classifier of at least two classes (labels 0..C-1, C >= 2)."
        )
    for split, labels in (("y_train", y_train), ("y_test", y_test)):
        problem = labels_outside(labels, num_classes)
        if problem:
            source = "the train labels" if inferred else "its num_classes"
            raise DatasetError(f"{what}: {split} holds {problem} of {source}.")
    empty = np.setdiff1d(np.arange(num_classes), present)
    if inferred and len(empty):
        stray = present[present > empty[0]]
        counts = np.bincount(y_train)[stray]
        raise DatasetError(
            f"{what}: y_train holds labels {format_ranges(present.tolist())}, so C = {num_classes} classes of which "
            f"{format_ranges(empty.tolist())} have no train example; stray labels? "
            + ", ".join(f"{label} ({count} examples)" for label, count in zip(stray[:10], counts[:10]))
            + ". Fix them, or store num_classes in the npz to allow empty classes."
        )


def _check_pool_classes(y_pool: np.ndarray, spec: str, pool_size: int | None) -> None:
    """The pool the models train on needs two classes at least (one class: the attack signals are
    infinite)."""
    present = np.unique(y_pool)
    if len(present) < 2:
        raise DatasetError(
            f"--pool_size={pool_size}: the first {len(y_pool)} train examples of {spec} all have label "
            f"{present[0]}; the pool needs examples of at least two classes (a larger --pool_size)."
        )


def _load_tfds(name: str, data_dir: str | None) -> _Raw:
    """Reads a PREPARED tfds dataset from local files, never from the network.

    tfds.load(download=True) would retry an offline download for minutes; checking
    builder.is_prepared() (a local file check) first fails at once with what to do.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:  # TF only reads files here; leave the accelerator's memory to JAX.
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass  # TF already initialised its devices; nothing to do
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetError(
            f"The tensorflow-datasets dataset {name!r} is not prepared in {builder.data_dir_root} "
            f"(looked for {builder.data_path}). lira never downloads it itself: offline, tfds retries a "
            "download for minutes before it fails. Either:\n"
            "  1. prepare it on a machine with network access:\n"
            f"     python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}'"
            f'{", data_dir=" + repr(data_dir) if data_dir else ""}).download_and_prepare()"\n'
            "     (then copy that data folder here if needed),\n"
            "  2. point --data_dir at a folder where it is prepared, or\n"
            "  3. export it to an .npz file with x_train, y_train, x_test, y_test and use "
            "--dataset=npz:PATH."
        )
    label_key = builder.info.supervised_keys[1]
    num_classes = builder.info.features[label_key].num_classes
    splits = {}
    for split in ("train", "test"):
        batches = builder.as_dataset(
            split=split, batch_size=_TFDS_BATCH, as_supervised=True, shuffle_files=False
        )
        xs, ys = [], []
        for x, y in tfds.as_numpy(batches):  # x: uint8 [B, H, W, C] for every name in TFDS_DATASETS
            xs.append(x)
            ys.append(y)
        if not xs:
            raise DatasetError(f"The {split} split of {name} in {builder.data_path} is empty.")
        splits[split] = (np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int32))
    _check_classes(
        splits["train"][1], splits["test"][1], num_classes, False, f"{name} in {builder.data_path}"
    )
    return _Raw(name, *splits["train"], *splits["test"], num_classes=num_classes, pixel_max=255.0)
