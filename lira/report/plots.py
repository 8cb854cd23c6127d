"""The report's figures. Each function draws one PNG and writes it atomically.

Figures are built on `matplotlib.figure.Figure` (the Agg canvas, no pyplot), so importing this
module never switches the backend of a notebook that also plots interactively, and drawing
needs no display. Every function takes arrays and labels only; what to plot is decided in
lira.report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lira.run import layout

LINE_STYLES = ("-", "--", ":", "-.")


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Writes `fig` as a PNG through layout.atomic_write (a temporary name beside `path`, then a
    rename), so a killed run never leaves half an image and the file honours the umask."""
    layout.atomic_write(
        Path(path), lambda f: fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png"), "wb"
    )


def _style(index: int) -> dict:
    """Colour and line style of curve `index`: ten colours, then the next line style."""
    return {"color": f"C{index % 10}", "linestyle": LINE_STYLES[(index // 10) % len(LINE_STYLES)]}


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, str], path: Path,
               log_scale: bool) -> None:  # fmt: skip
    """One ROC per attack; curves[name] = (fpr, tpr), labels[name] its legend entry.

    The log-log view shows the low-FPR regime where membership inference matters (Carlini et
    al. 2022); its axes start at the smallest non-zero FPR of any curve (1 / #non-members), the
    lowest level the data can resolve.
    """
    fig = Figure(figsize=(5.8, 5.2))
    ax = fig.subplots()
    floor = 1.0
    for index, (name, (fpr, tpr)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, label=labels.get(name, name), lw=1.3, **_style(index))
        positive = fpr[fpr > 0]
        floor = min(floor, positive.min() if positive.size else 1.0)
    grid = np.logspace(np.log10(floor), 0, 100) if log_scale else np.linspace(0, 1, 100)
    ax.plot(grid, grid, color="k", ls="--", lw=0.8, label="chance")
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1)
    else:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("Membership inference ROC" + (" (log scale)" if log_scale else ""))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def score_histograms(pooled: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 60,
                     xlabel: str = "score (larger = more likely member)",
                     title: str = "Attack scores of members (IN) and non-members (OUT), all targets pooled") -> None:  # fmt: skip
    """IN vs OUT densities per panel (an attack's scores, or a layer's gradient norms);
    pooled[name] = (values [n], is_member [n]).

    Scores outside the 0.5-99.5 percentiles are clipped into the end bins, so one extreme score
    cannot squash the rest of a panel; the counts stay complete.
    """
    names = list(pooled)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax, name in zip(axes.flat, names):
        scores, member = pooled[name]
        finite = np.isfinite(scores)
        low, high = np.percentile(scores[finite], [0.5, 99.5]) if finite.any() else (0.0, 1.0)
        high = high if high > low else low + 1.0
        edges = np.linspace(low, high, bins + 1)
        for subset, label, colour in ((~member, "OUT (non-members)", "C0"), (member, "IN (members)", "C1")):
            values = np.clip(scores[finite & subset], low, high)
            if values.size:
                density, _ = np.histogram(values, edges, density=True)
                ax.stairs(density, edges, fill=True, alpha=0.5, color=colour, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    save_figure(fig, path)


def per_class_risk(risk: dict, attack: str, path: Path, class_names: list[str] | None = None) -> None:
    """Draws lira.metrics.per_class_risk's result: per-class TPR and FPR at one threshold, and
    per-class AUC, of one attack."""
    level = risk["level"]
    risk = {c: r for c, r in risk.items() if c != "level"}
    names = [class_names[c] if class_names else str(c) for c in risk]
    x = np.arange(len(risk))
    fig = Figure(figsize=(min(14.0, max(5.5, 0.45 * len(risk) + 2)), 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(x, [100 * r["tpr"] for r in risk.values()], 0.7, color="C3", label="TPR (members caught)")
    top.plot(x, [100 * r["fpr"] for r in risk.values()], "ko", ms=3, label="FPR (non-members flagged)")
    top.axhline(100 * level, color="k", lw=0.6, ls=":", label=f"overall FPR {100 * level:g}%")
    top.set_ylabel("% at one threshold")
    top.set_title(
        f"Risk per class ({attack}): threshold at {100 * level:g}% FPR over all classes", fontsize=10
    )
    tallest = max([100 * max(r["tpr"], r["fpr"]) for r in risk.values()] + [100 * level])
    top.set_ylim(0, 1.3 * tallest)  # headroom for the legend above the bars
    top.legend(fontsize=7, ncols=3, loc="upper center")
    aucs = [r["auc"] for r in risk.values()]
    bottom.bar(x, aucs, 0.7, color="C0")
    bottom.axhline(0.5, color="k", lw=0.6, ls="--")
    bottom.set_ylim(min(0.45, min(aucs, default=0.5) - 0.02), min(1.0, max(aucs, default=0.5) + 0.05))
    bottom.set_ylabel("AUC within class")
    step = max(1, len(risk) // 30)  # at most ~30 tick labels (CIFAR-100 has 100 classes)
    bottom.set_xticks(x[::step], names[::step], rotation=45 if class_names or len(risk) > 10 else 0,
                      ha="right" if class_names else "center", fontsize=8)  # fmt: skip
    bottom.set_xlabel("class")
    save_figure(fig, path)


def example_grid(images: np.ndarray, most: np.ndarray, least: np.ndarray, captions: dict[int, str],
                 path: Path) -> None:  # fmt: skip
    """Two rows of images uint8 [N, H, W, C] (or [N, H, W]): the most and the least vulnerable examples.

    most, least: example indices, in display order; captions[j]: the text over example j.
    """
    cols = max(len(most), len(least), 1)
    fig = Figure(figsize=(1.3 * cols + 0.6, 3.4))
    axes = fig.subplots(2, cols, squeeze=False)
    for row, (indices, title) in enumerate([(most, "most vulnerable"), (least, "least vulnerable")]):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(indices):
                image = images[indices[col]]
                grey = image.ndim == 2 or image.shape[-1] == 1
                ax.imshow(
                    image.reshape(image.shape[:2]) if grey else image,
                    cmap="gray" if grey else None,
                    vmin=0,
                    vmax=255,
                )
                ax.set_title(captions[int(indices[col])], fontsize=6)
        axes[row, 0].text(-0.1, 0.5, title, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=8)  # fmt: skip
    save_figure(fig, path)
