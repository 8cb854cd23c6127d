"""lira: vectorized shadow training and membership-inference audits in JAX.

Importing lira changes nothing outside it. The scripts (experiments/, bench/) turn on lira's
XLA:CPU flags before JAX starts (lira.cli.run calls lira.xla_flags.add_cpu_flags); a program of
your own that trains on the CPU can call it first too.
"""

__version__ = "0.1.0"
