"""The one typed config tree: every hyperparameter of a run, declared once.

    Config
      data       DataConfig      which examples form the audit pool
      model      ModelConfig     the architecture and its lowering
      training   TrainingConfig  the shadow models and their optimisation
    QueryConfig                  the query stage's options
    AttackConfig                 the attack stage's protocol and audit; the attacks' own options
                                 are declared by the attacks (lira.attacks.options), and
                                 AttackConfig.options holds those given, by flag name

Each field carries its help text and whether it changes results (`result=True`): a re-run
into an existing run directory must repeat those. The scripts in experiments/ generate their
flags from these classes (lira/cli.py), presets are instances of them (experiments/reproduce.py),
and config.json's "flags" holds a Config flattened by field name (`Config.flat`, read back with
`Config.from_flat`). Field names are unique across the sections of a script's flags.

Validation (`validate()`) reads and computes nothing: it raises ValueError naming the flag and
what would be valid, before any data is loaded or anything compiled.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

# Choices that belong to one module but are needed before it is imported (flags, validation).
AUGMENTS = ("none", "mirror", "weak")  # lira/training/augment.py
QUERY_COUNTS = (1, 2, 18, 162)  # lira/run/views.py: query_offsets, resolve_queries
CONV_IMPLS = ("xla", "im2col")  # lira/training/layers.py
DTYPES = ("float32", "bfloat16")  # lira/training/models.py: the models' compute dtype
AUDIT_METHODS = ("one_run", "clopper_pearson")  # lira/audit.py
DP_CLIPPINGS = ("auto", "per_example", "ghost")  # lira/training/dpsgd.py


def field(default, help: str, *, result: bool = False, choices: tuple | None = None):
    """A config field: its default, its flag's help, whether it changes results, its choices."""
    metadata = {"help": help, "result": result, "choices": choices}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check(conditions) -> None:
    for ok, message in conditions:
        if not ok:
            raise ValueError(message)


def _finite(config) -> list[tuple[bool, str]]:
    """A condition per float of `config` (also inside list and dict fields, the attacks' options):
    inf and nan pass comparisons such as `lr > 0` or fail them with a misleading message."""
    conditions = []
    for name in fields_of(type(config)):
        value = getattr(config, name)
        if isinstance(value, dict):
            items = list(value.items())
        else:
            items = [(name, item) for item in (value if isinstance(value, list) else [value])]
        for flag, item in items:
            if isinstance(item, float) and not math.isfinite(item):
                conditions.append((False, f"--{flag}={item}: must be a finite number."))
    return conditions


