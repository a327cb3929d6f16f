"""Texture by frequency band: the salt texture of noise-drawn detail and a blur are told from the real patches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lineguard.synth.texture import BANDS, band_power, texture_report


def _surfaces(n: int, seed: int, size: int = 64) -> np.ndarray:
    """Gray surfaces in [-1, 1] as a ground tile looks: smooth shading and a fine grain."""
    rng = np.random.default_rng(seed)
    out = [cv2.GaussianBlur(rng.normal(0, 1, (size, size)), (0, 0), 3) for _ in range(n)]
    return np.stack([a / np.abs(a).max() * 0.5 + rng.normal(0, 0.02, (size, size)) for a in out])


def test_band_power_puts_a_fine_grating_in_the_last_band_and_a_coarse_one_in_the_first_bands() -> None:
    x = np.arange(64)
    fine = np.tile(np.cos(np.pi * x * 0.75), (64, 1))[None]  # 0.75 of Nyquist
    coarse = np.tile(np.cos(2 * np.pi * x / 64), (64, 1))[None]  # one period per patch
    assert np.argmax(band_power(fine)) == len(BANDS) - 2
    assert np.argmax(band_power(coarse)) <= 1
    assert band_power(np.ones((3, 64, 64))) == pytest.approx(np.zeros(len(BANDS) - 1))  # the mean is removed


def test_texture_report_finds_salt_and_blur_and_nothing_in_more_of_the_same() -> None:
    real = _surfaces(64, seed=0)
    same = texture_report(real, _surfaces(64, seed=1))
    assert same["bands"][0] == "0-1/16" and same["bands"][-1] == "1/2-1" and same["real"] == same["fake"] == 64
    assert max(abs(v) for v in same["log2_ratio"]) < 0.5 and 0.7 < same["hf_ratio"] < 1.4
    salt = _surfaces(64, seed=2) + np.random.default_rng(3).normal(0, 0.08, (64, 64, 64))
    salty = texture_report(real, salt)
    assert salty["hf_ratio"] > 4 and abs(salty["log2_ratio"][0]) < 0.5  # the coarse bands untouched
    blurred = np.stack([cv2.GaussianBlur(a, (0, 0), 1.5) for a in _surfaces(64, seed=4)])
    assert texture_report(real, blurred)["hf_ratio"] < 0.5
    rgb = texture_report(real[..., None].repeat(3, -1), _surfaces(8, seed=5)[..., None].repeat(3, -1))
    assert rgb["fake"] == 8 and len(rgb["log2_ratio"]) == len(BANDS) - 1
    with pytest.raises(ValueError, match=r"\(64, 64\) and \(32, 32\)"):
        texture_report(real, real[:, :32, :32])
