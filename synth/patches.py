"""Defect patches: the one interface between where defects come from and how they are composited.

A :class:`PatchSource` makes defect patches (pixels + mask) of a class; the compositor pastes them on
OK images. The StyleGAN generator, copy-paste of real crops and procedural (Perlin) anomalies are
sources with this same interface, so every comparison (``bench/synth_gain.py``) differs only in it.

    src = CopyPasteSource.from_dataset(ds, split="train")
    patches = src.sample("Crack", 8, np.random.default_rng(0))     # List[Patch]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

__all__ = ["Patch", "PatchSource"]


@dataclass
class Patch:
    """One defect patch: ``image`` uint8 (h, w) or (h, w, 3), ``mask`` uint8 (h, w) in {0, 255} with at
    least one defect pixel, ``label`` the class name."""

    image: np.ndarray
    mask: np.ndarray
    label: str

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.mask.dtype != np.uint8:
            raise ValueError(f"patch of '{self.label}': image and mask must be uint8")
        if self.image.shape[:2] != self.mask.shape or self.mask.ndim != 2:
            raise ValueError(f"patch of '{self.label}': image {self.image.shape} and mask {self.mask.shape} differ")
        if not self.mask.any():
            raise ValueError(f"patch of '{self.label}': empty mask")


class PatchSource(ABC):
    """Makes defect patches of the classes it knows.

    ``method`` (``stylegan``, ``copy-paste``, ``perlin``) and ``version`` (e.g. the generator
    checkpoint's sha256) go into every generated record's provenance."""

    method: str
    version: str

    @property
    @abstractmethod
    def classes(self) -> List[str]:
        """Defect classes this source can make (never the OK class)."""

    @abstractmethod
    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        """``n`` patches of class ``label``, drawn only from ``rng`` (same rng state -> same patches)."""

    def provenance(self) -> Dict[str, str]:
        return {"method": self.method, "version": self.version}
