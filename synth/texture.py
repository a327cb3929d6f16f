"""How a generator's fine texture compares with the real patches': power per frequency band.

    report = texture_report(real_images, generated_images)
    # {"bands": ["0-1/16", ..., "1/2-1"], "log2_ratio": [0.1, -0.2, 0.0, 0.4, 2.3], "hf_ratio": 4.9,
    #  "real": 512, "fake": 64}

Each image's mean is removed, its 2-D power spectrum taken, and the power summed in octave bands of the radial
frequency (a share of the Nyquist frequency: the last band is the finest detail, periods of 2 to 4 px). Per band,
``log2_ratio`` is log2 of the generated images' mean power over the real ones' (0: the same; +1: twice the
energy); ``hf_ratio`` is that ratio in the finest band. A generator that draws its fine detail from its
per-pixel noise inputs rather than from the surface (the "salt" texture of a narrow network) shows an
``hf_ratio`` well above 1; one that blurs, well below. Images are compared at one size.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

__all__ = ["BANDS", "band_power", "texture_report"]

BANDS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # edges, shares of Nyquist (the corners above 1 in the last)


def _label(x: float) -> str:
    return "0" if x == 0 else "1" if x == 1 else f"1/{round(1 / x)}"


def band_power(images: np.ndarray) -> np.ndarray:
    """Mean power per band of :data:`BANDS` over ``images`` (N, H, W) or (N, H, W, C) (channels averaged)."""
    a = np.asarray(images, np.float64)
    if a.ndim == 4:
        a = a.mean(-1)
    a = a - a.mean((1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(a)) ** 2).mean(0)
    h, w = power.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * 2, np.fft.fftfreq(w) * 2, indexing="ij")  # 1 = Nyquist
    radius = np.minimum(np.hypot(fy, fx), 1.0)
    band = np.clip(np.searchsorted(BANDS, radius, side="right") - 1, 0, len(BANDS) - 2)
    band[0, 0] = -1  # the mean, removed
    return np.array([power[band == i].sum() for i in range(len(BANDS) - 1)])


def texture_report(real: np.ndarray, fake: np.ndarray) -> Dict[str, object]:
    """Band powers of ``fake`` against ``real`` (arrays of images of one size; any common scale)."""
    if np.shape(real)[1:3] != np.shape(fake)[1:3]:
        raise ValueError(f"texture_report: images of {np.shape(real)[1:3]} and {np.shape(fake)[1:3]} px")
    tiny = 1e-12
    r, f = band_power(real), band_power(fake)
    ratio: List[float] = [round(float(np.log2((b + tiny) / (a + tiny))), 3) for a, b in zip(r, f)]
    return {"bands": [f"{_label(lo)}-{_label(hi)}" for lo, hi in zip(BANDS[:-1], BANDS[1:])], "log2_ratio": ratio,
            "hf_ratio": round(float(2 ** ratio[-1]), 3), "real": len(real), "fake": len(fake)}
