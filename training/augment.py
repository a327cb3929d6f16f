"""Training augmentation: :class:`AugmentConfig` and its albumentations pipeline over image and mask.

    transform = build_transform(AugmentConfig(), pre)             # one Compose, image + mask
    image, mask = augment_item(transform, image, mask, (seed, epoch, index))

Augmentation runs on uint8 pixels at the model's input size (``pre.resize``), image and mask together:
geometry moves both (mask: nearest neighbour), photometry the image only. The draw of an item depends
only on its key (seed, epoch, index): the same whatever the number of DataLoader workers or their order.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any, List, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
from pydantic import Field, model_validator

from ..config import StrictModel
from ..data.preprocess import Preprocess

__all__ = ["AugmentConfig", "augment_item", "build_transform"]

TRIES = 4  # augmentation draws per item before giving up on keeping a visible defect


class AugmentConfig(StrictModel):
    """Training augmentation for industrial surface images (gray or RGB). Geometry is mild on purpose:
    a defect must stay in the picture. Probabilities are per item."""

    enabled: bool = True
    hflip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip")
    vflip_p: float = Field(0.5, ge=0, le=1, description="vertical flip")
    rot90_p: float = Field(0.0, ge=0, le=1, description="random 90-degree rotation (off: textures have a direction)")
    affine_p: float = Field(0.7, ge=0, le=1, description="shift/scale/rotate, reflected border")
    shift: float = Field(0.05, ge=0, le=0.3, description="max shift, fraction of the side")
    scale: Tuple[float, float] = Field((0.9, 1.1), description="zoom range of the affine")
    rotate: float = Field(10.0, ge=0, le=180, description="max rotation in degrees")
    crop_p: float = Field(0.3, ge=0, le=1, description="random resized crop (0 = off)")
    crop_scale: Tuple[float, float] = Field((0.85, 1.0), description="area fraction kept by the crop")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.1, ge=0, le=1, description="max brightness change, fraction of 255")
    contrast: float = Field(0.15, ge=0, le=1, description="max contrast change, fraction")
    gamma_p: float = Field(0.3, ge=0, le=1)
    gamma: Tuple[float, float] = Field((0.8, 1.2), description="gamma range")
    blur_p: float = Field(0.1, ge=0, le=1, description="slight 3x3 Gaussian blur")
    blur_sigma: Tuple[float, float] = Field((0.1, 0.8))
    noise_p: float = Field(0.2, ge=0, le=1, description="Gaussian sensor noise")
    noise_std: Tuple[float, float] = Field((0.005, 0.02), description="noise std range, fraction of 255")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "crop_scale", "gamma", "blur_sigma", "noise_std"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi):
                raise ValueError(f"{name} must be a range (low <= high, >= 0), got ({lo}, {hi})")
        if self.scale[0] <= 0 or self.gamma[0] <= 0 or self.blur_sigma[0] <= 0:
            raise ValueError("scale, gamma and blur_sigma must be > 0")
        if not (self.crop_scale[0] > 0 and self.crop_scale[1] <= 1):
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.noise_std[1] > 0.5:
            raise ValueError(f"noise_std must be <= 0.5, got {self.noise_std}")
        return self


def _image_to_size(pre: Preprocess, img: np.ndarray, **_: Any) -> np.ndarray:
    return pre.resize(img)


def _mask_to_size(pre: Preprocess, m: np.ndarray, **_: Any) -> np.ndarray:
    return m if m.shape[:2] == tuple(pre.size) else pre.resize_mask(m).astype(np.uint8)


def _geometry(cfg: AugmentConfig, size: Tuple[int, int]) -> List[A.BasicTransform]:
    """Flips, 90-degree turns, affine and crop: image and mask alike (mask nearest neighbour)."""
    h, w = size
    ts: List[A.BasicTransform] = [A.HorizontalFlip(p=cfg.hflip_p), A.VerticalFlip(p=cfg.vflip_p)]
    if cfg.rot90_p > 0 and h == w:  # a quarter turn of a non-square input changes its shape
        ts.append(A.RandomRotate90(p=cfg.rot90_p))
    if cfg.affine_p > 0:
        ts.append(A.Affine(translate_percent=(-cfg.shift, cfg.shift), scale=cfg.scale,
                           rotate=(-cfg.rotate, cfg.rotate), interpolation=cv2.INTER_LINEAR,
                           mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101,
                           p=cfg.affine_p))
    if cfg.crop_p > 0:
        r = w / h  # keep the input's aspect ratio within +-10 %
        ts.append(A.RandomResizedCrop(size=(h, w), scale=cfg.crop_scale, ratio=(r * 0.9, r / 0.9),
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                      p=cfg.crop_p))
    return ts


def _photometry(cfg: AugmentConfig) -> List[A.BasicTransform]:
    """Brightness/contrast, gamma, blur, sensor noise: the image only."""
    return [
        A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast,
                                   p=cfg.brightness_contrast_p),
        A.RandomGamma(gamma_limit=(cfg.gamma[0] * 100, cfg.gamma[1] * 100), p=cfg.gamma_p),
        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=cfg.blur_sigma, p=cfg.blur_p),
        A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p),
    ]


def build_transform(cfg: AugmentConfig, pre: Preprocess) -> A.Compose:
    """The augmentation as one Compose over ``image`` (uint8, HxW or HxWx3) and ``mask`` (uint8 0/1).

    Inputs not yet at ``pre.size`` are first brought there (``pre.resize`` for the image, ``pre.resize_mask``
    for the mask); at the input size that step is a no-op. Geometry moves image
    and mask together (mask: nearest neighbour, same reflected border); photometry touches the image
    only. Draw with :func:`augment_item`."""
    to_size = A.Lambda(image=partial(_image_to_size, pre), mask=partial(_mask_to_size, pre), p=1.0)  # picklable
    ts: List[A.BasicTransform] = [to_size]
    if cfg.enabled:
        ts += _geometry(cfg, pre.size) + _photometry(cfg)
    return A.Compose(ts, p=1.0)


def _seed(transform: A.Compose, key: Sequence[int]) -> None:
    if any(k < 0 for k in key):
        raise ValueError(f"seed, epoch and index must be >= 0, got {tuple(key)}")
    np_seq, py_seq = np.random.SeedSequence(list(key)).spawn(2)
    py_seed = int(py_seq.generate_state(1, np.uint64)[0])
    transform.set_random_state(np.random.default_rng(np_seq), random.Random(py_seed))


def augment_item(transform: A.Compose, image: np.ndarray, mask: Optional[np.ndarray], key: Tuple[int, int, int]
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``image`` and ``mask`` (None: none) through ``transform``, drawn from ``key`` (seed, epoch, index).
    A draw that moves the whole defect out of the picture is redrawn, up to :data:`TRIES` draws; after
    that the item stays plain. Not thread-safe: the draw is the transform's random state."""
    has_defect = mask is not None and bool(mask.any())
    for attempt in range(TRIES):
        _seed(transform, (*key, attempt))
        out = transform(image=image) if mask is None else transform(image=image, mask=mask)
        if not has_defect or out["mask"].any():
            return out["image"], out.get("mask")
    return image, mask
