"""Training shadow models: the pure vectorized step (step.py), DP-SGD's step (dpsgd.py) and its
Poisson batches (sampling.py), the driver over slices of models (loop.py), the model zoo
(models.py) and its layers (layers.py), augmentation and the pixels of the inference queries
(augment.py), and per-example gradient norms and features (grad_norms.py)."""
