"""Figures people would rather see than read: training curves, confusion matrix, PR curves."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

from ..files import atomic_path

__all__ = ["plot_confusion", "plot_curves", "plot_pr"]


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (a kill never leaves half a picture) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def plot_curves(history: List[Dict], path: Path) -> None:
    """Train/val loss and val accuracy / macro-F1 / AUROC per epoch."""
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="val loss (EMA)")
    a.set_xlabel("epoch")
    a.legend()
    a.grid(alpha=0.3)
    for key in ("val_accuracy", "val_macro_f1", "val_auroc"):
        b.plot(ep, [h.get(key) if h.get(key) is not None else np.nan for h in history], label=key)
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.01)
    b.legend(loc="lower right")
    b.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(confusion: List[List[int]], classes: List[str], path: Path, title: str) -> None:
    cm = np.asarray(confusion)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_pr(probs: np.ndarray, labels: np.ndarray, classes: List[str], ok_class: Optional[str], path: Path) -> None:
    """One-vs-rest precision/recall per class, and the OK/NG curve (NG score = 1 - p(OK)) where there is an OK
    class."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, c in enumerate(classes):
        if (labels == i).any():
            p, r, _ = precision_recall_curve(labels == i, probs[:, i])
            ax.plot(r, p, label=c, alpha=0.8)
    ok = None if ok_class is None else classes.index(ok_class)
    if ok is not None and 0 < (labels != ok).sum() < len(labels):
        p, r, _ = precision_recall_curve(labels != ok, 1 - probs[:, ok])
        ax.plot(r, p, "k--", lw=2, label="NG vs OK")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
