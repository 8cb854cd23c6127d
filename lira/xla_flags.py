"""XLA:CPU flags that lira's scripts turn on before JAX starts its backends.

XLA reads XLA_FLAGS once, when the first computation creates a backend, so the scripts add these
to the environment first thing (lira.cli.run calls add_cpu_flags; so do the tests' conftest and
the benchmarks' child processes); `import lira` alone changes nothing. A flag the user already set, by name, is left as the user set
it; LIRA_XLA_FLAGS=0 adds none. XLA aborts on a flag it does not know, and experimental flags
come and go, so they are added only under the jaxlib versions they were tested with.

YNN_DOT routes XLA:CPU's matmuls and convolutions through the YNNPACK library, which makes
cnn32's training step with XLA's native convolutions faster on the CPU and leaves the mlp's as
it was (measured: docs/performance.md, "What made cnn32 fast on the CPU"). The flag does
nothing on GPU and TPU.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_DOT = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
CPU_FLAGS = (YNN_DOT,)
OPT_OUT = "LIRA_XLA_FLAGS"
TESTED_JAXLIB = ("0.10.",)  # version prefixes


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def add_cpu_flags(environ=os.environ, jaxlib_version: str | None = None) -> None:
    """Appends CPU_FLAGS to environ["XLA_FLAGS"], but a flag whose name is there already, and
    none at all if environ[OPT_OUT] is "0" or jaxlib is not a TESTED_JAXLIB version. Has no
    effect once JAX has created its backends."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if environ.get(OPT_OUT, "1") == "0" or not version.startswith(TESTED_JAXLIB):
        return
    current = environ.get("XLA_FLAGS", "")
    names = {_name(flag) for flag in current.split()}
    added = [flag for flag in CPU_FLAGS if _name(flag) not in names]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()


def ynn_enabled(environ=os.environ) -> bool:
    """Whether XLA_FLAGS asks XLA:CPU for YNNPACK's matmuls and convolutions, as lira's defaults
    (native convolutions, one model a step on the CPU) assume."""
    flags = environ.get("XLA_FLAGS", "").split()
    return any(_name(flag) == _name(YNN_DOT) and "LIBRARY_FUSION_TYPE_DOT" in flag for flag in flags)
