"""The run directory: its layout and files (layout.py), checkpoints (checkpoint.py), and synthetic
run directories for tests and benchmarks (synthetic.py)."""
