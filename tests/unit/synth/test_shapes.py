"""Mask shape statistics: orientation, elongation, area, pairwise-IoU diversity, and the per-class report."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lineguard.synth.shapes import mask_shapes, pairwise_iou, shape_report, split_by_class


def _bars(angles, length: int = 40, thick: int = 3, size: int = 64, shift: int = 0) -> np.ndarray:
    out = []
    for a in angles:
        m = np.zeros((size, size), np.uint8)
        dx, dy = np.cos(np.radians(a)) * length / 2, np.sin(np.radians(a)) * length / 2
        c = size / 2 + shift
        cv2.line(m, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1, thick)
        out.append(m.astype(bool))
    return np.stack(out)


def test_orientation_elongation_and_area_of_bars_and_discs() -> None:
    s = mask_shapes(_bars([0, 45, 90, 135]))
    assert s["orientation"] == pytest.approx([0, 45, 90, 135], abs=3)  # image y downwards: 45 runs down-right
    assert (s["elongation"] > 0.85).all()
    disc = np.zeros((1, 64, 64), np.uint8)
    cv2.circle(disc[0], (32, 32), 12, 1, -1)
    d = mask_shapes(disc.astype(bool))
    assert d["elongation"][0] < 0.05 and d["area"][0] == pytest.approx(np.pi * 12 ** 2 / 64 ** 2, rel=0.05)
    assert len(mask_shapes(np.zeros((3, 8, 8), bool))["area"]) == 0  # empty masks are left out


def test_pairwise_iou_is_one_for_a_repeated_shape_and_low_for_varied_ones() -> None:
    rng = np.random.default_rng(0)
    same = _bars([30] * 10)
    varied = _bars(np.linspace(0, 170, 10))
    assert pairwise_iou(same, rng) == pytest.approx(1.0)
    assert pairwise_iou(varied, rng) < 0.2
    assert pairwise_iou(same[:1], rng) is None


def test_report_tells_a_collapsed_or_turned_generator_from_a_faithful_one() -> None:
    angles = np.random.default_rng(1).uniform(80, 100, 40)  # real: near-vertical, varied position
    real = {"Crack": np.concatenate([_bars(angles[:20], shift=-6), _bars(angles[20:], shift=6)])}
    faithful = {"Crack": _bars(np.random.default_rng(2).uniform(80, 100, 30), shift=3)}
    turned = {"Crack": _bars(np.random.default_rng(3).uniform(-10, 10, 30) % 180)}
    collapsed = {"Crack": _bars([90] * 30)}
    good, bad, one = (shape_report(real, f)["Crack"] for f in (faithful, turned, collapsed))
    assert good["orientation_tv"] < 0.35 and bad["orientation_tv"] > 0.9
    assert one["iou_fake"] == pytest.approx(1.0) and one["iou_fake"] > 2 * one["iou_real"]
    assert good["real"] == 40 and good["fake"] == 30
    assert shape_report(real, {"Other": collapsed["Crack"]}) == {}  # only classes both hold
    with pytest.raises(ValueError, match="resize to one size"):
        shape_report(real, {"Crack": np.zeros((2, 32, 32), bool)})


def test_split_by_class() -> None:
    masks = np.zeros((4, 8, 8), bool)
    got = split_by_class(masks, np.array([0, 1, 1, 0]), ("a", "b", "c"))
    assert sorted(got) == ["a", "b"] and len(got["b"]) == 2
