"""Training shadow models: the pure vectorized step (step.py), the driver over slices of models
(loop.py), the model zoo (models.py) and its layers (layers.py), augmentation and the inference
queries (augment.py), and the IN/OUT masks (masks.py)."""
