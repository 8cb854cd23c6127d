"""The attacks, by name: `ATTACKS[name]` is an `AttackSpec`.

Every attack is `fn(inputs, **options) -> scores float [T, N]` (or `(scores, info)`, info being
what it chose from the data, for the report), for all T targets at once; see
`lira.attacks.common`. The spec tells the driver what the attack reads, so it can check there
are enough references and compute only the signals needed:

- references = "none": no references (the plain loss attack);
- "in_and_out": per example, equal numbers of IN and OUT references (online);
- "out": per example, OUT references only (offline: the attack must work with references
  trained without the example).

The spec also lists the attack's options (`lira.attacks.options.Option`), declared beside its
function: the attack stage's flags are generated from them (`option_flags`), and
`options_from_flags` turns the flags given into each attack's keyword options.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from lira.attacks import baselines, lira_attacks, nasr, rmia, shokri
from lira.attacks.common import AttackInputs
from lira.attacks.options import Option
from lira.signals import ProbabilitySignal

__all__ = [
    "ATTACKS",
    "BLACK_BOX",
    "WHITE_BOX",
    "AttackInputs",
    "AttackSpec",
    "Option",
    "option_flags",
    "option_names",
    "options_from_flags",
    "probability_signal",
]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    fn: Callable
    references: str  # "none" | "in_and_out" | "out"
    min_in: int  # IN references each example needs
    min_out: int  # OUT references each example needs
    needs_logits: bool = False  # reads prediction vectors (Signals.logits)
    needs_probability: bool = False  # reads RMIA's probability signal
    pooled: bool = False  # one variance pooled over examples: some example needs 2 of each kind
    needs_whitebox: bool = False  # reads the white-box signals (experiments/inference.py --whitebox)
    options: tuple[Option, ...] = ()  # the attack stage's flags for the function's keyword options


ATTACKS: dict[str, AttackSpec] = {
    "loss": AttackSpec(baselines.loss, "none", 0, 0),
    "calibrated_loss": AttackSpec(baselines.calibrated_loss, "out", 0, 1),
    "attack_r": AttackSpec(baselines.attack_r, "out", 0, 1),
    "shokri": AttackSpec(shokri.shokri, "in_and_out", 1, 1, needs_logits=True, options=shokri.OPTIONS),
    # Two of each, because the per-example variances are unbiased (ddof=1). The fixed-variance
    # variants need only a mean per example, so one of each; online, their pooled variance needs
    # some example with two, while offline with one OUT reference each it is pooled around the
    # overall mean (the RMIA paper's one-reference case). This is why they work with very few
    # shadow models (LiRA, Sec. VI).
    "lira_online": AttackSpec(lira_attacks.lira_online, "in_and_out", 2, 2),
    "lira_online_fixed_var": AttackSpec(lira_attacks.lira_online_fixed_var, "in_and_out", 1, 1, pooled=True),
    "lira_offline": AttackSpec(lira_attacks.lira_offline, "out", 0, 2),
    "lira_offline_fixed_var": AttackSpec(lira_attacks.lira_offline_fixed_var, "out", 0, 1, pooled=True),
    "lira_online_student": AttackSpec(lira_attacks.lira_online_student, "in_and_out", 2, 2),
    "lira_offline_student": AttackSpec(lira_attacks.lira_offline_student, "out", 0, 2),
    "rmia_online": AttackSpec(
        rmia.rmia_online, "in_and_out", 1, 1, needs_probability=True, options=rmia.ONLINE_OPTIONS
    ),
    "rmia_offline": AttackSpec(
        rmia.rmia_offline, "out", 0, 1, needs_probability=True, options=rmia.OFFLINE_OPTIONS
    ),
    # White-box (Signals.grad, Signals.whitebox): run only on runs queried with --whitebox.
    "whitebox_lira_online": AttackSpec(
        lira_attacks.whitebox_lira_online, "in_and_out", 2, 2, needs_whitebox=True
    ),
    "whitebox_lira_online_fixed_var": AttackSpec(
        lira_attacks.whitebox_lira_online_fixed_var, "in_and_out", 1, 1, pooled=True, needs_whitebox=True
    ),
    "whitebox_lira_offline": AttackSpec(lira_attacks.whitebox_lira_offline, "out", 0, 2, needs_whitebox=True),
    "whitebox_nasr": AttackSpec(
        nasr.whitebox_nasr, "in_and_out", 1, 1, needs_whitebox=True, options=nasr.OPTIONS
    ),
}
BLACK_BOX = [name for name, spec in ATTACKS.items() if not spec.needs_whitebox]
WHITE_BOX = [name for name, spec in ATTACKS.items() if spec.needs_whitebox]

SIGNAL_OPTIONS = ("signal", "temperature", "margin", "terms")  # RMIA's, consumed when signals load


def option_names(name: str) -> list[str]:
    """The keyword options attack `name` accepts beyond its inputs."""
    parameters = list(inspect.signature(ATTACKS[name].fn).parameters)
    return parameters[1:]


def option_flags() -> dict[str, Option]:
    """{flag: Option} of every attack, each flag once, in registry order. Attacks that share a
    flag (rmia_online and rmia_offline) share its Option, so one value means one thing."""
    flags: dict[str, Option] = {}
    for name, spec in ATTACKS.items():
        for option in spec.options:
            assert flags.setdefault(option.flag, option) is option, f"{name} redeclares --{option.flag}"
    return flags


def options_from_flags(values: dict[str, Any] | None = None) -> dict[str, dict]:
    """{attack: {keyword: value}} of every attack that has options, from the option flags'
    `values` ({flag: value}, AttackConfig.options; a flag not given takes its default). An
    unknown flag or a bad value raises ValueError naming the flag, the value and what is valid."""
    values = values or {}
    flags = option_flags()
    unknown = [flag for flag in values if flag not in flags]
    if unknown:
        raise ValueError(
            f"Unknown attack options {', '.join(f'--{flag}={values[flag]}' for flag in unknown)}; "
            f"valid: {', '.join(f'--{flag}' for flag in flags)}."
        )
    keywords = {
        flag: option.keyword_value(values.get(flag, option.default)) for flag, option in flags.items()
    }
    return {
        name: {option.keyword: keywords[option.flag] for option in spec.options}
        for name, spec in ATTACKS.items()
        if spec.options
    }


def _option_defaults(name: str) -> dict:
    parameters = inspect.signature(ATTACKS[name].fn).parameters
    return {key: parameters[key].default for key in SIGNAL_OPTIONS}


def probability_signal(
    attacks: list[str], attack_options: dict[str, dict] | None = None
) -> ProbabilitySignal | None:
    """The probability signal the RMIA attacks among `attacks` read (None if none of them runs).

    It is computed once, when the signals load, so every RMIA attack of one audit must ask for
    the same one."""
    attack_options = attack_options or {}
    wanted = {}
    for name in attacks:
        if ATTACKS[name].needs_probability:
            options = {**_option_defaults(name), **attack_options.get(name, {})}
            wanted[name] = tuple(options[key] for key in SIGNAL_OPTIONS)
    if len(set(wanted.values())) > 1:
        raise ValueError(f"The RMIA attacks must use one probability signal {SIGNAL_OPTIONS}; got {wanted}.")
    if not wanted:
        return None
    kind, temperature, margin, terms = next(iter(wanted.values()))
    return ProbabilitySignal(kind, float(temperature), float(margin), int(terms))
