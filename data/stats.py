"""Figures about a data set: counts by class, split and source; image sizes; pixel statistics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from pydantic import BaseModel

from .format import Dataset, DatasetError
from .imaging import ImageFileError, read_image

__all__ = ["DatasetStats", "dataset_stats"]


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
        sampled=len(pick), rejects=len(ds.rejects))
