"""Paste a defect :class:`~lineguard.synth.patches.Patch` onto an OK image: a labelled defect image with its
exact mask.

    comp = Compositor(ComposeConfig(blend="poisson"))
    bg = comp.prepare(ok_image)                      # product region, once per background
    out = comp.composite(bg, patch, np.random.default_rng([seed, i]))   # out.image, out.mask, out.label

Steps, every random choice drawn from the passed generator (an image is a pure function of its seed):

1. **Geometry.** The patch is scaled so that its defect (the mask's bounding box, long side) spans
   ``scale`` (per class: ``class_scale``) of the image's short side, rotated by up to ``rotate``
   degrees, flipped with ``patch_flip_p`` per axis, and centred on a random pixel of the product
   region. A placement whose defect leaves the region is redrawn (after half of ``tries``, smaller).
2. **Blend.** ``alpha``: the patch replaces the image inside its mask; a Gaussian-feathered halo
   (``feather`` x the defect size) blends the patch's surroundings into the image outside it.
   ``poisson``: ``cv2.seamlessClone`` (``poisson_mode`` normal or mixed gradients) over the mask
   grown by ``poisson_grow`` x the defect size. Either way the label mask is exactly where the patch
   mask landed (bilinear warp, >= 128); the blend never changes it.
3. **Augmentation.** An albumentations pipeline moves image and mask together (flips, a mild affine
   with reflected borders, nearest-neighbour mask) and changes the image's photometry (brightness,
   contrast, gamma, blur, noise). A draw that leaves no defect pixel is redrawn.

The product region (where a defect may lie) is ``margin``: the image minus a border of ``margin`` x
the short side (at least 2 px), for products that fill the frame (magnetic tiles); or ``otsu``: the
Otsu-thresholded image (brighter side, or darker with ``region_dark``), closed, its largest part,
eroded by the same border, for products on a background. An ``otsu`` region under ``min_region`` of
the image makes :meth:`Compositor.prepare` raise: that image cannot serve as a background.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

import albumentations as A
import cv2
import numpy as np
from pydantic import Field, model_validator

from .. import LineguardError
from ..config import StrictModel
from ..data.imaging import resize
from .patches import Patch

__all__ = ["Background", "ComposeConfig", "Composite", "CompositeError", "Compositor", "class_scales"]

Range = Tuple[float, float]
_CLONE_EROSION = 4  # seamlessClone erodes its region by 3 px, and its gradients need one more


class CompositeError(LineguardError):
    """A background or patch that cannot be composited; the message says why."""


class ComposeConfig(StrictModel):
    """How a patch is pasted (see the module docstring). Unknown keys are rejected."""

    blend: Literal["alpha", "poisson"] = Field("alpha", description="feathered alpha, or Poisson (seamlessClone)")
    poisson_mode: Literal["normal", "mixed"] = Field("normal", description="seamlessClone NORMAL_ or MIXED_CLONE")
    feather: float = Field(0.06, ge=0, le=0.5, description="alpha: halo sigma, fraction of the defect size")
    poisson_grow: float = Field(0.15, ge=0, le=1, description="poisson: clone region = mask grown by this x size")
    region: Literal["margin", "otsu"] = Field("margin", description="where defects may lie")
    margin: float = Field(0.04, ge=0, le=0.4, description="border kept free of defects, fraction of the short side")
    region_dark: bool = Field(False, description="otsu: the product is the darker side")
    min_region: float = Field(0.25, gt=0, le=1, description="otsu: smallest usable product share of the image")
    scale: Range = Field((0.08, 0.3), description="defect size (long side), fraction of the image's short side")
    class_scale: Dict[str, Range] = Field(default_factory=dict, description="per-class scale ranges")
    rotate: float = Field(180.0, ge=0, le=180, description="max patch rotation in degrees")
    patch_flip_p: float = Field(0.5, ge=0, le=1, description="patch flip probability, per axis")
    tries: int = Field(12, ge=1, le=100, description="placement draws before giving up")
    augment: bool = Field(True, description="run the augmentation pipeline after pasting")
    hflip_p: float = Field(0.5, ge=0, le=1)
    vflip_p: float = Field(0.5, ge=0, le=1)
    affine_p: float = Field(0.3, ge=0, le=1, description="mild shift/zoom/tilt, reflected border")
    shift: float = Field(0.03, ge=0, le=0.2, description="max affine shift, fraction of the side")
    zoom: Range = Field((0.95, 1.05), description="affine zoom range")
    tilt: float = Field(5.0, ge=0, le=45, description="max affine rotation in degrees")
    brightness_contrast_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.08, ge=0, le=1, description="max brightness change, fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="max contrast change, fraction")
    gamma_p: float = Field(0.2, ge=0, le=1)
    gamma: Range = Field((0.85, 1.15))
    blur_p: float = Field(0.1, ge=0, le=1, description="slight 3x3 Gaussian blur")
    blur_sigma: Range = Field((0.2, 0.8))
    noise_p: float = Field(0.2, ge=0, le=1, description="Gaussian sensor noise")
    noise_std: Range = Field((0.003, 0.015), description="noise std range, fraction of 255")

    @model_validator(mode="after")
    def _ranges(self) -> ComposeConfig:
        ranges = {"scale": self.scale, "zoom": self.zoom, "gamma": self.gamma, "blur_sigma": self.blur_sigma,
                  "noise_std": self.noise_std, **{f"class_scale.{k}": v for k, v in self.class_scale.items()}}
        for name, (lo, hi) in ranges.items():
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < low <= high, got ({lo}, {hi})")
        for name, (_, hi) in ranges.items():
            if (name == "scale" or name.startswith("class_scale.")) and hi > 1:
                raise ValueError(f"{name}: a defect cannot be larger than the image (high {hi} > 1)")
        return self


@dataclass
class Background:
    """An OK image ready for pasting: ``region`` (bool HxW) where defects may lie, ``coords`` its flat indices."""

    image: np.ndarray
    region: np.ndarray
    coords: np.ndarray


@dataclass
class Composite:
    """A labelled defect image: ``image`` like the background's, ``mask`` uint8 HxW in {0, 255}, never empty."""

    image: np.ndarray
    mask: np.ndarray
    label: str


