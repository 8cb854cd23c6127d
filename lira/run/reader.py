"""A run directory read once: `Run`, what the attack protocol, the privacy audit, the report and
the studies take.

    run = read_run("exp/demo")                        # config.json, keep, labels, canaries, log
    run = run.with_signals(ProbabilitySignal())       # + the signals [M, N, Q] of every model

Reading is split in two because the attack stage checks everything that keep.npy alone decides
(attack names, reference counts) before it reads any logits. A `Run` also holds arrays made in
memory (`Run(keep, labels, signals)`), so the studies and tests attack models that never had a
run directory through the same code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from pathlib import Path

import numpy as np

from lira.run import layout, records, verify
from lira.signals import ProbabilitySignal, Signals, model_signals


@dataclasses.dataclass(frozen=True)
class Run:
    """keep bool [M, N]; labels int [N]; signals of every model ([M, N, Q] arrays), or None until
    `with_signals`; canaries int [K]: the pool examples whose keep columns are independent coin
    flips (lira/run/masks.py); record: config.json; train_log: train_log.jsonl's rows."""

    keep: np.ndarray
    labels: np.ndarray
    signals: Signals | None = None
    canaries: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    record: records.RunRecord | None = None
    train_log: list[dict] = dataclasses.field(default_factory=list)
    logdir: Path | None = None

    @property
    def num_models(self) -> int:
        return self.keep.shape[0]

    @property
    def num_examples(self) -> int:
        return self.keep.shape[1]

    @property
    def num_queries(self) -> int:
        return self.signals.num_queries

    def has_whitebox(self) -> bool:
        """Whether every model has white-box signals on disk (experiments/inference.py --whitebox)."""
        return self.logdir is not None and set(range(self.num_models)) <= set(
            layout.available_whitebox(self.logdir)
        )

    def with_signals(
        self, probability_signal: ProbabilitySignal | None = None, whitebox: bool = False
    ) -> Run:
        """This run with the signals of its logits files (and the white-box ones with `whitebox`)."""
        signals = load_signals(self.logdir, self.keep, self.labels, probability_signal, whitebox=whitebox,
                               record=self.record)  # fmt: skip
        return dataclasses.replace(self, signals=signals)

    def with_queries(self, indices: list[int]) -> Run:
        """This run with its signals on a subset of queries ([M, N, Q] -> [M, N, len(indices)])."""
        return dataclasses.replace(self, signals=self.signals.select_queries(indices))


def read_run(logdir: str | os.PathLike) -> Run:
    """config.json, keep.npy, labels.npy, canaries.npy and train_log.jsonl of a run directory,
    each read once; the signals come with `Run.with_signals`. keep.npy and labels.npy are checked
    against the sha256 config.json records of them (where it records one): swapped keep rows or
    edited labels would give wrong metrics, and exit status 0."""
    logdir = Path(logdir)
    record = records.load_record(logdir)
    keep = records.load_keep(logdir, record)
    labels = records.load_labels(logdir, record)
    if labels.shape != (keep.shape[1],):
        raise layout.RunDirError(f"labels.npy has shape {labels.shape} but keep.npy has N={keep.shape[1]}.")
    return Run(
        keep=keep,
        labels=labels,
        canaries=records.load_canaries(logdir),
        record=record,
        train_log=layout.read_jsonl(logdir / layout.TRAIN_LOG),
        logdir=logdir,
    )


