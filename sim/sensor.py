"""The camera's sensor: colour, read noise and shot noise, quantisation to 8 bits.

The lens and the lamps (gradient, vignetting, gain: the exposure) are the scene's
:class:`~lineguard.sim.scene.Lighting`; the optics are sharp (no blur).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from .maps import F32, Roi, noise
from .scene import Scene

__all__ = ["Sensor", "Tint"]

Tint = Tuple[Roi, np.ndarray, np.ndarray]  # region, its opacity map, RGB tint


@dataclass
class Sensor:
    """One exposure's noise: a fixed unit-normal draw ``z`` (shared by a part and its defect-free
    reference), the read noise (gray levels) and the shot noise (variance per gray level)."""

    z: np.ndarray
    read: float
    shot: float

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int, channels: int, scale: float) -> Sensor:
        """The noise of one ``size`` px exposure; ``scale`` multiplies the noise std (0 = noise-free)."""
        z = noise(rng, (size, size, 3) if channels == 3 else (size, size))
        read = rng.uniform(0.6, 2.5) * scale
        shot = rng.uniform(0.01, 0.06) * scale ** 2
        return cls(z, read, shot)

    def expose(self, lum: np.ndarray, sc: Scene, tint: Optional[Tint], channels: int) -> np.ndarray:
        """The 8-bit image of the luminance ``lum``: colour, then read + shot noise from ``z``, then rounding
        and saturation."""
        sig = lum[..., None] * _tint_map(sc, tint) if channels == 3 else lum
        if self.read > 0 or self.shot > 0:
            std = cv2.sqrt(sig * F32(self.shot) + F32(self.read * self.read))
            std *= self.z
            return cv2.add(sig, std, dtype=cv2.CV_8U)
        return cv2.add(sig, F32(0) * sig, dtype=cv2.CV_8U)


def _tint_map(sc: Scene, tint: Optional[Tint]) -> np.ndarray:
    """The RGB tint of every pixel: the product's and the background's, and a defect's over its region."""
    face, bg = sc.product.tint, sc.backdrop.tint
    if sc.product.edge:
        tmap = sc.product.alpha[..., None] * (face - bg)
        tmap += bg
    else:
        tmap = np.broadcast_to(face, (sc.size, sc.size, 3))
    if tint is not None:
        (y0, y1, x0, x1), a, col = tint
        tmap = tmap.copy()
        tmap[y0:y1, x0:x1] *= 1 + a[..., None] * (col - 1)
    return tmap
