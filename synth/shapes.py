"""How varied and how real the defect shapes of a generator are, per class, from masks alone.

    report = shape_report({"Crack": real_masks}, {"Crack": generated_masks})
    # {"Crack": {"orientation_tv": 0.41, "elongation_w1": 0.12, "area_w1": 0.03, "iou_real": 0.20, "iou_fake": 0.53,
    #            "real": 38, "fake": 64}}

Per mask (a boolean (H, W) array): its orientation (the principal axis of its pixels, degrees in [0, 180)),
its elongation (1 - minor / major axis: 0 a disc, 1 a line) and its area (share of the square). Per class:
the total-variation distance between the real and the generated orientation histograms (12 bins of 15
degrees: 0 the same, 1 disjoint), the Wasserstein-1 distance of elongation and of area, and the diversity of
each set as the mean IoU of pairs of its masks (a collapsed generator repeats one shape: high IoU; real
Break crops pair at about 0.2). Masks are compared at one size: resize them to a common square first.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = ["ORIENTATION_BINS", "mask_shapes", "pairwise_iou", "shape_report", "split_by_class"]

ORIENTATION_BINS = 12
MAX_PAIRS_OF = 64  # masks per set whose pairs are compared (64 * 63 / 2 pairs)


def mask_shapes(masks: np.ndarray) -> Dict[str, np.ndarray]:
    """Orientation (degrees, [0, 180)), elongation ([0, 1]) and area share of each non-empty mask of
    ``masks`` (N, H, W); empty masks are left out."""
    m = np.asarray(masks, bool)
    m = m[m.reshape(len(m), -1).any(1)] if len(m) else m
    n, h, w = m.shape
    if n == 0:
        return {"orientation": np.zeros(0), "elongation": np.zeros(0), "area": np.zeros(0)}
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    area = m.reshape(n, -1).sum(1).astype(np.float64)
    cy = (m * ys).reshape(n, -1).sum(1) / area
    cx = (m * xs).reshape(n, -1).sum(1) / area
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    syy = (m * dy * dy).reshape(n, -1).sum(1) / area
    sxx = (m * dx * dx).reshape(n, -1).sum(1) / area
    sxy = (m * dx * dy).reshape(n, -1).sum(1) / area
    half = np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    major, minor = (sxx + syy) / 2 + half, np.maximum((sxx + syy) / 2 - half, 0)
    angle = np.degrees(0.5 * np.arctan2(2 * sxy, sxx - syy)) % 180  # of the major axis, image y downwards
    elongation = np.where(major > 0, 1 - np.sqrt(minor / np.maximum(major, 1e-12)), 0.0)
    return {"orientation": angle, "elongation": elongation, "area": area / (h * w)}


def pairwise_iou(masks: np.ndarray, rng: np.random.Generator) -> Optional[float]:
    """Mean IoU over the pairs of up to :data:`MAX_PAIRS_OF` of ``masks`` (N, H, W); None with fewer than 2."""
    m = np.asarray(masks, bool)
    if len(m) > MAX_PAIRS_OF:
        m = m[rng.choice(len(m), MAX_PAIRS_OF, replace=False)]
    if len(m) < 2:
        return None
    flat = m.reshape(len(m), -1).astype(np.float64)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    union = sizes[:, None] + sizes[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    upper = np.triu_indices(len(m), 1)
    return float(iou[upper].mean())


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples (the mean gap of their quantile functions)."""
    q = np.linspace(0, 1, 101)
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def _orientation_tv(a: np.ndarray, b: np.ndarray) -> float:
    edges = np.linspace(0, 180, ORIENTATION_BINS + 1)
    ha, hb = (np.histogram(x, edges)[0] / max(len(x), 1) for x in (a, b))
    return float(0.5 * np.abs(ha - hb).sum())


def shape_report(real: Mapping[str, np.ndarray], fake: Mapping[str, np.ndarray], seed: int = 0
                 ) -> Dict[str, Dict[str, Optional[float]]]:
    """Per class both hold: the distances and the two diversities of the module docstring, with the counts
    of non-empty masks compared. Masks of a class must share one size."""
    rng = np.random.default_rng(seed)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for c in sorted(set(real) & set(fake)):
        r, f = np.asarray(real[c], bool), np.asarray(fake[c], bool)
        if r.shape[1:] != f.shape[1:]:
            raise ValueError(f"class '{c}': real masks are {r.shape[1:]}, generated {f.shape[1:]}; resize to one size")
        sr, sf = mask_shapes(r), mask_shapes(f)
        if not len(sr["area"]) or not len(sf["area"]):
            continue
        out[c] = {"orientation_tv": _orientation_tv(sr["orientation"], sf["orientation"]),
                  "elongation_w1": _w1(sr["elongation"], sf["elongation"]), "area_w1": _w1(sr["area"], sf["area"]),
                  "iou_real": pairwise_iou(r, rng), "iou_fake": pairwise_iou(f, rng),
                  "real": len(sr["area"]), "fake": len(sf["area"])}
    return out


def split_by_class(masks: np.ndarray, labels: np.ndarray, classes: Tuple[str, ...]) -> Dict[str, np.ndarray]:
    """``{class: its masks}`` of masks (N, H, W) with class indices ``labels`` (N,)."""
    return {c: masks[labels == k] for k, c in enumerate(classes) if (labels == k).any()}
