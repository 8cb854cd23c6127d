"""config.json, and the files it vouches for: the run's record, read and merged under a lock, and
keep.npy and labels.npy checked against the sha256 it keeps of them.

    record = records.load_record(logdir)             # typed; a bad entry is one line naming it
    records.update_record(logdir, inference={...})   # a stage's entry merged, the others kept
    keep = records.load_keep(logdir, record)         # bool [M, N], checked

The paths and the atomic writers are lira/run/layout.py's.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from lira.config import Config, TrainingConfig, result_fields
from lira.run import lock, record_types
from lira.run.layout import CANARIES, CONFIG, KEEP, LABELS, RunDirError, labels_outside, save_json


def _require(logdir: Path, name: str, stage: str) -> Path:
    path = Path(logdir) / name
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run {stage} with --logdir={logdir} first.")
    return path


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """config.json, typed: what decided the models, and what was found when the run began."""

    config: Config
    data: dict  # the pool's facts: lira.data.Dataset.facts()
    versions: dict = dataclasses.field(default_factory=dict)  # library versions, backend, devices
    git_commit: str | None = None
    queries: int | None = None  # set by the query stage
    whitebox: dict | None = None  # set by the white-box query stage: {"queries", "layers", "features"}
    dp: dict | None = None  # DP-SGD runs: the accounted guarantee, lira.dp.Guarantee.to_json()
    # {"keep.npy": sha256, "labels.npy": sha256} of the files as the train stage wrote them; a record
    # without it (synthetic or older runs) has its files checked only for shape and dtype
    files: dict | None = None
    # "lira" (trained by the train stage) or "external" (logits imported from elsewhere:
    # lira.run.importer; then `config` holds defaults that describe nothing, and `models` what the
    # user stated: {"count", "description"})
    source: str = "lira"
    models: dict | None = None

    @property
    def external(self) -> bool:
        """Whether the models were trained elsewhere: lira knows only their logits and masks."""
        return self.source != "lira"

    def training(self) -> TrainingConfig:
        """The training config the models ran with: for a DP run, with the noise multiplier the
        accountant picked for --dp_target_epsilon in place of the target."""
        training = self.config.training
        if self.dp is not None:
            training = dataclasses.replace(
                training, dp_noise_multiplier=self.dp["noise_multiplier"], dp_target_epsilon=None
            )
        return training

    def to_json(self) -> dict:
        out = {
            "flags": self.config.flat(),
            "data": self.data,
            "versions": self.versions,
            "git_commit": self.git_commit,
        }
        if self.queries is not None:
            out["inference"] = {"queries": self.queries}
        if self.whitebox is not None:
            out["whitebox"] = self.whitebox
        if self.dp is not None:
            out["dp"] = self.dp
        if self.files is not None:
            out["files"] = self.files
        if self.external:
            out.update(source=self.source, models=self.models)
            del out["flags"]  # defaults, which would describe models lira never trained
        return out

    @classmethod
    def from_json(cls, obj: dict) -> RunRecord:
        """Fields absent from `obj` (a run made by an older lira) take their defaults."""
        return cls(
            config=Config.from_flat(_with_dtype(obj.get("flags", {}))), data=obj.get("data", {}),
            versions=obj.get("versions", {}),
            git_commit=obj.get("git_commit"), queries=(obj.get("inference") or {}).get("queries"),
            whitebox=obj.get("whitebox"), dp=obj.get("dp"), files=obj.get("files"),
            source=obj.get("source", "lira"), models=obj.get("models"),
        )  # fmt: skip


def _with_dtype(flags: dict) -> dict:
    """A run recorded before --dtype existed computed in float32."""
    return {**flags, "dtype": "float32"} if flags and "dtype" not in flags else flags


_REWRITE = "re-running experiments/train.py with the run's flags rewrites it"


def load_record(logdir: Path) -> RunRecord:
    """config.json of the run in `logdir`. A truncated or badly typed one is a RunDirError naming
    the file and the entry (lira.run.record_types), never a traceback from the stage that uses it."""
    path = _require(logdir, CONFIG, "experiments/train.py")
    obj = _parse_record(path)
    found = record_types.problems(obj)
    if found:
        raise RunDirError(f"{path}: {found[0][1]} ({_REWRITE}).")
    return RunRecord.from_json(obj)


def _parse_record(path: Path):
    try:
        return json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"{path} is not readable JSON (truncated? {error}); {_REWRITE}.") from error


CONFIG_LOCK = ".config.lock"  # config.json's read-modify-write (lira.run.lock)


def save_record(logdir: Path, record: RunRecord) -> None:
    """Writes `record` as the whole of config.json: a new run's (the stages merge their entries
    into an existing one with update_record)."""
    with lock.acquire(Path(logdir) / CONFIG_LOCK, wait_s=60, what=f"{Path(logdir) / CONFIG}"):
        save_json(Path(logdir) / CONFIG, record.to_json())


def update_record(logdir: Path, repair: bool = False, **entries) -> None:
    """Replaces the top-level `entries` of config.json ("flags", "inference", ...; None removes
    one) and keeps every other, re-read under .config.lock and written atomically: a stage's
    record never drops another's (re-running train keeps "inference", whose --queries guard
    protects the logits), nor a later lira's entries. repair (the train stage, which rewrites the
    run's own entries): an unreadable file is started afresh, an entry of the wrong type dropped."""
    path = Path(logdir) / CONFIG
    with lock.acquire(Path(logdir) / CONFIG_LOCK, wait_s=60, what=f"{path}"):
        obj = {}
        if path.exists():
            try:
                obj = _parse_record(path)
                found = record_types.problems(obj)
            except RunDirError:
                if not repair:
                    raise
                obj, found = {}, []
            if found and not repair:
                raise RunDirError(f"{path}: {found[0][1]} ({_REWRITE}).")
            obj = obj if isinstance(obj, dict) else {}
            for entry, _ in found:
                obj.pop(entry, None)
        obj.update(entries)
        save_json(path, {k: v for k, v in obj.items() if v is not None})


