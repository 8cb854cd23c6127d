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

from lira.run import layout
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
    record: layout.RunRecord | None = None
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
        signals = load_signals(self.logdir, self.keep, self.labels, probability_signal, whitebox=whitebox)
        return dataclasses.replace(self, signals=signals)

    def with_queries(self, indices: list[int]) -> Run:
        """This run with its signals on a subset of queries ([M, N, Q] -> [M, N, len(indices)])."""
        return dataclasses.replace(self, signals=self.signals.select_queries(indices))


def read_run(logdir: str | os.PathLike) -> Run:
    """config.json, keep.npy, labels.npy, canaries.npy and train_log.jsonl of a run directory,
    each read once; the signals come with `Run.with_signals`."""
    logdir = Path(logdir)
    keep = layout.load_keep(logdir)
    labels = layout.load_labels(logdir)
    if labels.shape != (keep.shape[1],):
        raise layout.RunDirError(f"labels.npy has shape {labels.shape} but keep.npy has N={keep.shape[1]}.")
    return Run(
        keep=keep,
        labels=labels,
        canaries=layout.load_canaries(logdir),
        record=layout.load_record(logdir),
        train_log=layout.read_jsonl(logdir / layout.TRAIN_LOG),
        logdir=logdir,
    )


def load_signals(logdir: Path, keep: np.ndarray, labels: np.ndarray,
                 probability_signal: ProbabilitySignal | None = None, model_indices: list[int] | None = None,
                 whitebox: bool = False) -> Signals:  # fmt: skip
    """Signals [M, N, Q] of every model of a run directory (or of `model_indices`).

    Streams the logits files, one per core at a time (read, converted, released), so peak memory
    is the output plus a few models' logits, not the [M, N, Q, C] stack; `logits` reads the files
    again, memory-mapped, when an attack needs prediction vectors. Every file is checked against
    keep.npy first, so a missing or mis-shaped file is named before any work.
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
    shapes = {m: np.load(layout.logits_path(logdir, m), mmap_mode="r").shape for m in model_indices}
    first = shapes[model_indices[0]]
    for m, shape in shapes.items():
        if len(shape) != 3 or shape[0] != num_examples or shape != first:
            raise layout.RunDirError(
                f"{layout.logits_path(logdir, m)} has shape {shape}; expected [N={num_examples}, Q, C] "
                f"like model {model_indices[0]}'s {first}."
            )
    _, num_queries, num_classes = first
    shape = (len(model_indices), num_examples, num_queries)
    names = ["phi", "ce"] + (["probability"] if probability_signal is not None else [])
    arrays = {name: np.empty(shape, np.float32) for name in names}

    def load(row: int) -> None:
        one = model_signals(
            np.load(layout.logits_path(logdir, model_indices[row])), labels, probability_signal
        )
        for name, values in one.items():
            arrays[name][row] = values

    # numpy releases the GIL in its loops: one file per core at a time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        list(pool.map(load, range(len(model_indices))))
    paths = [layout.logits_path(logdir, m) for m in model_indices]
    signals = Signals(arrays["phi"], arrays["ce"], arrays.get("probability"), probability_signal,
                      lambda m: np.load(paths[m], mmap_mode="r"))  # fmt: skip
    if whitebox:
        signals.grad, signals.whitebox = whitebox_signals(logdir, model_indices)
    return signals


def whitebox_signals(logdir: Path, model_indices: list[int]):
    """(grad float32 [M, N, Qw], accessor model row -> (norms, features) memory-mapped) of the
    white-box files of `model_indices` (experiments/inference.py --whitebox wrote them)."""
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
    load = lambda row: tuple(np.load(paths[kind][row], mmap_mode="r") for kind in layout.WHITEBOX_KINDS)
    whole = lambda row: np.load(paths["norms"][row], mmap_mode="r")[..., -1]  # the whole model's norm
    total = np.stack(
        [-np.log(np.maximum(whole(row), np.float32(1e-30))) for row in range(len(model_indices))]
    )
    return total.astype(np.float32), load
