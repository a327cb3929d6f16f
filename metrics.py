"""Inspection metrics from class probabilities and decisions (numpy only, Python 3.8): accuracy, macro-F1,
per-class precision/recall/F1, confusion matrix, OK/NG AUROC, escape and false-reject rates, threshold
selection, cross-entropy, heatmap IoU.

Every figure matches scikit-learn's (``zero_division=0``: a ratio with nothing to count is 0).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["accuracy", "auroc", "binary_cross_entropy", "bootstrap_ci", "classification_metrics", "confusion",
           "cross_entropy", "escape_rate", "false_reject_rate", "iou", "macro_f1", "mean_iou", "multi_label_figures",
           "ng_scores", "per_class", "pick_threshold"]


def ng_scores(probs: np.ndarray, ok_index: Optional[int], multi_label: bool = False) -> np.ndarray:
    """The OK/NG score of each image: 1 - p(OK); with ``multi_label`` (independent per-class probabilities) the
    highest defect-class probability. NG when score >= threshold. A defect-type model (no OK class,
    ``ok_index`` None) has p(OK) = 0: every image scores 1."""
    if ok_index is None:
        return np.ones(len(probs), dtype=probs.dtype)
    if multi_label:
        defect = np.delete(probs, ok_index, axis=1)
        return defect.max(1) if defect.shape[1] else np.zeros(len(probs), dtype=probs.dtype)
    return 1.0 - probs[:, ok_index]


def multi_label_figures(probs: np.ndarray, targets: np.ndarray, classes: List[str], cut: float = 0.5) -> Dict:
    """Figures of independent per-class probabilities against multi-hot ``targets`` (N x C): per class precision,
    recall, F1 and support of ``probs >= cut``, their macro-F1, and the share of images whose predicted class set
    equals the true one (exact match)."""
    pred, true = probs >= cut, targets > 0.5
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    prec, rec, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    return {"exact_match": float((pred == true).all(1).mean()) if len(probs) else 0.0,
            "macro_f1": float(f1.mean()) if len(f1) else 0.0,
            "per_class": {c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                              "support": int(true[:, i].sum())} for i, c in enumerate(classes)}}


def pick_threshold(scores: np.ndarray, is_ng: np.ndarray, target_escape: float) -> float:
    """The highest threshold whose escape rate (NG scored below it) stays <= ``target_escape``.

    Highest = fewest false rejects for that escape budget. With no NG image, 0.5."""
    ng = np.sort(scores[is_ng])
    if ng.size == 0:
        return 0.5
    allowed = int(np.floor(target_escape * ng.size))  # NG images that may pass
    # threshold just above the `allowed` lowest NG scores passes exactly those
    return float(np.nextafter(ng[allowed], -np.inf)) if allowed < ng.size else 1.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Share of ``pred`` equal to ``labels`` (0 for no image)."""
    return float(np.mean(labels == pred)) if len(labels) else 0.0


def confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * k + np.asarray(pred, np.int64)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def per_class(conf: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1, support) per class of a confusion matrix."""
    tp = np.diag(conf)
    predicted, support = conf.sum(0), conf.sum(1)
    return _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, predicted + support), support


def macro_f1(conf: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 (classes without images count as 0 unless predicted)."""
    return float(per_class(conf)[2].mean())


def auroc(scores: np.ndarray, is_ng: np.ndarray) -> Optional[float]:
    """Area under the OK/NG ROC curve of ``scores`` (higher = more NG): the Mann-Whitney statistic with
    tied scores given their average rank (= scikit-learn's ``roc_auc_score``). None without both kinds."""
    is_ng = np.asarray(is_ng, bool)
    n_ng = int(is_ng.sum())
    n_ok = len(is_ng) - n_ng
    if n_ng == 0 or n_ok == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank of each distinct score's first image
    ranks = (first + (counts + 1) / 2.0)[inverse.ravel()]
    return float((ranks[is_ng].sum() - n_ng * (n_ng + 1) / 2.0) / (n_ng * n_ok))