def _to_mode(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``image`` in the channel mode of ``like`` (gray HxW or RGB HxWx3)."""
    if image.ndim == like.ndim:
        return image
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if like.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _largest_part(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


class Compositor:
    """Pastes patches onto prepared backgrounds with one :class:`ComposeConfig` (see the module docstring)."""

    def __init__(self, cfg: Optional[ComposeConfig] = None) -> None:
        self.cfg = cfg if cfg is not None else ComposeConfig()
        self.transform = self._transform() if self.cfg.augment else None

    def _transform(self) -> A.Compose:
        c = self.cfg
        return A.Compose([
            A.HorizontalFlip(p=c.hflip_p),
            A.VerticalFlip(p=c.vflip_p),
            A.Affine(translate_percent=(-c.shift, c.shift), scale=c.zoom, rotate=(-c.tilt, c.tilt),
                     interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_REFLECT_101, p=c.affine_p),
            A.RandomBrightnessContrast(brightness_limit=c.brightness, contrast_limit=c.contrast,
                                       p=c.brightness_contrast_p),
            A.RandomGamma(gamma_limit=(c.gamma[0] * 100, c.gamma[1] * 100), p=c.gamma_p),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=c.blur_sigma, p=c.blur_p),
            A.GaussNoise(std_range=c.noise_std, p=c.noise_p),
        ], p=1.0)

    # ------------------------------------------------------------------ backgrounds

    def border(self, shape: Tuple[int, ...]) -> int:
        """Pixels kept free of defects along the image border."""
        return max(2, round(self.cfg.margin * min(shape[:2])))

    def region(self, image: np.ndarray) -> np.ndarray:
        """Where a defect may lie on ``image`` (bool HxW); raises :class:`CompositeError` when too small."""
        h, w = image.shape[:2]
        b = self.border(image.shape)
        if 2 * b >= min(h, w):
            raise CompositeError(f"image of {w}x{h} px is too small for a {b}-px border (margin {self.cfg.margin})")
        inner = np.zeros((h, w), bool)
        inner[b:h - b, b:w - b] = True
        if self.cfg.region == "margin":
            return inner
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        gray = cv2.GaussianBlur(gray, (5, 5), 0)
        flag = cv2.THRESH_BINARY_INV if self.cfg.region_dark else cv2.THRESH_BINARY
        _, fg = cv2.threshold(gray, 0, 1, flag | cv2.THRESH_OTSU)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, min(h, w) // 32) | 1,) * 2)
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, k)
        part = _largest_part(fg.astype(bool)).astype(np.uint8)
        part = cv2.erode(part, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * b + 1,) * 2)).astype(bool)
        region = part & inner
        share = float(region.mean())
        if share < self.cfg.min_region:
            side = "darker" if self.cfg.region_dark else "brighter"
            raise CompositeError(f"the product region (Otsu, {side} side) covers {share:.0%} of the image, "
                                 f"under min_region {self.cfg.min_region:.0%}")
        return region

    def prepare(self, image: np.ndarray) -> Background:
        """An OK image (uint8 gray or RGB) with its product region, ready for :meth:`composite`."""
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise CompositeError(f"background must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
        region = self.region(image)
        return Background(image, region, np.flatnonzero(region))

    # ------------------------------------------------------------------ compositing

    def composite(self, bg: Background, patch: Patch, rng: np.random.Generator) -> Composite:
        """``patch`` pasted on ``bg``, then augmented; every draw comes from ``rng``."""
        image, mask = self._paste(bg, patch, rng)
        if self.transform is None:
            return Composite(image, mask, patch.label)
        for _ in range(self.cfg.tries):
            self.transform.set_random_state(np.random.default_rng(rng.integers(2**63)),
                                            random.Random(int(rng.integers(2**63))))
            out = self.transform(image=image, mask=mask)
            m = np.where(out["mask"] >= 128, np.uint8(255), np.uint8(0))
            if m.any():
                return Composite(out["image"], m, patch.label)
        raise CompositeError(f"'{patch.label}': every augmentation draw moved the defect out of the image "
                             f"({self.cfg.tries} tries)")

    def _paste(self, bg: Background, patch: Patch, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        image = bg.image
        h, w = image.shape[:2]
        pimg = _to_mode(patch.image, image)
        pmask = patch.mask
        ys, xs = np.nonzero(pmask >= 128)
        if len(ys) == 0:
            raise CompositeError(f"'{patch.label}' patch: no mask pixel >= 128")
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        pivot = ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)
        lo, hi = cfg.class_scale.get(patch.label, cfg.scale)
        half = max(1, cfg.tries // 2)
        for attempt in range(cfg.tries):
            shrink = 1.0 if attempt < half else 0.7 ** (attempt - half + 1)
            size = rng.uniform(lo, hi) * min(h, w) * shrink  # defect size in output px
            angle = math.radians(rng.uniform(-cfg.rotate, cfg.rotate))
            flip = (-1.0 if rng.random() < cfg.patch_flip_p else 1.0, -1.0 if rng.random() < cfg.patch_flip_p else 1.0)
            centre = divmod(int(bg.coords[rng.integers(len(bg.coords))]), w)
            placed = self._place(pimg, pmask, pivot, size / extent, angle, flip, (centre[1], centre[0]), (h, w))
            if placed is None:
                continue
            roi, warped, defect, footprint = placed
            y0, y1, x0, x1 = roi
            if not defect.any() or (defect & ~bg.region[y0:y1, x0:x1]).any():
                continue
            out = image.copy()
            out[y0:y1, x0:x1] = self._blend(image[y0:y1, x0:x1], warped, defect, footprint, size)
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = defect.view(np.uint8) * np.uint8(255)
            return out, mask
        raise CompositeError(f"no placement of a '{patch.label}' defect inside the product region "
                             f"({cfg.tries} tries, scale {lo}-{hi} of {min(h, w)} px)")

    @staticmethod
    def _place(pimg: np.ndarray, pmask: np.ndarray, pivot: Tuple[float, float], s: float, angle: float,
               flip: Tuple[float, float], centre: Tuple[float, float], shape: Tuple[int, int]
               ) -> Optional[Tuple[Tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray]]:
        """Warp the patch into the image frame: ((y0, y1, x0, x1), image, defect bool, footprint float 0..1)
        over the region it covers (grown by 3 px), or None when it misses the image."""
        ph, pw = pmask.shape
        if s < 1:  # shrink with area averaging first (a bilinear warp alone aliases fine defects away)
            nw, nh = max(1, round(pw * s)), max(1, round(ph * s))
            fx, fy = nw / pw, nh / ph
            pimg = resize(pimg, (nh, nw))
            pmask = resize(pmask, (nh, nw))
            pivot = ((pivot[0] + 0.5) * fx - 0.5, (pivot[1] + 0.5) * fy - 0.5)
            s /= (fx + fy) / 2
            ph, pw = nh, nw
        ca, sa = math.cos(angle) * s, math.sin(angle) * s
        a = np.array([[ca * flip[0], -sa * flip[1]], [sa * flip[0], ca * flip[1]]])
        t = np.asarray(centre, float) - a @ np.asarray(pivot, float)
        corners = np.array([[-0.5, -0.5], [pw - 0.5, -0.5], [-0.5, ph - 0.5], [pw - 0.5, ph - 0.5]]) @ a.T + t
        h, w = shape
        x0, y0 = (max(0, math.floor(v) - 3) for v in corners.min(0))
        x1 = min(w, math.ceil(corners[:, 0].max()) + 4)
        y1 = min(h, math.ceil(corners[:, 1].max()) + 4)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        m = np.hstack([a, (t - (x0, y0))[:, None]])
        size = (x1 - x0, y1 - y0)
        warped = cv2.warpAffine(pimg, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        defect = cv2.warpAffine(pmask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) >= 128
        ones = np.full((ph, pw), 255, np.uint8)
        footprint = cv2.warpAffine(ones, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return (y0, y1, x0, x1), warped, defect, footprint.astype(np.float32) * np.float32(1 / 255)

    def _blend(self, dst: np.ndarray, src: np.ndarray, defect: np.ndarray, footprint: np.ndarray,
               size: float) -> np.ndarray:
        cfg = self.cfg
        if cfg.blend == "alpha":
            a = defect.astype(np.float32)
            sigma = cfg.feather * size
            if sigma >= 0.3:
                a = np.maximum(a, cv2.GaussianBlur(a, (0, 0), sigma))
            a *= footprint
            if dst.ndim == 3:
                a = a[..., None]
            out = dst.astype(np.float32)
            out += (src.astype(np.float32) - out) * a
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)
        grow = max(1, round(cfg.poisson_grow * size)) + _CLONE_EROSION
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2)
        clone = cv2.dilate(defect.view(np.uint8), kernel) & (footprint >= 1).view(np.uint8)
        clone[[0, -1], :] = 0  # seamlessClone needs the region's boundary inside the destination
        clone[:, [0, -1]] = 0
        x, y, bw, bh = cv2.boundingRect(clone)
        flag = cv2.NORMAL_CLONE if cfg.poisson_mode == "normal" else cv2.MIXED_CLONE
        three = (lambda a: a) if dst.ndim == 3 else (lambda a: cv2.merge([a, a, a]))
        out = cv2.seamlessClone(three(src), three(dst), clone * np.uint8(255), (x + bw // 2, y + bh // 2), flag)
        out = out if dst.ndim == 3 else out[..., 0]
        # OpenCV writes its solution over the region's whole bounding box (and MIXED_CLONE alters gradients
        # outside the region): keep the background outside the clone region
        inside = clone.view(bool) if dst.ndim == 2 else clone.view(bool)[..., None]
        return np.where(inside, out, dst)


def class_scales(cfg: ComposeConfig, classes: List[str]) -> Dict[str, Range]:
    """The scale range each of ``classes`` gets; a ``class_scale`` key that is not one of them is an error."""
    unknown = sorted(set(cfg.class_scale) - set(classes))
    if unknown:
        raise CompositeError(f"class_scale names {unknown}, not classes of the source ({classes})")
    return {c: cfg.class_scale.get(c, cfg.scale) for c in classes}
