"""Inspection metrics from class probabilities: accuracy, macro-F1, per-class P/R, OK/NG AUROC,
escape and false-reject rates at a threshold, threshold selection, heatmap IoU."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["classification_metrics", "heatmap_iou", "ng_scores", "pick_threshold"]


def ng_scores(probs: np.ndarray, ok_index: int) -> np.ndarray:
    """The OK/NG score of each image: 1 - p(OK). NG when score >= threshold."""
    return 1.0 - probs[:, ok_index]


def pick_threshold(scores: np.ndarray, is_ng: np.ndarray, target_escape: float) -> float:
    """The highest threshold whose escape rate (NG scored below it) stays <= ``target_escape``.

    Highest = fewest false rejects for that escape budget. With no NG image, 0.5."""
    ng = np.sort(scores[is_ng])
    if ng.size == 0:
        return 0.5
    allowed = int(np.floor(target_escape * ng.size))  # NG images that may pass
    # threshold just above the `allowed` lowest NG scores passes exactly those
    return float(np.nextafter(ng[allowed], -np.inf)) if allowed < ng.size else 1.0


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: List[str], ok_class: str,
                           threshold: float = 0.5) -> Dict:
    """All figures of one split. ``probs`` N x C, ``labels`` N class indices."""
    ok = classes.index(ok_class)
    pred = probs.argmax(1)
    idx = list(range(len(classes)))
    p, r, f, support = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    scores = ng_scores(probs, ok)
    is_ng = labels != ok
    called_ng = scores >= threshold
    n_ng, n_ok = int(is_ng.sum()), int((~is_ng).sum())
    auroc: Optional[float] = float(roc_auc_score(is_ng, scores)) if 0 < n_ng < len(labels) else None
    return {
        "images": len(labels),
        "accuracy": float(accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "ok_ng_auroc": auroc,
        "threshold": float(threshold),
        "escape_rate": float((is_ng & ~called_ng).sum() / n_ng) if n_ng else 0.0,
        "false_reject_rate": float((~is_ng & called_ng).sum() / n_ok) if n_ok else 0.0,
        "confusion": confusion_matrix(labels, pred, labels=idx).tolist(),
    }


def heatmap_iou(heat_probs: np.ndarray, masks: np.ndarray, has_mask: np.ndarray, is_ng: np.ndarray
                ) -> Optional[float]:
    """Mean IoU of (heatmap > 0.5) with the mask over the NG images that have a mask (None if none)."""
    sel = has_mask & is_ng
    if not sel.any():
        return None
    pred, true = heat_probs[sel] > 0.5, masks[sel] > 0.5
    inter = (pred & true).reshape(sel.sum(), -1).sum(1)
    union = (pred | true).reshape(sel.sum(), -1).sum(1)
    return float(np.mean(inter / np.maximum(union, 1)))
