"""An attack's options as flags: each attack module declares the flags its function takes beside
the function, and its registry entry (lira.attacks.ATTACKS) lists them, so that adding an option
touches one module. The attack stage's flags (experiments/attack.py) are generated from them,
and `AttackConfig.options` holds the ones given, by flag name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag an attack takes: `flag` on the command line (prefixed with the attack's family,
    as flags must be unique across attacks), `keyword` in the attack function's signature.

    default: the flag's default, of the flag's type (float, int, str, or a tuple of str for a
    list flag); its keyword value must equal the function's own default (a tuple as a list), so
    that an attack called without options computes what the attack stage computes at its
    defaults. choices: the valid values (of each element, for a list). check(value) -> None, or
    what is wrong as the clause that follows the flag in the error ("must be > 0"), for what
    choices cannot say. convert(value) -> the keyword's value, where the flag cannot hold it
    directly (a string that stands for a number or "auto", 0 for None)."""

    flag: str
    keyword: str
    default: Any
    help: str
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def kind(self) -> type:
        """The flag's type: that of its default (list for a tuple: a list flag's default stays
        immutable)."""
        return list if isinstance(self.default, tuple) else type(self.default)

    def keyword_value(self, value: Any) -> Any:
        """The keyword's value for the flag's `value`; ValueError naming the flag, the value and
        what would be valid."""
        self.validate(value)
        return self.convert(value) if self.convert else value

    def validate(self, value: Any) -> None:
        if not _is_kind(value, self.kind):
            raise ValueError(f"--{self.flag} must be {_KIND_NAMES[self.kind]}, got {value!r}.")
        if self.choices is not None:
            given = list(value) if self.kind is list else [value]
            if not given or not set(given) <= set(self.choices):
                shown = ",".join(map(str, given)) if self.kind is list else value
                verb = "choose from" if self.kind is list else "valid are"
                raise ValueError(f"--{self.flag}={shown}: {verb} {', '.join(map(str, self.choices))}.")
        problem = self.check(value) if self.check else None
        if problem:
            raise ValueError(f"--{self.flag} {problem}, got {value}.")


_KIND_NAMES = {float: "a number", int: "an integer", str: "a string", list: "a list of strings"}


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:  # an int is a float flag's value too (2 for 2.0), a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)
