"""What the scripts in experiments/ share: flags generated from lira/config.py, the XLA:CPU
flags, and user errors as one line.

    from lira import cli, config
    cli.define_flags(config.DataConfig, config.TrainingConfig)
    ...
    def main(argv):
        data = cli.section(config.DataConfig)
    if __name__ == "__main__":
        cli.run(main)

A user error (a bad flag value, a run directory that does not fit, a missing file: ValueError
and its kind, FileNotFoundError, absl's UsageError) prints one line on stderr and exits with
status 2; so does a full disk (OSError ENOSPC or EDQUOT, naming the file being written).
LIRA_TRACEBACK=1 shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from absl import app, flags

from lira import config, xla_flags
from lira.run.layout import DISK_FULL

USER_ERRORS = (ValueError, FileNotFoundError, app.UsageError)
_DEFINE = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string,
           "bool": flags.DEFINE_bool, "list[str]": flags.DEFINE_list, "list": flags.DEFINE_list}  # fmt: skip
OPTIONS = "options"  # AttackConfig.options: no flag of its own, the attacks' option flags given


def define_flags(*sections: type, names=None, overrides: dict | None = None, flag_values=flags.FLAGS) -> None:
    """One absl flag per field of the config sections (only `names`, if given), its help and
    default from the field; `overrides` replaces defaults by name (None: "not given").
    AttackConfig.options has none: its flags are the attacks' (define_attack_flags)."""
    overrides = overrides or {}
    for section in sections:
        for name, f in config.fields_of(section).items():
            if (names is not None and name not in names) or name == OPTIONS:
                continue
            kind = str(f.type).replace(" | None", "")
            default = overrides.get(
                name, f.default if f.default is not dataclasses.MISSING else f.default_factory()
            )
            _define(name, kind, default, f.metadata["help"], f.metadata["choices"], flag_values)


def define_attack_flags(flag_values=flags.FLAGS) -> None:
    """One absl flag per attack option (lira.attacks.option_flags), its help, default and
    choices from the Option; their values are checked when the options are made
    (lira.attacks.options_from_flags)."""
    from lira.attacks import option_flags  # the attacks import JAX and scikit-learn: only where needed

    for flag, option in option_flags().items():
        default = list(option.default) if option.kind is list else option.default
        choices = option.choices if option.kind is str else None
        _define(flag, option.kind.__name__, default, option.help, choices, flag_values)


def _define(name: str, kind: str, default, help: str, choices: tuple | None, flag_values) -> None:
    if kind == "str" and choices:
        flags.DEFINE_enum(name, default, list(choices), help, flag_values=flag_values)
    else:
        _DEFINE[kind](name, default, help, flag_values=flag_values)


def section(cls: type, flag_values=flags.FLAGS):
    """An instance of the config section `cls` with the parsed flags' values; AttackConfig's
    `options` holds the attack option flags given on the command line (define_attack_flags)."""
    fields = config.fields_of(cls)
    values = {name: flag_values[name].value for name in fields if name != OPTIONS}
    if OPTIONS in fields:
        values[OPTIONS] = attack_flags_given(flag_values)
    return cls(**values)


def attack_flags_given(flag_values=flags.FLAGS) -> dict:
    """{flag: value} of the attack option flags given on the command line: the others keep the
    attacks' own defaults, wherever they are declared."""
    from lira.attacks import option_flags

    return {
        flag: flag_values[flag].value
        for flag in option_flags()
        if flag in flag_values and flag_values[flag].present
    }


def run(main) -> None:
    """absl's app.run(main) with the XLA:CPU flags set first, JAX's TPU probe kept quiet, and user
    errors reported in one line (exit status 2)."""
    xla_flags.add_cpu_flags()  # before any JAX backend starts
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'"

    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            if os.environ.get("LIRA_TRACEBACK") == "1":
                raise
            fail(str(error) or type(error).__name__)
        except OSError as error:
            if error.errno not in DISK_FULL or os.environ.get("LIRA_TRACEBACK") == "1":
                raise
            fail(disk_full_message(error))

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:  # an unknown flag or a value of the wrong type
            fail(str(error))

    app.run(guarded, flags_parser=parse)


def disk_full_message(error: OSError) -> str:
    """The one line for a full disk or quota: every write is atomic (lira.run.layout), so what was
    written before stays whole and a re-run resumes from it."""
    where = f" while writing {error.filename}" if error.filename else ""
    return (
        f"{error.strerror or os.strerror(error.errno)}{where}; free space and re-run the same command: nothing "
        "already written is lost."
    )


def fail(message: str) -> None:
    """Exits with status 2 after one line on stderr: the script's name and `message`'s first line."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{os.path.basename(sys.argv[0])}: error: {first}", file=sys.stderr)
    sys.exit(2)