def escape_rate(is_ng: np.ndarray, called_ng: np.ndarray) -> float:
    """Share of the NG images not called NG (0 without NG images)."""
    return float(_ratio((is_ng & ~called_ng).sum(), is_ng.sum()))


def false_reject_rate(is_ng: np.ndarray, called_ng: np.ndarray) -> float:
    """Share of the OK images called NG (0 without OK images)."""
    return float(_ratio((~is_ng & called_ng).sum(), (~is_ng).sum()))


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class); probabilities below 1e-12 count as 1e-12."""
    p = probs[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.log(np.maximum(p, 1e-12)).mean())


def binary_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over images and classes of -log p(target) for independent per-class probabilities (multi-label);
    probabilities are clipped to 1e-12 .. 1 - 1e-12."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    t = targets.astype(np.float64)
    return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean())


def iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Intersection over union per image of boolean maps (N, ...); 0 where both are empty."""
    n = len(pred)
    inter = (pred & true).reshape(n, -1).sum(1)
    union = (pred | true).reshape(n, -1).sum(1)
    return _ratio(inter, union)


def mean_iou(ious: np.ndarray, selected: np.ndarray) -> Optional[float]:
    """Mean of the per-image ``ious`` over the ``selected`` images (None if none is)."""
    return float(ious[selected].mean()) if selected.any() else None


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: List[str], ok_class: Optional[str],
                           threshold: float = 0.5, called_ng: Optional[np.ndarray] = None,
                           targets: Optional[np.ndarray] = None) -> Dict:
    """All figures of one split. ``probs`` N x C, ``labels`` N class indices; ``called_ng`` the images the
    decision rule stopped (default: NG score >= ``threshold``, see :func:`ng_scores`). Without an OK class (a
    defect-type model) the OK/NG figures (AUROC, threshold, escape and false-reject rates) are None: not
    applicable. ``targets`` (N x C multi-hot) marks a multi-label model: per-class figures, macro-F1 and
    ``exact_match`` come from :func:`multi_label_figures`; accuracy and the confusion matrix stay those of the
    top class against each image's main label."""
    pred = probs.argmax(1)
    conf = confusion(labels, pred, len(classes))
    p, r, f, support = per_class(conf)
    out = {
        "images": len(labels),
        "task": "ok-ng" if ok_class is not None else "defect-type",
        "multi_label": targets is not None,
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(conf),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "exact_match": None,
        "ok_ng_auroc": None, "threshold": None, "escape_rate": None, "false_reject_rate": None,
        "confusion": conf.tolist(),
    }
    if targets is not None:
        out.update(multi_label_figures(probs, targets, classes))
    if ok_class is not None:
        ok = classes.index(ok_class)
        scores = ng_scores(probs, ok, multi_label=targets is not None)
        is_ng = labels != ok
        called = scores >= threshold if called_ng is None else np.asarray(called_ng, bool)
        out.update(ok_ng_auroc=auroc(scores, is_ng), threshold=float(threshold),
                   escape_rate=escape_rate(is_ng, called), false_reject_rate=false_reject_rate(is_ng, called))
    return out


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, groups: Optional[np.ndarray] = None, reps: int = 2000,
                 seed: int = 0, level: float = 0.95) -> Tuple[float, float, float]:
    """``stat`` of the images ``0..n-1`` and its percentile bootstrap interval: ``stat`` takes an index array (a
    resample, with repeats) and returns a number, e.g. the difference of two models' accuracy on the same images
    (a paired comparison). ``groups`` (N,): resample within each group (the folds of a cross-validation), so every
    resample keeps their sizes."""
    rng = np.random.default_rng(seed)
    members = [np.arange(n)] if groups is None else [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws = np.array([stat(np.concatenate([rng.choice(m, len(m)) for m in members])) for _ in range(reps)])
    tail = (1 - level) / 2 * 100
    return float(stat(np.arange(n))), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))
