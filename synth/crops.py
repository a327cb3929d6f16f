"""Square crops around each real defect (from its mask, or its boxes), per class: the GAN's training
data and the copy-paste baseline's material.

    crops, skipped = defect_crops(ds, ds.split("train"), size=64)
    by_class = group_by_class(crops)         # {"Crack": [Crop, ...], ...}

Each connected part of a mask (parts closer than ``merge_px`` count as one) gives one crop: its
bounding box grown by ``pad`` on every side, made square, taken with reflected borders where it
leaves the image, resized to ``size`` (area for the image, nearest for the mask). ``views > 1`` adds
views of each part whose square is up to ``jitter`` larger and shifted (the part stays whole inside),
drawn from ``seed``: a GAN fitted on centred crops at one scale learns the centred blob first. A record with boxes
and no mask uses the filled boxes as its mask. Records whose mask is empty or too small are skipped
with a reason, never silently.

:func:`shape_views` makes warped copies of crops (flips, a rotation, a scale, an elastic warp; image and
mask together): a shape prior for a GAN whose masks collapse onto a few shapes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

from lineguard.data.format import Dataset, DatasetError, Record
from lineguard.data.imaging import ImageFileError, binarize_mask, read_image, resize

__all__ = ["Crop", "defect_crops", "group_by_class", "shape_views"]


@dataclass
class Crop:
    image: np.ndarray  # uint8 (size, size) or (size, size, 3)
    mask: np.ndarray  # uint8 (size, size) in {0, 255}
    label: str
    record: str  # record id
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 of the square in the source image (may pass its edges)


def _mask_of(ds: Dataset, r: Record, shape: Tuple[int, int]) -> Optional[np.ndarray]:
    if r.mask is not None:
        try:
            m, _ = read_image(ds.path(r.mask))
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(r.mask)} (record {r.id}): {e}") from None
        if m.shape[:2] != shape:
            raise DatasetError(f"{ds.path(r.mask)} (record {r.id}): mask is {m.shape[1]}x{m.shape[0]} px, the image "
                               f"{shape[1]}x{shape[0]}")
        return binarize_mask(m)
    if r.boxes:
        m = np.zeros(shape, bool)
        for b in r.boxes:
            m[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))] = True
        return m
    return None


def _square(x0: int, y0: int, x1: int, y1: int, pad: float, rng: Optional[np.random.Generator] = None,
            jitter: float = 0.0) -> Tuple[int, int, int, int]:
    """The square around box (x0, y0, x1, y1) grown by ``pad``; with ``rng``, up to ``jitter`` larger and
    shifted at random, the box still inside."""
    side = round(max(x1 - x0, y1 - y0) * (1 + 2 * pad)) + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if rng is not None:
        side = round(side * (1 + jitter * rng.random()))
        cx += rng.uniform(-1, 1) * (side - (x1 - x0) - 2) / 2
        cy += rng.uniform(-1, 1) * (side - (y1 - y0) - 2) / 2
    sx, sy = round(cx - side / 2), round(cy - side / 2)
    return sx, sy, sx + side, sy + side


def _take(a: np.ndarray, box: Tuple[int, int, int, int], border: int) -> np.ndarray:
    """``a[y0:y1, x0:x1]`` with the part outside the image filled by ``border`` (cv2 border mode)."""
    x0, y0, x1, y1 = box
    h, w = a.shape[:2]
    top, left, bottom, right = max(0, -y0), max(0, -x0), max(0, y1 - h), max(0, x1 - w)
    inner = a[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if top or left or bottom or right:
        inner = cv2.copyMakeBorder(inner, top, bottom, left, right, border)
    return inner


def defect_crops(ds: Dataset, records: Sequence[Record], size: int = 64, pad: float = 0.25,
                 min_pixels: int = 16, merge_px: int = 8, channels: Optional[int] = None, views: int = 1,
                 jitter: float = 0.5, seed: int = 0) -> Tuple[List[Crop], List[str]]:
    """Crops of every defect part in ``records`` (OK-class records are ignored); returns (crops,
    skipped), ``skipped`` naming each record without a usable mask and why. ``channels`` 1 or 3
    converts; None keeps what the files hold. ``views``: crops per part, the first centred, the others
    jittered (see the module docstring). Unreadable files raise :class:`DatasetError`."""
    ok = ds.classes.ok_class
    crops: List[Crop] = []
    skipped: List[str] = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * merge_px + 1,) * 2) if merge_px > 0 else None
    for i, r in enumerate(records):
        if r.label == ok:
            continue
        try:
            img, _ = read_image(ds.path(r.image))
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(r.image)} (record {r.id}): {e}") from None
        if channels == 1 and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        elif channels == 3 and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        mask = _mask_of(ds, r, img.shape[:2])
        if mask is None:
            skipped.append(f"{r.id}: no mask and no boxes")
            continue
        if mask.sum() < min_pixels:
            skipped.append(f"{r.id}: mask has {int(mask.sum())} defect pixels (< {min_pixels})")
            continue
        m8 = mask.astype(np.uint8) * 255
        joined = cv2.dilate(m8, kernel) if kernel is not None else m8
        n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        for k in range(1, n):
            x, y, w, h, _ = stats[k]
            part = np.where(labels == k, m8, 0).astype(np.uint8)
            if (part > 0).sum() < min_pixels:
                continue
            for v in range(views):
                rng = np.random.default_rng([seed, i, k, v]) if v else None
                box = _square(x, y, x + w, y + h, pad, rng, jitter)
                crops.append(Crop(*_cut(img, part, box, size), r.label, r.id, box))
    return crops, skipped


def _cut(img: np.ndarray, part: np.ndarray, box: Tuple[int, int, int, int], size: int
         ) -> Tuple[np.ndarray, np.ndarray]:
    """(image, mask) of ``box`` at ``size`` x ``size``."""
    im = resize(_take(img, box, cv2.BORDER_REFLECT_101), (size, size))
    mk = cv2.resize(_take(part, box, cv2.BORDER_CONSTANT), (size, size), interpolation=cv2.INTER_NEAREST)
    if not mk.any():  # a part thinner than one output pixel: keep it visible
        mk = cv2.resize(_take(part, box, cv2.BORDER_CONSTANT), (size, size), interpolation=cv2.INTER_AREA)
        mk = np.where(mk > 0, 255, 0).astype(np.uint8)
    return im, mk


def group_by_class(crops: Sequence[Crop]) -> Dict[str, List[Crop]]:
    out: Dict[str, List[Crop]] = defaultdict(list)
    for c in crops:
        out[c.label].append(c)
    return dict(out)


def shape_views(crops: Sequence[Crop], views: int, rotate: float = 15.0, scale: Tuple[float, float] = (0.8, 1.25),
                elastic_p: float = 0.5, seed: int = 0) -> List[Crop]:
    """``views`` warped copies of each crop, drawn from ``seed``: x- and y-flips (p 0.5 each), a rotation
    within +-``rotate`` degrees and a scale in ``scale`` (reflected image borders, empty mask borders), and
    with probability ``elastic_p`` an elastic warp; image and mask move together (the mask by nearest
    neighbour). A copy whose mask left the square is not kept. Rotations stay small by default: defect
    classes are oriented (73% of real magnetic-tile Cracks are near-vertical)."""
    if views <= 0 or not crops:
        return []
    size = crops[0].mask.shape[0]
    t = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(scale=scale, rotate=(-rotate, rotate), interpolation=cv2.INTER_LINEAR,
                 mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101, fill_mask=0, p=1.0),
        A.ElasticTransform(alpha=0.5 * size, sigma=0.08 * size, interpolation=cv2.INTER_LINEAR,
                           mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101,
                           fill_mask=0, p=elastic_p),
    ], p=1.0)
    rng = np.random.default_rng(seed)
    out: List[Crop] = []
    for c in crops:
        for _ in range(views):
            t.set_random_state(np.random.default_rng(rng.integers(2 ** 63)), random.Random(int(rng.integers(2 ** 63))))
            got = t(image=c.image, mask=c.mask)
            m = np.where(got["mask"] >= 128, np.uint8(255), np.uint8(0))
            if m.any():
                out.append(Crop(got["image"], m, c.label, c.record, c.box))
    return out
