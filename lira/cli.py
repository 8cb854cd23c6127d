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
status 2; LIRA_TRACEBACK=1 shows the traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from absl import app, flags

from lira import config, xla_flags

USER_ERRORS = (ValueError, FileNotFoundError, app.UsageError)
_DEFINE = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string,
           "bool": flags.DEFINE_bool, "list[str]": flags.DEFINE_list}  # fmt: skip


def define_flags(*sections: type, names=None, overrides: dict | None = None, flag_values=flags.FLAGS) -> None:
    """One absl flag per field of the config sections (only `names`, if given), its help and
    default from the field; `overrides` replaces defaults by name (None: "not given")."""
    overrides = overrides or {}
    for section in sections:
        for name, f in config.fields_of(section).items():
            if names is not None and name not in names:
                continue
            kind = str(f.type).replace(" | None", "")
            default = overrides.get(
                name, f.default if f.default is not dataclasses.MISSING else f.default_factory()
            )
            choices = f.metadata["choices"]
            if kind == "str" and choices:
                flags.DEFINE_enum(name, default, list(choices), f.metadata["help"], flag_values=flag_values)
            else:
                _DEFINE[kind](name, default, f.metadata["help"], flag_values=flag_values)


def section(cls: type, flag_values=flags.FLAGS):
    """An instance of the config section `cls` with the parsed flags' values."""
    return cls(**{name: flag_values[name].value for name in config.fields_of(cls)})


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

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:  # an unknown flag or a value of the wrong type
            fail(str(error))

    app.run(guarded, flags_parser=parse)


def fail(message: str) -> None:
    """Exits with status 2 after one line on stderr: the script's name and `message`'s first line."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{os.path.basename(sys.argv[0])}: error: {first}", file=sys.stderr)
    sys.exit(2)
