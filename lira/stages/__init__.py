"""The three stages as library calls: train.py, query.py, attack.py (experiments/ runs them)."""
