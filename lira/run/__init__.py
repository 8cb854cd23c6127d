"""The run directory: its layout and files (layout.py), checkpoints (checkpoint.py), the IN/OUT
masks (masks.py), the query views of the logits' Q axis (views.py), and synthetic run directories
for tests and benchmarks (synthetic.py)."""