def _choice(config, name: str) -> tuple[bool, str]:
    value, choices = getattr(config, name), fields_of(type(config))[name].metadata["choices"]
    return value is None or value in choices, f"--{name}={value}: valid are {', '.join(map(str, choices))}."


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = field(
        "cifar10", "tfds name (cifar10, cifar100, svhn_cropped, mnist, fashion_mnist), npz:PATH or digits.",
        result=True,
    )  # fmt: skip
    data_dir: str | None = field(None, "tfds data_dir where the dataset is prepared.")
    pool_size: int | None = field(None, "Use only the first n train examples as the audit pool.", result=True)
    canaries: int = field(
        0, "Mislabel this many pool examples, drawn from --seed, as canaries (canaries.npy): the strongest "
        "known black-box canaries, for empirical privacy auditing.", result=True,
    )  # fmt: skip

    def validate(self) -> None:
        _check([
            *_finite(self),
            (bool(self.dataset), "--dataset is empty: give a tfds name, npz:PATH or digits."),
            (self.pool_size is None or self.pool_size >= 1, f"--pool_size must be >= 1, got {self.pool_size}."),
            (self.canaries >= 0, f"--canaries must be >= 0, got {self.canaries}."),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = field("wrn28-2", "Model architecture (lira.training.models.available_archs()).", result=True)
    conv_impl: str | None = field(
        None, "Convolution lowering: xla or im2col (default: the fastest measured on the backend).",
        choices=CONV_IMPLS,
    )  # fmt: skip
    dtype: str | None = field(
        None, "Compute dtype of activations and convolutions: float32 or bfloat16 (parameters, optimizer state, "
        "BatchNorm statistics and the loss stay float32; queries run in float32). Default: the backend's "
        "(lira.training.loop.default_dtype).", result=True, choices=DTYPES,
    )  # fmt: skip

    def validate(self) -> None:
        _check([*_finite(self), _choice(self, "conv_impl"), _choice(self, "dtype")])


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    num_shadows: int = field(16, "M: how many models in all (targets and shadows).", result=True)
    pkeep: float = field(0.5, "Fraction of models that train on each example.", result=True)
    epochs: int = field(100, "Training epochs per model.", result=True)
    batch_size: int = field(256, "Minibatch size per model.", result=True)
    lr: float = field(0.1, "Peak learning rate (linear warm-up, then cosine decay).", result=True)
    warmup_epochs: float = field(1.0, "Epochs of linear learning-rate warm-up.", result=True)
    weight_decay: float = field(5e-4, "L2 weight decay on kernels.", result=True)
    momentum: float = field(0.9, "SGD momentum.", result=True)
    augment: str = field(
        "weak", "Training augmentation: none, mirror, or weak (mirror + shift 4).", result=True, choices=AUGMENTS
    )  # fmt: skip
    seed: int = field(
        0, "Root seed: masks, initialisation, data order and augmentation derive from it.", result=True
    )  # fmt: skip
    models_per_step: int = field(
        0, "Models one compiled step advances (0: the backend's default). Slices the checkpoints.", result=True
    )  # fmt: skip
    eval_every: int = field(1, "Measure test accuracy every this many epochs (0: only at the end).")
    eval_examples: int = field(
        1000, "Test examples of the evaluations before the last epoch (0: all); the last epoch uses all of them."
    )  # fmt: skip
    checkpoint_every: int = field(
        0, "Save the training state every this many epochs, and after the last (0: automatic, so that saving "
        "costs at most about 5% of the training time). A resumed run starts from the last save.",
    )  # fmt: skip
    steps_per_call: int = field(
        0, "Training steps in one compiled call, inside a lax.fori_loop (0: the backend's default, "
        "lira.training.loop.default_steps_per_call). The same models whatever the value.",
    )  # fmt: skip
    dp_noise_multiplier: float | None = field(
        None, "DP-SGD: Gaussian noise of this many clip norms on each step's sum of clipped gradients "
        "(unset: ordinary training; 0: clipping alone, epsilon infinite).", result=True,
    )  # fmt: skip
    dp_target_epsilon: float | None = field(
        None, "DP-SGD: pick the noise multiplier whose accounted epsilon (at --dp_delta) is this.", result=True
    )  # fmt: skip
    dp_clip_norm: float = field(
        1.0, "DP-SGD: per-example gradients are clipped to this L2 norm.", result=True
    )
    dp_delta: float = field(
        1e-5, "DP-SGD: the delta of the accounted (epsilon, delta) guarantee.", result=True
    )
    dp_max_batch_size: int = field(
        0, "DP-SGD: the physical batch; Poisson draws above it are truncated, and accounted so "
        "(0: batch_size + 5 sqrt(batch_size)).", result=True,
    )  # fmt: skip

    dp_clipping: str = field(
        "auto", "DP-SGD: per_example (jax-privacy's clipped_grad), ghost (per-example norms without per-example "
        "gradients, then one reweighted backward pass: Dense and Conv layers only; the same sum), or auto "
        "(ghost for Dense-only models, the faster there).", choices=DP_CLIPPINGS,
    )  # fmt: skip

    @property
    def dp(self) -> bool:
        """Whether the models train with DP-SGD."""
        return self.dp_noise_multiplier is not None or self.dp_target_epsilon is not None

    def validate(self) -> None:
        _check([
            *_finite(self),
            (self.num_shadows >= 2, f"--num_shadows must be >= 2 (a target needs shadows), got {self.num_shadows}."),
            (0.0 < self.pkeep < 1.0, f"--pkeep must be in (0, 1), got {self.pkeep}."),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}."),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}."),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}."),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}."),
            (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}."),
            (self.warmup_epochs >= 0, f"--warmup_epochs must be >= 0, got {self.warmup_epochs}."),
            _choice(self, "augment"),
            _choice(self, "dp_clipping"),
            (self.models_per_step >= 0, f"--models_per_step must be >= 0 (0 = default), got {self.models_per_step}."),
            (self.eval_every >= 0, f"--eval_every must be >= 0 (0 = only at the end), got {self.eval_every}."),
            (self.eval_examples >= 0, f"--eval_examples must be >= 0 (0 = all), got {self.eval_examples}."),
            (self.checkpoint_every >= 0,
             f"--checkpoint_every must be >= 0 (0 = automatic), got {self.checkpoint_every}."),
            (self.steps_per_call >= 0, f"--steps_per_call must be >= 0 (0 = default), got {self.steps_per_call}."),
            (self.dp_noise_multiplier is None or self.dp_target_epsilon is None,
             "--dp_noise_multiplier and --dp_target_epsilon both given: give one (the noise, or the epsilon "
             "the accountant picks the noise for)."),
            (self.dp_noise_multiplier is None or self.dp_noise_multiplier >= 0,
             f"--dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}."),
            (self.dp_target_epsilon is None or self.dp_target_epsilon > 0,
             f"--dp_target_epsilon must be > 0, got {self.dp_target_epsilon}."),
            (self.dp_clip_norm > 0, f"--dp_clip_norm must be > 0, got {self.dp_clip_norm}."),
            (0 < self.dp_delta < 1, f"--dp_delta must be in (0, 1), got {self.dp_delta}."),
            (self.dp_max_batch_size == 0 or self.dp_max_batch_size >= self.batch_size,
             f"--dp_max_batch_size must be 0 (automatic) or >= --batch_size={self.batch_size}, "
             f"got {self.dp_max_batch_size}."),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QueryConfig:
    queries: int = field(
        0, "Augmented queries per example: 1, 2, 18 or 162, or 0: the views the models trained on (the run's "
        "--augment: none 1, mirror 2, weak 18; non-image data 1).", result=True, choices=(0, *QUERY_COUNTS),
    )  # fmt: skip
    batch_size: int = field(256, "Images (examples x queries) per model in one inference call.")
    whitebox: bool = field(
        False, "Also store white-box signals from the checkpoints: per-example loss-gradient norms per layer and "
        "the penultimate activations (whitebox/).",
    )  # fmt: skip
    whitebox_queries: int = field(
        0, "Queries of the white-box signals: 1, 2, 18 or 162 (0: as --queries).", choices=(0, *QUERY_COUNTS)
    )  # fmt: skip
    allow_untrained_views: bool = field(
        False, "Allow --queries / --whitebox_queries with views the run's --augment never trained on (refused "
        "otherwise: they weaken the attacks).",
    )  # fmt: skip
    arch: str | None = field(
        None, "The run's --arch=module:factory, named again: a run directory never makes lira import code, so a "
        "run of your own model is queried only when the command names its module (other runs: leave unset).",
    )  # fmt: skip

    def validate(self) -> None:
        _check([
            *_finite(self),
            (self.queries in (0, *QUERY_COUNTS), f"--queries={self.queries} is not supported; valid: "
                                                 f"{', '.join(map(str, QUERY_COUNTS))}. 0 (the default) queries the "
                                                 "views the models trained on."),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}."),
            (self.whitebox_queries in (0, *QUERY_COUNTS), f"--whitebox_queries={self.whitebox_queries} is not "
                                                          f"supported; valid: 0, {', '.join(map(str, QUERY_COUNTS))}."),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    attacks: list[str] = field(["all"], "Comma-separated attack names (lira.attacks.ATTACKS), or 'all'.")
    num_targets: int = field(4, "Models 0..T-1 are attacked in turn (clamped to the number of models).")
    num_shadows_used: int | None = field(
        None, "Use only K references per target (offline attacks: K OUT references per example)."
    )  # fmt: skip
    bootstrap: int = field(200, "Bootstrap resamples for the 95% intervals (0 = none).")
    min_false_positives: int | None = field(
        None, "Report TPR at an FPR level only where the level allows at least this many false positives "
        "(default: lira.metrics.MIN_FALSE_POSITIVES). Lower reaches lower levels on the same run, at the price "
        "of a TPR biased upward and intervals that miss more often (docs/results/tpr_resolution).",
    )  # fmt: skip
    seed: int = field(0, "Seed of the reference order, subsamples and bootstrap.")
    options: dict[str, Any] = field(
        {}, "The attacks' option flags given, {flag name: value}; a flag not given takes its default. Each "
        "attack declares its own (lira.attacks.option_flags; lira.attacks.options_from_flags checks them).",
    )  # fmt: skip
    audit_method: str = field(
        "one_run", "Empirical epsilon lower bound: one_run (Steinke et al. 2023, per target) or clopper_pearson "
        "(pooled pairs; see lira/audit.py).", choices=AUDIT_METHODS,
    )  # fmt: skip
    audit_significance: float = field(
        0.05, "Every audited attack's epsilon lower bound (and so their largest) holds with confidence 1 - this."
    )  # fmt: skip
    audit_attacks: list[str] = field(
        [], "Attacks the privacy audit bounds, among --attacks (default: all of them); each bound pays a "
        "Bonferroni factor of their number, so one attack named in advance gives the tightest bound.",
    )  # fmt: skip
    audit_delta: float | None = field(
        None, "The delta of the epsilon lower bound (default: the run's --dp_delta)."
    )
    strict: bool = field(
        False, "Fail when an attack cannot run on this run (too few references for it); by default it is "
        "left out, with the reason in the table and the report, and the others run.",
    )  # fmt: skip

    def validate(self) -> None:
        _check([
            *_finite(self),
            (self.num_targets >= 1, f"--num_targets must be >= 1, got {self.num_targets}."),
            (self.num_shadows_used is None or self.num_shadows_used >= 1,
             f"--num_shadows_used must be >= 1, got {self.num_shadows_used}."),
            (self.bootstrap >= 0, f"--bootstrap must be >= 0, got {self.bootstrap}."),
            (self.min_false_positives is None or self.min_false_positives >= 1,
             f"--min_false_positives must be >= 1, got {self.min_false_positives}."),
            _choice(self, "audit_method"),
            (0 < self.audit_significance < 0.5,
             f"--audit_significance must be in (0, 0.5), got {self.audit_significance}."),
            (self.audit_delta is None or 0 < self.audit_delta < 1,
             f"--audit_delta must be in (0, 1), got {self.audit_delta}."),
            (self.attacks == ["all"] or set(self.audit_attacks) <= set(self.attacks),
             f"--audit_attacks={','.join(self.audit_attacks)}: name attacks among --attacks={','.join(self.attacks)}."),
        ])  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    """What decides a run's models: config.json records it, flattened."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    SECTIONS: typing.ClassVar = ("data", "model", "training")

    def validate(self) -> None:
        for name in self.SECTIONS:
            getattr(self, name).validate()

    def flat(self) -> dict[str, Any]:
        """{field name: value} over every section."""
        return {k: v for name in self.SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        """The inverse of flat(); names of no section are ignored, missing ones take defaults."""
        sections = {}
        for name, section in zip(cls.SECTIONS, (DataConfig, ModelConfig, TrainingConfig)):
            sections[name] = section(**{k: values[k] for k in fields_of(section) if k in values})
        return cls(**sections)

    def replace(self, **values) -> Config:
        """A copy with the named fields (of any section) replaced."""
        unknown = set(values) - set(self.flat())
        if unknown:
            raise ValueError(f"Unknown config fields: {', '.join(sorted(unknown))}.")
        return Config.from_flat({**self.flat(), **values})

    def result_differences(self, other: Config) -> list[str]:
        """The result-changing fields whose values differ, as '--name: before, now' lines."""
        mine, theirs = self.flat(), other.flat()
        return [
            f"--{k}: {theirs[k]!r} before, {mine[k]!r} now" for k in result_fields() if mine[k] != theirs[k]
        ]


def fields_of(section: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(section)}


def result_fields() -> tuple[str, ...]:
    """The fields of Config that change what the models are."""
    return tuple(
        name
        for section in (DataConfig, ModelConfig, TrainingConfig)
        for name, f in fields_of(section).items()
        if f.metadata["result"]
    )