def check_fingerprint(logdir: Path, record: RunRecord, fingerprint: str) -> None:
    """Refuses data whose fingerprint (lira.data.Dataset.fingerprint) is not the one the run
    recorded when it began: resuming or querying on changed data mixes two datasets silently. A
    run recorded without one (made by an older lira, or elsewhere) is not checked."""
    recorded = record.data.get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise RunDirError(
            f"--dataset={record.config.data.dataset}: the data changed since the run in {logdir} began (its "
            "fingerprint is not the one config.json records); restore the data the run was made with, or start "
            "a new run in another --logdir."
        )


def train_command(logdir: Path, config: Config) -> str:
    """The experiments/train.py command of the run `config` in `logdir`: its result-changing flags
    that differ from the defaults (what resumes, or repairs, that run)."""
    defaults = Config().flat()
    flags = [f"--{k}={v}" for k, v in config.flat().items() if k in result_fields() and v != defaults[k]]
    return " ".join(["python experiments/train.py", f"--logdir={logdir}", *flags])


def _load_recorded(logdir: Path, name: str, record: RunRecord | None) -> np.ndarray:
    """The array in logdir/name, checked against the sha256 `record` keeps of it (if it keeps one)."""
    path = _require(logdir, name, "experiments/train.py")
    data = path.read_bytes()
    expected = ((record.files or {}) if record is not None else {}).get(name)
    if expected is not None and record_types.sha256(data) != expected:
        raise RunDirError(
            f"{path} has changed since the train stage wrote it (its sha256 is not the one config.json records); "
            f"{train_command(logdir, record.config)} rewrites it."
        )
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        rewrite = train_command(logdir, record.config) + " rewrites it" if record is not None else _REWRITE
        raise RunDirError(f"{path} is not a readable .npy file (truncated? {error}); {rewrite}.") from error


def load_keep(logdir: Path, record: RunRecord | None = None) -> np.ndarray:
    """bool [M, N]; with `record`, checked against the sha256 it keeps of keep.npy: swapped or
    edited rows would attack the wrong members, silently."""
    keep = _load_recorded(logdir, KEEP, record)
    if keep.dtype != bool or keep.ndim != 2:
        raise RunDirError(f"keep.npy must be a bool [M, N] array, got {keep.dtype} {keep.shape}.")
    return keep


def load_labels(logdir: Path, record: RunRecord | None = None) -> np.ndarray:
    """int32 [N]; with `record`, checked against the sha256 it keeps of labels.npy and against
    its class count (a label of -1 would be scored against the last class)."""
    labels = _load_recorded(logdir, LABELS, record)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RunDirError(f"labels.npy must be an int [N] array, got {labels.dtype} {labels.shape}.")
    num_classes = (record.data if record is not None else {}).get("num_classes")
    problem = labels_outside(labels, num_classes or max(int(labels.max(initial=0)) + 1, 1))
    if problem:
        raise RunDirError(f"{Path(logdir) / LABELS} holds {problem} of the run.")
    return labels.astype(np.int32)


def load_canaries(logdir: Path) -> np.ndarray:
    """int32 [K]: the run's canaries (empty for a run made without --canaries)."""
    path = Path(logdir) / CANARIES
    return np.load(path).astype(np.int32) if path.exists() else np.zeros(0, np.int32)
