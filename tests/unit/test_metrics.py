"""Inspection metrics (numpy) against scikit-learn on seeded random inputs, threshold selection, IoU by hand."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lineguard.metrics import (
    auroc,
    bootstrap_ci,
    classification_metrics,
    cross_entropy,
    escape_rate,
    false_reject_rate,
    iou,
    mean_iou,
    ng_scores,
    pick_threshold,
)

CLASSES = ["crack", "stain", "ok"]


def _probs(rng: np.random.Generator, n: int, k: int, levels: int = 0) -> np.ndarray:
    """Random probabilities; ``levels`` > 0 rounds them onto a coarse grid (many tied scores)."""
    p = rng.dirichlet(np.ones(k), n)
    if levels:
        p = np.round(p * levels) / levels + 1e-9
        p /= p.sum(1, keepdims=True)
    return p.astype(np.float32)


def _cases() -> List[tuple]:
    """(probs, labels) covering ties, an absent class, a single class, all OK and all NG."""
    rng = np.random.default_rng(0)
    out = []
    for n, levels in ((50, 0), (200, 4), (7, 2)):
        out.append((_probs(rng, n, 3, levels), rng.integers(0, 3, n)))
    out.append((_probs(rng, 40, 3, 3), rng.choice([0, 2], 40)))  # 'stain' absent
    out.append((_probs(rng, 30, 3), np.full(30, 2)))  # all OK (a single class)
    out.append((_probs(rng, 30, 3, 5), rng.integers(0, 2, 30)))  # all NG
    out.append((_probs(rng, 20, 3), np.zeros(20, np.int64)))  # one defect class only
    return out


@pytest.mark.parametrize("case", range(len(_cases())))
def test_classification_metrics_equal_sklearn(case: int) -> None:
    probs, labels = _cases()[case]
    idx = [0, 1, 2]
    pred = probs.argmax(1)
    threshold = 0.4
    m = classification_metrics(probs, labels, CLASSES, "ok", threshold=threshold)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    assert m["images"] == len(labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, labels=idx, average="macro", zero_division=0),
                                          abs=1e-12)
    for i, c in enumerate(CLASSES):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-12)
        assert got["support"] == s[i]
    assert m["confusion"] == confusion_matrix(labels, pred, labels=idx).tolist()
    scores, is_ng = 1.0 - probs[:, 2], labels != 2
    if 0 < is_ng.sum() < len(labels):
        assert m["ok_ng_auroc"] == pytest.approx(roc_auc_score(is_ng, scores), abs=1e-12)
    else:
        assert m["ok_ng_auroc"] is None
    called = scores >= threshold
    # sklearn's recall of the NG class = 1 - escape rate; of the OK class = 1 - false-reject rate
    escape = 1 - precision_recall_fscore_support(is_ng, called, labels=[True], zero_division=0)[1][0]
    false_reject = 1 - precision_recall_fscore_support(~is_ng, ~called, labels=[True], zero_division=0)[1][0]
    assert m["escape_rate"] == pytest.approx(escape if is_ng.any() else 0.0, abs=1e-12)
    assert m["false_reject_rate"] == pytest.approx(false_reject if (~is_ng).any() else 0.0, abs=1e-12)


def test_auroc_with_many_ties_equals_sklearn() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        is_ng = rng.random(60) < 0.4
        scores = rng.integers(0, 4, 60).astype(np.float64) + is_ng * rng.integers(0, 2, 60)
        assert auroc(scores, is_ng) == pytest.approx(roc_auc_score(is_ng, scores), abs=1e-12)
    assert auroc(np.array([0.3, 0.3]), np.array([True, False])) == 0.5
    assert auroc(np.array([0.1, 0.9]), np.array([True, True])) is None


def test_called_ng_overrides_the_threshold() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]], np.float32)
    labels = np.array([0, 2, 2])
    m = classification_metrics(probs, labels, CLASSES, "ok", threshold=0.5, called_ng=np.array([False, True, False]))
    assert m["escape_rate"] == 1.0 and m["false_reject_rate"] == 0.5
    assert escape_rate(np.array([True, True]), np.array([True, False])) == 0.5
    assert false_reject_rate(np.array([True]), np.array([True])) == 0.0  # no OK image: 0


def test_metrics_by_hand() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7], [0.3, 0.1, 0.6]])
    labels = np.array([0, 1, 2, 2, 0])  # the last crack is called OK: one escape
    m = classification_metrics(probs, labels, CLASSES, "ok", threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["per_class"]["crack"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["ok"]["precision"] == pytest.approx(2 / 3)
    assert m["escape_rate"] == pytest.approx(1 / 3) and m["false_reject_rate"] == 0.0
    assert m["ok_ng_auroc"] == pytest.approx(1.0)  # NG scores .9 .9 .4 all above OK .2 .3
    assert m["confusion"][0] == [1, 0, 1]


def test_cross_entropy_equals_sklearn_log_loss() -> None:
    rng = np.random.default_rng(2)
    probs, labels = _probs(rng, 64, 3).astype(np.float64), rng.integers(0, 3, 64)
    probs /= probs.sum(1, keepdims=True)
    assert cross_entropy(probs, labels) == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-9)
    assert cross_entropy(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


def test_pick_threshold_meets_target() -> None:
    rng = np.random.default_rng(0)
    is_ng = rng.random(1000) < 0.3
    scores = np.where(is_ng, rng.beta(5, 2, 1000), rng.beta(2, 5, 1000))
    for target in (0.0, 0.01, 0.05):
        t = pick_threshold(scores, is_ng, target)
        escapes = (scores[is_ng] < t).mean()
        assert escapes <= target
        assert (scores[is_ng] <= np.nextafter(t, 2)).mean() > target  # any higher threshold misses the target
    assert pick_threshold(scores, np.zeros(1000, bool), 0.01) == 0.5
    assert pick_threshold(np.array([0.2, 0.9]), np.array([True, False]), 1.0) == 1.0


def test_ng_scores_and_iou_by_hand() -> None:
    assert np.allclose(ng_scores(np.array([[0.2, 0.8]]), 1), [0.2])
    pred = np.zeros((3, 4, 4), bool)
    pred[:, :2, :2] = True  # 4 cells each
    true = np.zeros((3, 4, 4), bool)
    true[0, :2, :] = True  # 8 cells, 4 shared: 4/8
    true[1, 2:, 2:] = True  # disjoint: 0/8
    got = iou(pred, true)
    assert got.tolist() == [0.5, 0.0, 0.0]  # the third: mask empty, 0/4
    assert iou(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool)).tolist() == [0.0]  # both empty: 0
    assert mean_iou(got, np.array([True, True, False])) == pytest.approx(0.25)
    assert mean_iou(got, np.zeros(3, bool)) is None


def test_paired_bootstrap_of_an_accuracy_difference() -> None:
    """Two models on the same 200 images: B right on 10 images where A is wrong, the same elsewhere."""
    a = np.ones(200, bool)
    a[:20] = False  # A wrong on 20
    b = a.copy()
    b[:10] = True  # B fixes 10 of them
    folds = np.arange(200) % 5

    def delta(idx: np.ndarray) -> float:
        return float(b[idx].mean() - a[idx].mean())

    value, lo, hi = bootstrap_ci(delta, 200, groups=folds, reps=1000, seed=0)
    assert value == pytest.approx(0.05)
    # the difference only moves where B and A differ: 10 discordant images of 200 -> sd ~ sqrt(10 x 0.95) / 200
    assert 0.015 < lo < 0.035 and 0.065 < hi < 0.09  # about 0.05 +- 1.96 x 0.0154: a win beyond noise
    same, lo0, hi0 = bootstrap_ci(lambda i: float(a[i].mean() - a[i].mean()), 200, reps=200)
    assert (same, lo0, hi0) == (0.0, 0.0, 0.0)
    # resampling within folds keeps every fold's size
    seen = []
    bootstrap_ci(lambda i: seen.append(np.bincount(folds[i], minlength=5)) or 0.0, 200, groups=folds, reps=5)
    assert all((c == 40).all() for c in seen)
