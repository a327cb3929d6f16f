"""The near-copy filter of generated sets: a patch whose downscaled (``size`` squared), mean-removed, unit-norm
pixels have cosine similarity >= ``threshold`` with a real train crop of its class is a near copy.

    index = NearCopyIndex.from_dataset(ds, ["scratch", "dent"], NearCopyConfig())
    index.is_near(patch)
"""

from __future__ import annotations

from typing import Dict, Sequence

import cv2
import numpy as np
from pydantic import Field

from ..config import StrictModel
from ..data.format import Dataset
from .crops import defect_crops
from .patches import Patch

__all__ = ["NearCopyConfig", "NearCopyIndex"]

CROP_SIZE = 64  # real crops for the index are cut at this size, then downscaled


class NearCopyConfig(StrictModel):
    """The near-copy filter (see the module docstring)."""

    enabled: bool = True
    size: int = Field(16, ge=4, le=64, description="side of the downscaled signature")
    threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity counted as a copy")
    redraws: int = Field(50, ge=1, le=10_000, description="patch draws per image before giving up")


def _signature(image: np.ndarray, size: int) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    v = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-6 else v


class NearCopyIndex:
    """Signatures of the real train crops, per class; :meth:`similarity` of a patch to its closest one."""

    def __init__(self, images: Dict[str, Sequence[np.ndarray]], cfg: NearCopyConfig) -> None:
        self.cfg = cfg
        dim = cfg.size * cfg.size
        self.signatures = {c: (np.stack([_signature(x, cfg.size) for x in v]) if len(v) else np.zeros((0, dim),
                               np.float32)) for c, v in images.items()}

    @classmethod
    def from_dataset(cls, ds: Dataset, classes: Sequence[str], cfg: NearCopyConfig) -> NearCopyIndex:
        crops, _ = defect_crops(ds, ds.split("train"), size=CROP_SIZE)
        return cls({c: [x.image for x in crops if x.label == c] for c in classes}, cfg)

    def similarity(self, patch: Patch) -> float:
        sig = self.signatures.get(patch.label)
        if sig is None or not len(sig):
            return 0.0
        return float((sig @ _signature(patch.image, self.cfg.size)).max())

    def is_near(self, patch: Patch) -> bool:
        return self.similarity(patch) >= self.cfg.threshold