def load_signals(logdir: Path, keep: np.ndarray, labels: np.ndarray,
                 probability_signal: ProbabilitySignal | None = None, model_indices: list[int] | None = None,
                 whitebox: bool = False, record: records.RunRecord | None = None) -> Signals:  # fmt: skip
    """Signals [M, N, Q] of every model of a run directory (or of `model_indices`).

    Streams the logits files, one per core at a time (read, converted, released), so peak memory
    is the output plus a few models' logits, not the [M, N, Q, C] stack; `logits` reads the files
    again, memory-mapped, when an attack needs prediction vectors. Every file is checked against
    keep.npy first, so a missing or mis-shaped file is named before any work.

    Each file is verified against `record` (config.json, read here when not given): float32
    [N, Q, C] with the Q and C it records, as long as its header says; a model's non-finite
    logits are named (model, examples) as its file is read, and labels outside 0..C-1 before.
    """
    num_models, num_examples = keep.shape
    if model_indices is None:
        model_indices = list(range(num_models))
    missing = [m for m in model_indices if not layout.logits_path(logdir, m).exists()]
    if missing:
        raise layout.RunDirError(
            f"{len(missing)} logits files are missing in {Path(logdir) / layout.LOGITS_DIR} "
            f"(models {layout.format_ranges(missing)}); run experiments/inference.py --logdir={logdir}."
        )
    recorded = record or _recorded(logdir)
    expected = (
        (num_examples, recorded.queries, recorded.data.get("num_classes")) if recorded else (num_examples,)
    )
    # headers and sizes only: float32 [N, Q, C] as config.json records Q and C
    paths = [layout.logits_path(logdir, m) for m in model_indices]
    _, num_queries, num_classes = _checked_shape(paths, (*expected, None, None)[:3], logdir)
    verify.check_labels(labels, num_classes)
    shape = (len(model_indices), num_examples, num_queries)
    names = ["phi", "ce"] + (["probability"] if probability_signal is not None else [])
    arrays = {name: np.empty(shape, np.float32) for name in names}

    def load(row: int) -> None:
        logits = np.load(paths[row])
        verify.check_finite(logits, paths[row], model_indices[row])
        one = model_signals(logits, labels, probability_signal)
        for name, values in one.items():
            arrays[name][row] = values

    # numpy releases the GIL in its loops: one file per core at a time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        list(pool.map(load, range(len(model_indices))))
    signals = Signals(arrays["phi"], arrays["ce"], arrays.get("probability"), probability_signal,
                      lambda m: np.load(paths[m], mmap_mode="r"))  # fmt: skip
    if whitebox:
        signals.grad, signals.whitebox = whitebox_signals(logdir, model_indices, recorded)
    return signals


def whitebox_signals(logdir: Path, model_indices: list[int], record: records.RunRecord | None = None):
    """(grad float32 [M, N, Qw], accessor model row -> (norms, features) memory-mapped) of the
    white-box files of `model_indices` (experiments/inference.py --whitebox wrote them), each
    verified against `record`'s "whitebox" (config.json, read here when not given) as load_signals
    does the logits."""
    have = set(layout.available_whitebox(logdir))
    missing = [m for m in model_indices if m not in have]
    if missing:
        raise layout.RunDirError(
            f"White-box signals are missing in {Path(logdir) / layout.WHITEBOX_DIR} (models "
            f"{layout.format_ranges(missing)}); run experiments/inference.py --logdir={logdir} --whitebox."
        )
    paths = {
        kind: [layout.whitebox_path(logdir, m, kind) for m in model_indices] for kind in layout.WHITEBOX_KINDS
    }
    record = record or _recorded(logdir)
    recorded = (record.whitebox if record is not None else None) or {}
    layers, features = recorded.get("layers"), recorded.get("features")
    expected = {
        "norms": (None, recorded.get("queries"), None if layers is None else len(layers) + 1),
        "features": (None, recorded.get("queries"), features),
    }
    for kind, files in paths.items():
        _checked_shape(files, expected[kind], logdir, whitebox=True)
    load = lambda row: tuple(np.load(paths[kind][row], mmap_mode="r") for kind in layout.WHITEBOX_KINDS)
    whole = lambda row: np.load(paths["norms"][row], mmap_mode="r")[..., -1]  # the whole model's norm
    rows = []
    for row, m in enumerate(model_indices):
        norms = np.asarray(whole(row))
        verify.check_finite(norms, paths["norms"][row], m, "gradient norms")
        rows.append(-np.log(np.maximum(norms, np.float32(1e-30))))
    return np.stack(rows).astype(np.float32), load


def _checked_shape(
    paths: list[Path], expected: tuple, logdir: Path, whitebox: bool = False
) -> tuple[int, ...]:
    """The one shape of the .npy files `paths`, each checked against `expected` (verify.check_file)
    and all alike; a file that differs is named with the command that rewrites it."""
    shapes = [verify.check_file(path, expected, logdir, whitebox) for path in paths]
    for path, shape in zip(paths, shapes):
        if shape != shapes[0]:
            flag = " --whitebox" if whitebox else ""
            raise layout.RunDirError(
                f"{path} has shape {shape}, {paths[0].name} {shapes[0]}; python experiments/inference.py "
                f"--logdir={logdir}{flag} rewrites it."
            )
    return shapes[0]


def _recorded(logdir: Path) -> records.RunRecord | None:
    """config.json of the run, what its files are checked against; None where it has none."""
    return records.load_record(logdir) if (Path(logdir) / layout.CONFIG).exists() else None
