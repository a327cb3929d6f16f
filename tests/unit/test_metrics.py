"""Inspection metrics and threshold selection on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.metrics import classification_metrics, heatmap_iou, ng_scores, pick_threshold

CLASSES = ["crack", "stain", "ok"]


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


def test_pick_threshold_meets_target() -> None:
    rng = np.random.default_rng(0)
    is_ng = rng.random(1000) < 0.3
    scores = np.where(is_ng, rng.beta(5, 2, 1000), rng.beta(2, 5, 1000))
    for target in (0.0, 0.01, 0.05):
        t = pick_threshold(scores, is_ng, target)
        escapes = (scores[is_ng] < t).mean()
        assert escapes <= target
        assert (scores[is_ng] <= np.nextafter(t, 2)).mean() > target  # any higher threshold misses the target


def test_ng_scores_and_iou() -> None:
    assert np.allclose(ng_scores(np.array([[0.2, 0.8]]), 1), [0.2])
    heat = np.zeros((2, 4, 4))
    heat[:, :2, :2] = 0.9
    masks = np.zeros((2, 4, 4))
    masks[0, :2, :] = 1  # IoU 4/8
    assert heatmap_iou(heat, masks, np.array([True, False]), np.array([True, True])) == pytest.approx(0.5)
    assert heatmap_iou(heat, masks, np.array([False, False]), np.array([True, True])) is None
