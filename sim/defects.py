"""The three defects a part can carry, drawn on a :class:`~lineguard.sim.scene.Scene` (registry :data:`MAKERS`):

* ``scratch``: thin curved lines, bright or dark, 1-3 px, one to three segments (length and direction:
  :class:`ScratchShape`);
* ``stain``: a soft irregular film (oil, water mark, fingerprint, haze), darker, brighter or tinted;
* ``dent``: a height bump whose slope shades the surface, plus a slight warp of the texture.

A maker returns the region it touches, the changed albedo and height maps, its core (a boolean map of the
region that is part of the mask however faint) and an optional RGB tint of the region; or None when the
part shows no room for it at that scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from ..config import StrictModel
from .maps import F32, Roi, grids, pick, roi_around, smooth_noise
from .scene import Scene, place

__all__ = ["MAKERS", "Defect", "ScratchShape", "make_defect"]

_SCALES = (1.0, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1)  # tried in turn: smaller when the part shows little face
_STAIN_TINTS = {"oil": (1.1, 1.0, 0.75), "water": (0.95, 1.0, 1.1), "finger": (1.03, 1.0, 0.95),
                "haze": (1.0, 1.0, 1.0)}


@dataclass
class Defect:
    """A defect on a scene: full-size albedo and height maps with it, changed only inside ``roi``."""

    roi: Roi
    albedo: np.ndarray
    height: np.ndarray
    core: np.ndarray  # bool map of the roi: part of the mask however faint
    tint: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (alpha of the region, RGB tint)


class ScratchShape(StrictModel):
    """How long scratches run and which way (``SimulatorConfig.scratch``)."""

    length: Tuple[float, float] = Field((0.06, 0.45), description="share of the image side, drawn uniformly in it")
    angle: Optional[float] = Field(
        None, ge=0, le=90, description="every step within this many degrees of horizontal; None: any way")

    @model_validator(mode="after")
    def _range(self) -> ScratchShape:
        lo, hi = self.length
        if not 0 < lo <= hi <= 1.5:
            raise ValueError(f"scratch length must be 0 < low <= high <= 1.5 (share of the side), got {self.length}")
        return self


def make_defect(rng: np.random.Generator, sc: Scene, label: str, scratch: Optional[ScratchShape] = None
                ) -> Optional[Defect]:
    """A ``label`` defect on ``sc``, as large as the part's face allows (None: no room even when small)."""
    maker = partial(_scratch, shape=scratch or ScratchShape()) if label == "scratch" else MAKERS[label]
    for k in _SCALES:
        d = maker(rng, sc, k)
        if d is not None:
            return d
    return None


def _replaced(full: np.ndarray, roi: Roi, part: np.ndarray) -> np.ndarray:
    """A copy of ``full`` with ``roi`` set to ``part``."""
    y0, y1, x0, x1 = roi
    out = full.copy()
    out[y0:y1, x0:x1] = part
    return out


def _on_face(din: np.ndarray, pts: np.ndarray, margin: float) -> bool:
    """Whether every point (x, y) lies more than ``margin`` px inside the product edge."""
    ix = np.clip(pts.astype(int), 0, din.shape[0] - 1)
    return bool((din[ix[:, 1], ix[:, 0]] > margin).all())


# --------------------------------------------------------------------------------------------------
# scratch


def _scratch_path(rng: np.random.Generator, din: np.ndarray, s: float, length: float,
                  angle: Optional[float]) -> Optional[np.ndarray]:
    """The points (x, y) of a curved stroke on the face, 2 px apart at 256 px (shortened until it fits), every
    step within ``angle`` degrees of horizontal (None: any way)."""
    for _ in range(8):
        c = place(rng, din, 4 * s + 2)
        if c is None:
            return None
        step = 2.0 * s
        m = max(4, int(length / step))
        phi = rng.uniform(0, 2 * math.pi) if angle is None else math.radians(rng.uniform(-angle, angle))
        bend = rng.normal(0, 1.0) / max(length, 1.0)
        sarc = np.arange(m) * step
        ang = phi + bend * sarc + np.cumsum(rng.normal(0, 0.03, m))
        if angle is not None:  # the whole stroke keeps to the direction, not only its start
            ang = np.clip(ang, -math.radians(angle), math.radians(angle))
        pts = np.stack([np.cumsum(np.cos(ang)) * step, np.cumsum(np.sin(ang)) * step], 1)
        pts += np.array(c) - pts.mean(0)
        if _on_face(din, pts, 3 * s + 1):
            return pts
        length *= 0.7
    return None


