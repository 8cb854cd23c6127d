"""A worked example of auditing models lira did not train: small PyTorch CNNs on the digits,
trained one at a time by a plain PyTorch loop, each writing its own logits file.

    python examples/pytorch_cnn.py --out=../runs/pytorch_cnn     # logits/model_M.npy, keep.npy, labels.npy
    python experiments/import_logits.py --logits=../runs/pytorch_cnn/logits \
        --keep=../runs/pytorch_cnn/keep.npy --labels=../runs/pytorch_cnn/labels.npy \
        --logdir=exp/pytorch_cnn --description="16 PyTorch CNNs, digits, 2 queries (image, shifted)"
    python experiments/attack.py --logdir=exp/pytorch_cnn --num_targets=16

What a PyTorch loop has to hand over is what any loop does (examples/sklearn_mlp.py): each
model's logits on every example of the audit pool, and which model trained on which example.
Here each model writes logits/model_M.npy as it finishes, [N, Q, C] with Q = 2 queries (the image
and the image shifted one pixel, the augmentation it trained with), which is how a training
script run once per model (a job array) would leave them; --logits takes the folder. The
images are NCHW, as PyTorch has them: the logits are what lira reads, so no transpose is needed.

torch is not one of lira's requirements: `pip install -r requirements-bench.txt` (which
`./run.sh test` installs; README, "Dependencies").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from lira.run import masks


def make_model(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )  # fmt: skip


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Images [B, 1, H, W] moved by (dx, dy) pixels, zeros shifted in."""
    return torch.roll(torch.nn.functional.pad(x, (1, 1, 1, 1)), (dy, dx), (2, 3))[:, :, 1:-1, 1:-1]


def queries(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """float32 [N, 2, C]: the logits on each image and on it shifted one pixel right."""
    model.eval()
    with torch.no_grad():
        return torch.stack([model(x), model(shift(x, 1, 0))], 1).numpy()


def train_one(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """One model, SGD with momentum on (x, y) with random one-pixel shifts, batches of 64."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
            loss = nn.functional.cross_entropy(model(shift(x[batch], dx, dy)), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def train_models(out: Path, num_models: int, epochs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Trains num_models CNNs, each on its random half of the 1,797 digits, writing
    out/logits/model_M.npy as each finishes; returns (keep bool [M, N], labels int [N])."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)  # NCHW
    y = torch.tensor(labels)
    keep = masks.make_keep(num_models, len(y), 0.5, seed)
    (out / "logits").mkdir(parents=True, exist_ok=True)
    for m in range(num_models):
        members = torch.from_numpy(np.flatnonzero(keep[m]))
        model = train_one(x[members], y[members], epochs, seed * 1000 + m)
        np.save(out / "logits" / f"model_{m}.npy", queries(model, x))
    return keep, labels.astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Folder for logits/, keep.npy, labels.npy.")
    parser.add_argument("--num_models", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    keep, labels = train_models(out, args.num_models, args.epochs)
    np.save(out / "keep.npy", keep)
    np.save(out / "labels.npy", labels)
    print(f"Wrote {len(keep)} models' logits to {out / 'logits'}, keep {keep.shape}, labels {labels.shape}.")


if __name__ == "__main__":
    main()
