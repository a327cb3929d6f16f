"""Per-pixel map helpers of the simulator: coordinate grids, fast noise fields, clamps, regions.

Every function is a pure function of its arguments (and of the numbers it draws from the passed
generator, in a fixed order): a render never depends on the process's state.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from ..data.imaging import resize

__all__ = ["F32", "LOW", "Roi", "grids", "low_grid", "magnitude", "max0", "min0", "noise", "pick", "roi_around",
           "smooth_noise", "up"]

F32 = np.float32
LOW = 64  # side of the grid on which smooth fields (light, reflections, mottling) are computed
Roi = Tuple[int, int, int, int]  # y0, y1, x0, x1 (exclusive)
T = TypeVar("T")
_ALIGN = 64  # bytes


@lru_cache(maxsize=4)
def grids(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates (read-only, cached per size)."""
    ax = np.arange(size, dtype=F32)
    xx, yy = np.meshgrid(ax, ax)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


@lru_cache(maxsize=1)
def low_grid() -> Tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1] of the low-resolution grid, as cv2.resize maps it onto the image."""
    ax = (np.arange(LOW, dtype=F32) + F32(0.5)) * F32(2 / LOW) - F32(1)
    xn, yn = np.meshgrid(ax, ax)
    xn.setflags(write=False)
    yn.setflags(write=False)
    return xn, yn


def max0(a: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """max(a, 0) for float32 (cv2.threshold: several times faster than np.maximum with a scalar)."""
    return cv2.threshold(a, 0, 0, cv2.THRESH_TOZERO, dst=out)[1]


def min0(a: np.ndarray) -> np.ndarray:
    """min(a, 0) for float32."""
    return cv2.threshold(a, 0, 0, cv2.THRESH_TRUNC)[1]


def magnitude(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sqrt(x² + y²) for float32 maps. OpenCV's result depends on where its output buffer starts (its SIMD
    paths round differently), and a new array starts wherever the heap has room: the output is put on a
    64-byte boundary, so that the result depends on ``x`` and ``y`` alone."""
    buf = np.empty(x.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start:start + x.nbytes].view(F32).reshape(x.shape)
    return cv2.magnitude(x, y, out)


def up(small: np.ndarray, size: int) -> np.ndarray:
    """A small map upsampled (linearly) to ``size`` x ``size``."""
    return resize(small, (size, size))


@lru_cache(maxsize=1)
def _gauss_lut() -> np.ndarray:
    q = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float64)
    return (q / q.std()).astype(F32)


def noise(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Unit normal noise quantised to 256 levels: random bytes through a lookup table (fast)."""
    n = int(np.prod(shape))
    raw = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n].reshape(shape)
    return cv2.LUT(raw, _gauss_lut())


def smooth_noise(rng: np.random.Generator, cells: int, h: int, w: int) -> np.ndarray:
    """Low-frequency noise: a small random grid upsampled (bicubic, then bilinear when large)."""
    small = rng.standard_normal((cells, cells), dtype=F32)
    if max(h, w) > 48:
        small = cv2.resize(small, (min(w, 32), min(h, 32)), interpolation=cv2.INTER_CUBIC)
        return resize(small, (h, w))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """A uniform choice (much faster than ``rng.choice`` on a Python sequence)."""
    return items[int(rng.integers(len(items)))]


def roi_around(size: int, x0: float, y0: float, x1: float, y1: float, pad: float) -> Roi:
    """The region of a ``size`` x ``size`` image around a box, grown by ``pad`` and clipped."""
    return (max(0, int(y0 - pad)), min(size, math.ceil(y1 + pad) + 1),
            max(0, int(x0 - pad)), min(size, math.ceil(x1 + pad) + 1))
