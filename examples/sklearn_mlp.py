"""A worked example of auditing models lira did not train: scikit-learn MLPs on the digits.

    python examples/sklearn_mlp.py --out=../runs/sklearn_mlp        # trains, writes 3 .npy files
    python experiments/import_logits.py --logits=../runs/sklearn_mlp/logits.npy \
        --keep=../runs/sklearn_mlp/keep.npy --labels=../runs/sklearn_mlp/labels.npy \
        --logdir=exp/sklearn_mlp --description="16 scikit-learn MLPs (64 hidden units), digits"
    python experiments/attack.py --logdir=exp/sklearn_mlp --num_targets=16

or, in Python, without a run directory: `lira.api.audit(logits, keep, labels)` (--audit here).

What any training loop has to hand over: each model's logits on every example of the audit
pool (members and non-members alike), and which model trained on which example. The membership
matrix comes from lira.run.masks.make_keep, which puts every example in exactly half the models:
the design LiRA's online attack wants (equal IN and OUT references for every example).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from lira.run import masks


def logits_of(mlp: MLPClassifier, x: np.ndarray) -> np.ndarray:
    """[N, C]: the pre-softmax outputs (scikit-learn only exposes their softmax, which rounds the
    confident examples' probabilities to exactly 1: the very examples membership inference is
    about)."""
    h = x
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        h = h @ w + b
        if i < len(mlp.coefs_) - 1:
            h = np.maximum(h, 0)  # the default activation, relu
    return h


def train_models(num_models: int, max_iter: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits float32 [M, N, C], keep bool [M, N], labels int [N]) of num_models MLPs, each trained
    on its random half of the 1,797 digits."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    keep = masks.make_keep(num_models, len(y), 0.5, seed)
    logits = []
    for m in range(num_models):
        mlp = MLPClassifier(
            hidden_layer_sizes=(64,), max_iter=max_iter, alpha=1e-4, random_state=seed * 1000 + m
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # trained to fit: that is what is audited
            mlp.fit(x[keep[m]], y[keep[m]])
        logits.append(logits_of(mlp, x))
    return np.stack(logits).astype(np.float32), keep, y.astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Folder for logits.npy, keep.npy, labels.npy.")
    parser.add_argument("--num_models", type=int, default=16)
    parser.add_argument("--max_iter", type=int, default=200)
    parser.add_argument("--audit", action="store_true", help="Also audit them here with lira.api.audit.")
    args = parser.parse_args()
    logits, keep, labels = train_models(args.num_models, args.max_iter)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in (("logits", logits), ("keep", keep), ("labels", labels)):
        np.save(out / f"{name}.npy", array)
    print(f"Wrote logits {logits.shape}, keep {keep.shape}, labels {labels.shape} to {out}.")
    if args.audit:
        import lira.api

        result = lira.api.audit(logits, keep, labels, attacks=["loss", "lira_online", "rmia_online"],
                                num_targets=len(keep))  # fmt: skip
        print(result.table())


if __name__ == "__main__":
    main()
