"""The report's figures. Each function draws one PNG and writes it atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as sk_metrics  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict, path: Path, log_scale: bool
) -> None:
    """One ROC per attack; curves[name] = (fpr, tpr). Log-log when `log_scale`, the view that
    shows the low-FPR regime where membership inference matters (Carlini et al. 2022)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    floor = 1.0
    for name, (fpr, tpr) in curves.items():
        entry = metrics["attacks"].get(name, {})
        at = entry.get("tpr_at_fpr", {}).get("0.001")
        label = f"{name} (AUC={entry.get('auc', float('nan')):.3f}, TPR@0.1%FPR=" + (
            f"{100 * at:.1f}%)" if at is not None else "n/r)"
        )
        ax.plot(fpr, tpr, label=label, lw=1.3)
        positive = fpr[fpr > 0]
        floor = min(floor, positive.min() if positive.size else 1.0)
    grid = np.logspace(np.log10(floor), 0, 100) if log_scale else np.linspace(0, 1, 100)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("Membership inference ROC" + (" (log scale)" if log_scale else ""))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def score_histograms(pooled: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """IN vs OUT score distributions per attack; pooled[name] = (scores [n], is_member [n])."""
    names = list(pooled)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        scores, member = pooled[name]
        finite = np.isfinite(scores)
        low, high = np.percentile(scores[finite], [0.5, 99.5]) if finite.any() else (0, 1)
        bins = np.linspace(low, high if high > low else low + 1, 50)
        ax.hist(np.clip(scores[finite & ~member], low, high), bins, alpha=0.6, density=True, label="OUT")
        ax.hist(np.clip(scores[finite & member], low, high), bins, alpha=0.6, density=True, label="IN")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.suptitle("Attack scores of members (IN) and non-members (OUT)")
    fig.tight_layout()
    save_figure(fig, path)


def per_class_risk(scores: np.ndarray, membership: np.ndarray, labels: np.ndarray, attack: str, path: Path,
                   class_names: list[str] | None = None) -> dict:  # fmt: skip
    """Per-class AUC and TPR at 1% FPR of one attack. scores, membership [T, N]; labels [N].
    Returns {class: {"auc", "tpr_at_1%fpr"}}."""
    classes = np.unique(labels)
    risk = {}
    for c in classes:
        s, m = scores[:, labels == c].ravel(), membership[:, labels == c].ravel()
        if m.all() or not m.any():
            continue
        fpr, tpr, _ = sk_metrics.roc_curve(m, s)
        risk[int(c)] = {"auc": float(sk_metrics.auc(fpr, tpr)), "tpr_at_1%fpr": float(tpr[fpr <= 0.01].max())}
    names = [class_names[c] if class_names else str(c) for c in risk]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(risk) + 2), 3.5))
    x = np.arange(len(risk))
    ax.bar(x - 0.2, [r["auc"] for r in risk.values()], 0.4, label="AUC")
    ax.bar(x + 0.2, [r["tpr_at_1%fpr"] for r in risk.values()], 0.4, label="TPR at 1% FPR")
    ax.axhline(0.5, color="k", lw=0.6, ls="--")
    ax.set_xticks(x, names, rotation=45 if len(risk) > 10 or class_names else 0, fontsize=8)
    ax.set_title(f"Risk per class ({attack})")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return risk


def example_grid(
    images: np.ndarray, most: np.ndarray, least: np.ndarray, captions: dict[int, str], path: Path
) -> None:
    """Two rows of images [N, H, W, C] uint8: the most and the least vulnerable examples."""
    cols = max(len(most), len(least))
    fig, axes = plt.subplots(2, cols, figsize=(1.3 * cols, 3.2), squeeze=False)
    for row, (indices, title) in enumerate([(most, "most vulnerable"), (least, "least vulnerable")]):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(indices):
                image = images[indices[col]]
                ax.imshow(
                    image[..., 0] if image.shape[-1] == 1 else image,
                    cmap="gray" if image.shape[-1] == 1 else None,
                )
                ax.set_title(captions[int(indices[col])], fontsize=6)
        axes[row, 0].text(
            -0.1,
            0.5,
            title,
            transform=axes[row, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    save_figure(fig, path)
