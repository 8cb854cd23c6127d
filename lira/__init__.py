"""lira: vectorized shadow training and membership-inference audits in JAX."""

__version__ = "0.1.0"
