"""lira: vectorized shadow training and membership-inference audits in JAX."""

from lira import xla_flags as _xla_flags

_xla_flags.add_cpu_flags()  # before any JAX backend starts; see lira/xla_flags.py

__version__ = "0.1.0"
