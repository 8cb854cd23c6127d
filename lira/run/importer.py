"""A run directory from logits computed elsewhere: what experiments/import_logits.py writes.

    logits = importer.read_array("torch_logits.npz", "logits")   # .npy, .npz or a folder of .npy
    importer.import_run("exp/mine", logits, keep, labels, description="16 ResNet-18, PyTorch")

The run directory it writes is the one the attack stage and the notebooks read (the layout in
lira/run/layout.py; its config.json: docs/run_directory.schema.json): keep.npy, labels.npy, logits/NNNNN.npy [N, Q, C]
per model, and a config.json whose "source" is "external" and which records only what is
known: the arrays' sizes and what the user states about the models. Arrays are read without
pickle (np.load(allow_pickle=False)): a file from elsewhere must not run code.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lira.config import Config
from lira.run import external, layout, record_types, records

SOURCE = "external"


def read_array(path: str | Path, key: str) -> np.ndarray:
    """The array at `path`: a .npy file; a .npz file (its entry `key`, or its only entry); or a
    folder of .npy files, one per model, stacked in the order of the number in their names
    (model_0.npy, model_1.npy, ... or 00000.npy, ...)."""
    path = Path(path)
    if path.is_dir():
        return _stack_folder(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:  # a pickle, or not an array file at all
        raise ValueError(
            f"{path} is not a .npy/.npz array file lira can read without pickle ({error})."
        ) from error
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        if key in names:
            return loaded[key]
        if len(names) == 1:
            return loaded[names[0]]
        raise ValueError(
            f"{path} holds {', '.join(names)}; name the array as '{key}' or give one array per file."
        )


def _stack_folder(folder: Path) -> np.ndarray:
    files = [p for p in folder.iterdir() if p.suffix == ".npy" and not p.name.startswith(".")]
    numbered = {}
    for p in files:
        digits = re.findall(r"\d+", p.stem)
        if not digits:
            raise ValueError(
                f"{p}: a per-model file needs the model's number in its name (e.g. model_3.npy)."
            )
        index = int(digits[-1])
        if index in numbered:
            raise ValueError(f"{numbered[index].name} and {p.name} in {folder} both number model {index}.")
        numbered[index] = p
    if not numbered:
        raise ValueError(f"{folder} holds no .npy files.")
    expected = list(range(len(numbered)))
    if sorted(numbered) != expected:
        missing = sorted(set(range(max(numbered) + 1)) - set(numbered))
        raise ValueError(
            f"{folder}: models must be numbered 0..M-1; missing {layout.format_ranges(missing)}."
        )
    arrays = [np.load(numbered[m], allow_pickle=False) for m in expected]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: the per-model files differ in shape ({sorted(shapes)}).")
    return np.stack(arrays)


def import_run(
    logdir: str | Path,
    logits,
    keep,
    labels,
    *,
    description: str | None = None,
    data_name: str | None = None,
    binary_logit: bool = False,
    from_probabilities: bool = False,
) -> records.RunRecord:
    """Checks the arrays (lira.run.external.check_arrays) and writes them as a run directory in
    `logdir`, which must be new or empty. Returns its record (config.json)."""
    logdir = Path(logdir)
    if logdir.exists() and (not logdir.is_dir() or any(logdir.iterdir())):
        raise ValueError(f"--logdir={logdir} exists and is not an empty folder; import into a new one.")
    logits, keep, labels = external.check_arrays(
        logits, keep, labels, binary_logit=binary_logit, from_probabilities=from_probabilities
    )
    num_models, num_examples, num_queries, num_classes = logits.shape
    converted = [name for name, done in (("binary_logit", binary_logit), ("from_probabilities", from_probabilities))
                 if done]  # fmt: skip
    for m in range(num_models):
        layout.save_npy(layout.logits_path(logdir, m), logits[m])
    files = {}
    for name, array in ((layout.KEEP, keep), (layout.LABELS, labels)):
        layout.save_npy(logdir / name, array)
        files[name] = record_types.sha256((logdir / name).read_bytes())
    record = records.RunRecord(
        config=Config(),
        data={"name": data_name, "num_examples": int(num_examples), "num_classes": int(num_classes)},
        queries=int(num_queries),
        files=files,
        source=SOURCE,
        models={"count": int(num_models), "description": description, "converted": converted},
    )
    records.save_record(logdir, record)  # last: a run directory is whole once config.json exists
    return record