def _scratch_strokes(rng: np.random.Generator, pts: np.ndarray, din: np.ndarray, s: float) -> List[np.ndarray]:
    """One to three segments: gaps in the stroke, or a second near-parallel stroke."""
    m = len(pts)
    nseg = pick(rng, (1, 1, 1, 2, 2, 3))
    if nseg == 1 or m < 12:
        return [pts]
    strokes = [pts]
    if rng.random() < 0.5:
        cuts = np.sort(rng.choice(np.arange(3, m - 3), nseg - 1, replace=False))
        strokes, prev = [], 0
        for cu in cuts:
            gap = int(rng.integers(1, 4))
            strokes.append(pts[prev:max(prev + 2, cu - gap)])
            prev = cu + gap
        strokes.append(pts[min(prev, m - 2):])
        return strokes
    for _ in range(nseg - 1):
        shift = rng.normal(0, 3 * s, 2)
        a, b = sorted(rng.choice(np.arange(m), 2, replace=False))
        seg = pts[a:max(b, a + 3)] + shift
        if _on_face(din, seg, 3 * s + 1):
            strokes.append(seg)
    return strokes


def _draw_strokes(rng: np.random.Generator, strokes: List[np.ndarray], roi: Roi, thick: int) -> np.ndarray:
    """The strokes' depth (0..1) over ``roi``: anti-aliased, varying along each stroke, shallower at the ends."""
    y0, y1, x0, x1 = roi
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    off = np.array([x0, y0], dtype=np.float64)
    shift = 4  # sub-pixel vertex positions for cv2's anti-aliased lines
    for st in strokes:
        if len(st) < 2:
            continue
        # depth varies along the stroke: draw it in short pieces of different intensity
        q = np.round((st - off) * (1 << shift)).astype(np.int32)
        level = rng.uniform(0.6, 1.0)
        for j in range(0, len(q) - 1, 6):
            level = min(1.0, max(0.45, level + rng.normal(0, 0.15)))
            taper = 0.6 if j == 0 or j + 7 >= len(q) else 1.0
            cv2.polylines(canvas, [q[j:j + 7]], False, int(255 * level * taper), thick, cv2.LINE_AA, shift)
    return canvas.astype(F32) * F32(1 / 255)


def _scratch(rng: np.random.Generator, sc: Scene, k: float, shape: ScratchShape = ScratchShape()) -> Optional[Defect]:
    p, size, s = sc.product, sc.size, sc.scale
    pts = _scratch_path(rng, p.din, s, rng.uniform(*shape.length) * size * k, shape.angle)
    if pts is None:
        return None
    strokes = _scratch_strokes(rng, pts, p.din, s)
    thick = max(1, round(pick(rng, (1, 1, 1, 1, 2, 2, 3)) * max(1.0, s * 0.75)))
    allp = np.concatenate(strokes)
    roi = roi_around(size, allp[:, 0].min(), allp[:, 1].min(), allp[:, 0].max(), allp[:, 1].max(), thick + 3)
    y0, y1, x0, x1 = roi
    a = _draw_strokes(rng, strokes, roi, thick)
    inside = p.din[y0:y1, x0:x1] > 1
    a *= inside
    glass = p.surface == "glass"
    bright = rng.random() < (0.85 if glass else 0.6)
    alb = p.albedo[y0:y1, x0:x1]
    if bright:
        c = rng.uniform(0.05, 0.4) if not glass else rng.uniform(0.04, 0.3)
        changed = alb + a * F32(c)
    else:
        changed = alb * (1 - a * F32(rng.uniform(0.12, 0.6)))
    return Defect(roi, _replaced(p.albedo, roi, changed), p.height, (a > 0.4) & inside)


# --------------------------------------------------------------------------------------------------
# stain


def _stain_outline(rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray, centre: Tuple[float, float],
                   ra: float, rb: float) -> Tuple[np.ndarray, np.ndarray]:
    """(field, rho2): one ellipse, or a splatter of two or three; rho2 is the first one's squared radius."""
    cx, cy = centre
    field, rho2 = None, None
    for b in range(pick(rng, (1, 1, 2, 3))):
        th = rng.uniform(0, math.pi)
        f = 1.0 if b == 0 else rng.uniform(0.35, 0.7)
        ox, oy = (0.0, 0.0) if b == 0 else tuple(rng.uniform(-0.55, 0.55, 2) * ra)
        dx, dy = gx - F32(cx + ox), gy - F32(cy + oy)
        u = (math.cos(th) * dx + math.sin(th) * dy) * F32(1 / (ra * f))
        v = (math.cos(th) * dy - math.sin(th) * dx) * F32(1 / (rb * f))
        r2 = u * u + v * v
        field = 1 - r2 if field is None else np.maximum(field, 1 - r2)
        rho2 = r2 if rho2 is None else rho2
    assert field is not None and rho2 is not None
    return field, rho2


def _stain_film(rng: np.random.Generator, env: np.ndarray, rho2: np.ndarray, r: float, s: float,
                smooth: Callable[[int], np.ndarray]) -> Tuple[np.ndarray, str]:
    """(opacity over the region, kind) of the film inside the envelope ``env``."""
    kind = pick(rng, ("oil", "water", "finger", "haze"))
    if kind == "finger":  # loops of ridges, distorted and broken
        period = rng.uniform(3.0, 5.0) * s
        warp = smooth(4) * F32(rng.uniform(1.5, 4.0)) + smooth(9) * F32(0.8)
        ridge = np.sin(np.sqrt(rho2) * F32(2 * math.pi * r / period) + warp)
        broken = np.clip(smooth(10) * F32(1.5) + F32(0.8), 0, 1)
        return env * (0.3 + 0.7 * np.clip(ridge, 0, 1) * broken), kind
    if kind == "water":  # coffee-ring: dried residue concentrates at the rim
        ring = env * (1 - env) * 4
        return np.clip(ring * F32(0.9) + env * F32(0.2), 0, 1), kind
    # a film of uneven thickness
    return env * np.clip(F32(0.8) + smooth(5) * F32(rng.uniform(0.05, 0.25)), 0.3, 1), kind


