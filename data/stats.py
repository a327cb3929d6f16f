"""Figures about a data set: counts by class, split and source; image sizes; pixel statistics; the defects'
thickness and the input size that keeps them visible.

Thickness of a defect: for a mask, the widest inscribed disc (twice the largest distance from a defect pixel to
the background, less half a pixel: within 0.5 px of a band's width, so a 2-px crack is 1.5 px however long it is);
for a box, its shorter side. The suggested input
keeps the images' median aspect ratio (sides multiples of 32) at about 224 x 224 pixels, grown until the thinnest
defects (5th percentile) cover :data:`MIN_DEFECT_PX` input pixels, but never beyond the images' own size or
:data:`MAX_SIDE`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Union

import cv2
import numpy as np
from pydantic import BaseModel

from .format import Dataset, DatasetError, Record
from .imaging import ImageFileError, binarize_mask, read_image

__all__ = ["MIN_DEFECT_PX", "DatasetStats", "InputAdvice", "dataset_stats", "input_advice"]

MIN_DEFECT_PX = 3.0  # a defect thinner than this at the input size is at risk of vanishing in the first stride
MAX_SIDE = 1024
DEFAULT = (224, 224)


class InputAdvice(BaseModel):
    """The input size for ``lineguard train --img-size HxW --fit F`` and why."""

    defect_px: Optional[Dict[str, float]]  # thickness in image pixels: min / p5 / median, over the defects measured
    defects_measured: int
    size: Tuple[int, int]  # (H, W), multiples of 32
    fit: Literal["stretch", "pad"]  # pad when the images' aspect ratios differ by more than 10 %
    thinnest_at_size: Optional[float]  # the p5 thickness in input pixels at ``size``
    thinnest_at_default: Optional[float]  # ... at the default 224 x 224
    warning: Optional[str]


class DatasetStats(BaseModel):
    root: str
    images: int
    ok_class: Optional[str]  # None: a defect-type set
    classes: Dict[str, int]
    masks: Dict[str, int]  # class -> images with a mask
    splits: Dict[str, Dict[str, int]]  # split (or "none") -> class -> images
    sources: Dict[str, int]
    origins: Dict[str, int]
    width: Dict[str, float]  # min / median / max
    height: Dict[str, float]
    pixel_mean: float  # over a sample of images, 0..1
    pixel_std: float
    sampled: int
    rejects: int
    input: InputAdvice


def _spread(values: np.ndarray) -> Dict[str, float]:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def dataset_stats(root: Union[str, Path], sample: int = 200, seed: int = 0) -> DatasetStats:
    """Counts from the manifest, pixel mean/std from ``sample`` images drawn with ``seed``."""
    ds = Dataset.load(root)
    recs = ds.records
    splits: Dict[str, Dict[str, int]] = {}
    present = {r.split or "none" for r in recs}
    for name in [s for s in ("train", "val", "test", "none") if s in present]:
        splits[name] = ds.counts([r for r in recs if (r.split or "none") == name])
    masks = ds.counts([r for r in recs if r.mask is not None])
    pick = np.random.default_rng(seed).permutation(len(recs))[:sample] if recs else []
    s1 = s2 = n = 0.0
    for i in pick:
        rec = recs[int(i)]
        try:
            px = read_image(ds.path(rec.image))[0].astype(np.float64) / 255.0
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(rec.image)} (record {rec.id}): {e}") from None
        s1, s2, n = s1 + px.sum(), s2 + (px * px).sum(), n + px.size
    mean = s1 / n if n else 0.0
    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0))) if n else 0.0
    widths = np.array([r.width for r in recs] or [0])
    heights = np.array([r.height for r in recs] or [0])
    return DatasetStats(
        root=str(ds.root), images=len(recs), ok_class=ds.classes.ok_class, classes=ds.counts(), masks=masks,
        splits=splits, sources=dict(Counter(r.source for r in recs)),
        origins=dict(Counter(f"{r.origin.kind}:{r.origin.name}@{r.origin.version}" for r in recs)),
        width=_spread(widths), height=_spread(heights), pixel_mean=round(mean, 5), pixel_std=round(std, 5),
        sampled=len(pick), rejects=len(ds.rejects), input=input_advice(ds, sample, seed))


def _thickness(ds: Dataset, rec: Record) -> List[float]:
    """The thickness (image pixels) of each defect of ``rec``: its mask's components, else its boxes."""
    if rec.mask is not None:
        try:
            m = binarize_mask(read_image(ds.path(rec.mask))[0]).astype(np.uint8)
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(rec.mask)} (record {rec.id}): {e}") from None
        n, labels = cv2.connectedComponents(m, connectivity=8)
        if n > 1:
            dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
            return [2.0 * float(dist[labels == j].max()) - 0.5 for j in range(1, n)]
    return [float(min(b.x1 - b.x0, b.y1 - b.y0)) for b in rec.boxes or []]


def _side(x: float) -> int:
    return int(min(MAX_SIDE, max(32, round(x / 32) * 32)))


def input_advice(ds: Dataset, sample: int = 200, seed: int = 0) -> InputAdvice:
    """The input size to train at (see the module docstring), from ``sample`` defect records drawn with ``seed``."""
    recs = [r for r in ds.records if r.label != ds.classes.ok_class and (r.mask is not None or r.boxes)]
    pick = np.random.default_rng(seed).permutation(len(recs))[:sample]
    thick = np.array([t for i in pick for t in _thickness(ds, recs[int(i)]) if t > 0])
    h = float(np.median([r.height for r in ds.records])) if ds.records else float(DEFAULT[0])
    w = float(np.median([r.width for r in ds.records])) if ds.records else float(DEFAULT[1])
    ratios = np.array([r.height / r.width for r in ds.records] or [1.0])
    fit = "stretch" if np.all(np.abs(ratios / np.median(ratios) - 1) <= 0.1) else "pad"
    aspect = h / w
    size = (_side(224 * np.sqrt(aspect)), _side(224 / np.sqrt(aspect)))
    p5 = float(np.percentile(thick, 5)) if thick.size else None

    def at(hw: Tuple[int, int]) -> Optional[float]:
        return None if p5 is None else p5 * min(hw[0] / h, hw[1] / w)

    if p5 is not None and at(size) < MIN_DEFECT_PX:  # grow (not beyond the images' own size) until visible
        grow = min(MIN_DEFECT_PX / at(size), max(h / size[0], w / size[1]), MAX_SIDE / max(size))
        size = (_side(size[0] * grow), _side(size[1] * grow)) if grow > 1 else size
    size = (min(size[0], _side(h + 16)), min(size[1], _side(w + 16)))  # not beyond the images (rounded up to 32)
    warning = None
    if p5 is not None and at(DEFAULT) < MIN_DEFECT_PX:
        warning = (f"at the default 224x224 the thinnest defects (5th percentile {p5:.1f} px thick in "
                   f"{w:.0f}x{h:.0f} images) shrink to {at(DEFAULT):.1f} px: train with --img-size "
                   f"{size[0]}x{size[1]} --fit {fit}")
        if at(size) < MIN_DEFECT_PX:
            warning += f" (even there they are {at(size):.1f} px: the images hold them at {p5:.1f} px)"
    return InputAdvice(
        defect_px=None if p5 is None else {"min": float(thick.min()), "p5": p5, "median": float(np.median(thick))},
        defects_measured=int(thick.size), size=size, fit=fit, thinnest_at_size=at(size),
        thinnest_at_default=at(DEFAULT), warning=warning)
