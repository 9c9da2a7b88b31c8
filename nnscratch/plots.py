"""The run's figures, one function each, written atomically as PNG.

Loss and accuracy curves per epoch (paper Figs. 1-2, 5-6), per-class precision
and recall bars (Figs. 3, 7) and the confusion matrix (Figs. 4, 8).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")   # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path, discarded  # noqa: E402
from .medmnist_info import short_label  # noqa: E402

COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "precision": "#4c72b0", "recall": "#dd8452"}


def _save(fig, path):
    if discarded():
        plt.close(fig)
        return
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def draw_curves(ax, history: list, key: str):
    """Train and validation ``key`` ("loss" or "acc") against the epoch, on ``ax``."""
    epochs = [h["epoch"] for h in history]
    for split in ("train", "val"):
        ax.plot(epochs, [h[f"{split}_{key}"] for h in history], "o-", ms=3, color=COLORS[split],
                label="train" if split == "train" else "validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy" if key == "acc" else "loss")
    if len(epochs) < 20:
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend()


def draw_precision_recall(ax, report: dict, labels: bool = True):
    """Grouped bars: precision and recall of each class (with its support when ``labels``), on ``ax``."""
    per = report["per_class"]
    x = np.arange(len(per))
    for i, key in enumerate(("precision", "recall")):
        bars = ax.bar(x + (i - 0.5) * 0.38, [c[key] for c in per], 0.38, label=key, color=COLORS[key])
        if labels:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    names = [f"{short_label(c['name'])}\n(n={c['support']})" if labels else short_label(c["name"]) for c in per]
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.18)             # room above 1.0 for the legend, clear of the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.legend(loc="upper center", ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def draw_confusion(ax, report: dict, fontsize: int = 8):
    """Confusion matrix on ``ax``: colour = share of the true class (row), text = count; returns the image."""
    cm = np.asarray(report["confusion_matrix"])
    names = [short_label(c["name"]) for c in report["per_class"]]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(names)), names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return im


def curves(history: list, key: str, path, title: str = ""):
    """Train and validation ``key`` ("loss" or "acc") against the epoch, the best validation epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_curves(ax, history, key)
    if key == "acc" and history:
        best = max(history, key=lambda h: h["val_acc"])
        ax.axvline(best["epoch"], color="grey", ls=":", lw=1)
        ax.annotate(f"best val {best['val_acc']:.3f}", (best["epoch"], best["val_acc"]), textcoords="offset points",
                    xytext=(-10, -18), ha="right", fontsize=8, color="grey")
    ax.set_title(title or ("Accuracy" if key == "acc" else "Loss"))
    _save(fig, path)


def per_class_precision_recall(report: dict, path, title: str = ""):
    """Grouped bars: precision and recall of each class, with its support below the name."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(report["per_class"]) + 2), 4.2))
    draw_precision_recall(ax, report)
    ax.set_title(title or "Precision and recall per class")
    _save(fig, path)


def confusion(report: dict, path, title: str = ""):
    """Confusion matrix: colour = share of the true class (row), text = count."""
    size = max(5, 0.7 * len(report["per_class"]) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = draw_confusion(ax, report)
    ax.set_title(title or f"Confusion matrix (accuracy {report['accuracy']:.3f})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    _save(fig, path)