def _stain(rng: np.random.Generator, sc: Scene, k: float) -> Optional[Defect]:
    p, size, s = sc.product, sc.size, sc.scale
    r = max(3.0, rng.uniform(5, 28) * s * k)
    elong = rng.uniform(1.0, 1.8)
    ra, rb = r * elong, r / elong
    c = place(rng, p.din, ra * 1.3 + 3)
    if c is None:
        return None
    cx, cy = c
    roi = roi_around(size, cx - ra * 1.3, cy - ra * 1.3, cx + ra * 1.3, cy + ra * 1.3, 2)
    y0, y1, x0, x1 = roi
    xx, yy = grids(size)
    field, rho2 = _stain_outline(rng, xx[y0:y1, x0:x1], yy[y0:y1, x0:x1], c, ra, rb)

    def smooth(cells: int) -> np.ndarray:
        return smooth_noise(rng, cells, y1 - y0, x1 - x0)

    field = field + smooth(6) * F32(rng.uniform(0.1, 0.3))  # a wobbly edge
    soft = F32(1 / rng.uniform(0.2, 0.7))
    env = cv2.GaussianBlur(np.clip(field * soft, 0, 1), (0, 0), max(0.6, 0.8 * s))
    a, kind = _stain_film(rng, env, rho2, r, s, smooth)
    inside = p.din[y0:y1, x0:x1] > 1
    a = a * inside
    alb = p.albedo[y0:y1, x0:x1]
    if p.surface != "glass" and rng.random() < 0.75:  # darker
        changed = alb * (1 - a * F32(rng.uniform(0.08, 0.45)))
    else:  # a film scatters light: a haze, visible on dark and smooth surfaces
        changed = alb + a * F32(rng.uniform(0.03, 0.16))
    return Defect(roi, _replaced(p.albedo, roi, changed), p.height, (env > 0.4) & inside,
                  (a, np.array(_STAIN_TINTS[kind], dtype=F32)))


# --------------------------------------------------------------------------------------------------
# dent


def _dent(rng: np.random.Generator, sc: Scene, k: float) -> Optional[Defect]:
    p, size, s = sc.product, sc.size, sc.scale
    sig = max(2.0, rng.uniform(2.5, 13) * s * k)
    elong = rng.uniform(1.0, 2.2)
    sa_, sb_ = sig * elong, sig / math.sqrt(elong)
    c = place(rng, p.din, 3 * sa_ + 3)
    if c is None:
        return None
    cx, cy = c
    roi = roi_around(size, cx - 3 * sa_, cy - 3 * sa_, cx + 3 * sa_, cy + 3 * sa_, 2)
    y0, y1, x0, x1 = roi
    xx, yy = grids(size)
    th = rng.uniform(0, math.pi)
    dx, dy = xx[y0:y1, x0:x1] - F32(cx), yy[y0:y1, x0:x1] - F32(cy)
    u = (math.cos(th) * dx + math.sin(th) * dy) * F32(1 / sa_)
    v = (math.cos(th) * dy - math.sin(th) * dx) * F32(1 / sb_)
    g = cv2.exp((u * u + v * v) * F32(-0.5))
    # a sharp impact centre on a wider, shallow deformation
    g = g * F32(0.7) + cv2.exp((u * u + v * v) * F32(-2.0)) * F32(0.3)
    contrast = rng.uniform(0.06, 0.45)  # shading swing it causes, as a fraction of the surface level
    depth = contrast * min(sa_, sb_) / (0.6 * (p.ks + p.kref / 0.5))
    height = _replaced(p.height, roi, p.height[y0:y1, x0:x1] - g * F32(depth))
    # the metal flows: texture (and reflections) shift along the slope
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    peak = float(np.abs(gx).max() + np.abs(gy).max()) / 2 + 1e-6
    shift = F32(rng.uniform(0.5, 3.5) * s / peak)
    if p.surface == "glass":
        shift *= 2
    shift = np.clip(g * F32(5), 0, 1) * shift  # no creeping shift far out
    mapx = xx[y0:y1, x0:x1] + gx * shift
    mapy = yy[y0:y1, x0:x1] + gy * shift
    warped = cv2.remap(p.albedo, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return Defect(roi, _replaced(p.albedo, roi, warped), height, (g > 0.35) & (p.din[y0:y1, x0:x1] > 1))


Maker = Callable[[np.random.Generator, Scene, float], Optional[Defect]]
MAKERS: Dict[str, Maker] = {"scratch": _scratch, "stain": _stain, "dent": _dent}
