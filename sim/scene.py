"""The defect-free scene: a product housing in view (outline, relief, surface), its lighting and what is
behind it, drawn from one generator in a fixed order (:func:`build_scene`).

A part is a patch of a housing (brushed or anodized metal, or cover glass) with its edges (bevel, polished
chamfer), sometimes a logo, under a lighting gradient with vignetting, in a small pose jitter. Lengths are
given for 256 px and scaled with the image side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from .maps import F32, LOW, low_grid, magnitude, max0, min0, noise, pick, roi_around, smooth_noise, up

__all__ = ["MATERIALS", "Backdrop", "Lighting", "Product", "Scene", "build_scene", "place"]

Tints = Tuple[Tuple[float, float, float], ...]
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=F32) / 8
_LETTERS = "ABCDEFGHKLMNPRSTUVXZ0123456789"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)
_BG_TINTS: Tints = ((1.0, 1.0, 1.0), (0.8, 1.12, 1.0), (0.8, 0.95, 1.3), (1.05, 1.0, 0.95))


@dataclass
class Product:
    """The part in view: where it is, its relief and its surface."""

    surface: str
    edge: bool  # some product edge is in view (else the face fills the frame)
    din: np.ndarray  # distance inside the product edge in px (negative outside)
    alpha: np.ndarray  # product coverage 0..1 (anti-aliased edge)
    height: np.ndarray  # surface height in px (bevel); defects add to it
    albedo: np.ndarray  # face reflectance incl. texture, logo, reflections, chamfer highlight
    ks: float  # diffuse shading per unit slope (relative)
    kref: float  # specular shading per unit slope (absolute)
    tint: np.ndarray  # RGB tint (3,)


@dataclass
class Lighting:
    """The lamps, seen through the lens."""

    light: np.ndarray  # gradient toward the light x vignetting x gain, in gray levels per unit reflectance
    kernel: np.ndarray  # 3x3 filter: height -> slope toward the light


@dataclass
class Backdrop:
    """What lies behind the product (a dark fixture or ESD mat)."""

    luminance: Optional[np.ndarray]  # incl. the product's soft shadow; None when no edge is in view
    tint: np.ndarray  # RGB tint (3,)


@dataclass
class Scene:
    """Everything of a part but its defect and the sensor."""

    size: int
    scale: float  # size / 256: lengths are given for 256 px and scaled
    product: Product
    lighting: Lighting
    backdrop: Backdrop


class _Outline(NamedTuple):
    din: np.ndarray
    coarse: np.ndarray  # din on a 4x coarser grid
    angle: float  # pose rotation in radians


class _Surface(NamedTuple):
    tex: np.ndarray  # full-size texture
    smooth: np.ndarray  # low-resolution reflectance field (LOW x LOW)
    ks: float
    kref: float
    tints: Tints


def build_scene(rng: np.random.Generator, size: int, surface: str) -> Scene:
    """The defect-free ``surface`` part of a ``size`` px image, drawn from ``rng``."""
    s = size / 256.0
    outline = _outline(rng, size)
    din = outline.din
    dmin = float(din.min())
    edge = dmin < 8 * s + 2  # bevel, chamfer or background in view
    alpha = np.clip(din + F32(0.5), F32(0), F32(1))
    height = _bevel(rng, din, s)
    lighting = _lighting(rng, size)
    field = noise(rng, (size, size))  # one noise field textures both the face and the background
    mat = MATERIALS[surface](rng, field, size, outline.angle)
    albedo = _face(rng, mat, din, dmin, edge, surface == "glass", s)
    if rng.random() < 0.35:
        _logo(rng, albedo, din, s)
    backdrop = _backdrop(rng, field, outline.coarse, edge, s)
    product = Product(surface, edge, din, alpha, height, albedo, mat.ks, mat.kref,
                      np.array(pick(rng, mat.tints), dtype=F32))
    return Scene(size, s, product, lighting, Backdrop(backdrop, np.array(pick(rng, _BG_TINTS), dtype=F32)))


def _outline(rng: np.random.Generator, size: int) -> _Outline:
    """A rounded rectangle, each side in view with p=0.3, small rotation (pose jitter)."""
    off = [rng.uniform(0.04, 0.24) if rng.random() < 0.3 else -rng.uniform(0.05, 0.5) for _ in range(4)]
    left, right, top, bottom = off[0] * size, size * (1 - off[1]), off[2] * size, size * (1 - off[3])
    cx, cy = (left + right) / 2, (top + bottom) / 2
    hw, hh = (right - left) / 2, (bottom - top) / 2
    rad = min(rng.uniform(0.04, 0.2) * size, 0.9 * min(hw, hh))
    ang = math.radians(min(3.0, max(-3.0, rng.normal(0.0, 1.3))))
    box = (cx, cy, hw, hh, rad, math.cos(ang), math.sin(ang))
    # the distance map on a 4x coarser grid, upsampled: exact along straight edges, and off by well
    # under 0.2 px on the rounded corners (radius >= 10 px at 256 px)
    n = -(-size // 4)
    coarse = (np.arange(n, dtype=F32) + F32(0.5)) * F32(size / n) - F32(0.5)
    din_coarse = _inside_distance(coarse, box)
    return _Outline(up(din_coarse, size), din_coarse, ang)


def _inside_distance(ax: np.ndarray, box: Tuple[float, ...]) -> np.ndarray:
    """Signed distance inside a rotated rounded rectangle, at pixel positions ``ax`` x ``ax``."""
    cx, cy, hw, hh, rad, ca, sa = box
    dx, dy = ax - F32(cx), ax - F32(cy)
    qx = (ca * dx)[None, :] + (sa * dy)[:, None]
    np.abs(qx, out=qx)
    qx -= F32(hw - rad)
    qy = (ca * dy)[:, None] - (sa * dx)[None, :]
    np.abs(qy, out=qy)
    qy -= F32(hh - rad)
    inner = min0(np.maximum(qx, qy))
    din = magnitude(max0(qx), max0(qy))
    din += inner
    np.subtract(F32(rad), din, out=din)
    return din


def _bevel(rng: np.random.Generator, din: np.ndarray, s: float) -> np.ndarray:
    """The height map: a rounded ramp of width w up to the flat face."""
    w = rng.uniform(2.5, 7.0) * s
    t = np.clip(din * F32(1 / w), F32(0), F32(1))
    return t * (F32(2 * w) - F32(w) * t)


def _lighting(rng: np.random.Generator, size: int) -> Lighting:
    """A gradient toward the light, vignetting, overall gain (in gray levels)."""
    xn, yn = low_grid()
    beta = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(beta), math.sin(beta)
    grad, vig, gain = rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.35), 255 * rng.uniform(0.85, 1.15)
    light = up((F32(gain) + F32(gain * grad * lx) * xn + F32(gain * grad * ly) * yn)
               * (1 - F32(vig / 2) * (xn * xn + yn * yn)), size)
    # slope toward the light: a surface rising away from the light turns from it
    return Lighting(light, -(F32(lx) * _SOBEL_X + F32(ly) * _SOBEL_X.T))


def _brushed(rng: np.random.Generator, field: np.ndarray, size: int, angle: float) -> _Surface:
    xn, yn = low_grid()
    base = rng.uniform(0.45, 0.72)
    k = max(3, int(rng.uniform(0.15, 0.5) * size)) | 1
    amp = rng.uniform(0.02, 0.05)
    tex = cv2.scaleAdd(cv2.blur(field, (k, 1)), amp * math.sqrt(k) * 0.8, field * F32(amp * 0.25))
    tex += rng.standard_normal((size, 1), dtype=F32) * F32(amp * 0.5)  # groove depth per row
    rot = cv2.getRotationMatrix2D((size / 2, size / 2), -math.degrees(angle), 1.0)
    tex = cv2.warpAffine(tex, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # anisotropic highlight: a soft band across the brushing direction
    u = math.cos(angle) * xn + math.sin(angle) * yn - F32(rng.uniform(-0.9, 0.9))
    smooth = cv2.exp(np.maximum(u * u * F32(-1 / rng.uniform(0.08, 0.4) ** 2), F32(-30)))
    smooth = smooth * F32(rng.uniform(0.0, 0.22)) + F32(base)
    ks, kref = rng.uniform(0.12, 0.25), rng.uniform(0.05, 0.2)
    return _Surface(tex, smooth, ks, kref, ((1.0, 1.0, 1.0), (1.02, 1.0, 0.97), (0.97, 1.0, 1.04), (1.12, 1.0, 0.8)))


def _anodized(rng: np.random.Generator, field: np.ndarray, size: int, angle: float) -> _Surface:
    base = rng.uniform(0.25, 0.65)
    tex = cv2.GaussianBlur(field, (0, 0), 0.8) * F32(rng.uniform(0.02, 0.05))
    smooth = smooth_noise(rng, 6, LOW, LOW) * F32(rng.uniform(0.005, 0.02)) + F32(base)
    ks, kref = rng.uniform(0.12, 0.25), rng.uniform(0.03, 0.1)
    return _Surface(tex, smooth, ks, kref, ((1.0, 1.0, 1.0), (0.96, 0.99, 1.05), (0.7, 0.95, 1.35), (1.2, 0.95, 0.9),
                                            (0.85, 1.1, 0.95), (1.35, 0.82, 0.8), (1.15, 1.0, 0.8)))


def _glass(rng: np.random.Generator, field: np.ndarray, size: int, angle: float) -> _Surface:
    """Dark and smooth, lit by soft reflections of the lamps."""
    xn, yn = low_grid()
    tex = field * F32(0.004)
    smooth = np.full((LOW, LOW), rng.uniform(0.05, 0.14), dtype=F32)
    for _ in range(int(rng.integers(1, 3))):
        phi = rng.uniform(0, math.pi)
        u = math.cos(phi) * xn + math.sin(phi) * yn
        u0 = rng.uniform(-1.2, 0.8)
        u1 = u0 + rng.uniform(0.15, 0.8)
        soft = F32(1 / rng.uniform(0.08, 0.4))
        ramp = np.clip((u - F32(u0)) * soft, 0, 1) * np.clip((F32(u1) - u) * soft, 0, 1)
        smooth += ramp * F32(rng.uniform(0.05, 0.25))
    ks, kref = rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.3)
    return _Surface(tex, smooth, ks, kref, ((0.95, 1.0, 1.08), (1.0, 1.0, 1.0)))


MATERIALS: Dict[str, Callable[[np.random.Generator, np.ndarray, int, float], _Surface]] = {
    "brushed": _brushed, "anodized": _anodized, "glass": _glass}


def _face(rng: np.random.Generator, mat: _Surface, din: np.ndarray, dmin: float, edge: bool, glass: bool,
          s: float) -> np.ndarray:
    """The face's albedo: texture and reflections, the black print border of cover glass, the chamfer."""
    albedo = mat.tex
    albedo += up(mat.smooth, din.shape[0])
    ink = rng.uniform(5, 18) * s  # the black printed border of cover glass
    if glass and dmin < ink:
        albedo -= np.clip(F32(ink) - din, F32(0), F32(1)) * (albedo - F32(0.03))
    # polished chamfer: a thin bright line along the edge
    rim_amp = rng.uniform(0.1, 0.45)
    if edge:
        rim = din - F32(1.3 * s)
        rim *= rim
        rim = np.clip(F32(1) - rim * F32(1 / (1.2 * s) ** 2), F32(0), F32(1))
        albedo += rim * F32(rim_amp)
    return albedo


def _logo(rng: np.random.Generator, albedo: np.ndarray, din: np.ndarray, s: float) -> None:
    """Put a printed or polished mark on the face (in place): a few letters or a ring."""
    text = None
    if rng.random() < 0.6:
        text = "".join(pick(rng, _LETTERS) for _ in range(int(rng.integers(2, 5))))
        font = _FONTS[int(rng.integers(3))]
        fs = rng.uniform(0.4, 1.0) * s
        th = max(1, round(rng.uniform(1, 2.5) * s))
        (tw, tht), base = cv2.getTextSize(text, font, fs, th)
        hx, hy = tw / 2, (tht + base) / 2
    else:
        hx = hy = rng.uniform(8, 22) * s
        th = max(1, round(rng.uniform(1.5, 4) * s))
    c = place(rng, din, max(hx, hy) + 4 * s)
    if c is None:
        return
    y0, y1, x0, x1 = roi_around(din.shape[0], c[0] - hx, c[1] - hy, c[0] + hx, c[1] + hy, th + 2)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    x, y = int(c[0]) - x0, int(c[1]) - y0
    if text is not None:
        cv2.putText(canvas, text, (int(x - hx), int(y + tht / 2)), font, fs, 255, th, cv2.LINE_AA)
    else:
        cv2.circle(canvas, (x, y), int(hx), 255, th, cv2.LINE_AA)
    a = canvas.astype(F32) * F32(rng.uniform(0.3, 0.8) / 255)
    alb = albedo[y0:y1, x0:x1]
    alb += a * (F32(rng.uniform(0.15, 0.85)) - alb)


def _backdrop(rng: np.random.Generator, field: np.ndarray, din_coarse: np.ndarray, edge: bool, s: float
              ) -> Optional[np.ndarray]:
    """A dark fixture or ESD mat, and the product's soft shadow (None when no edge is in view)."""
    n = din_coarse.shape[0]
    bgl = rng.uniform(0.04, 0.2)
    mottle = smooth_noise(rng, 8, n, n) * F32(0.15 * bgl) + F32(bgl)
    shade_len, shade = rng.uniform(4, 14) * s, rng.uniform(0.2, 0.7)
    if not edge:
        return None
    # the shadow is smooth: computed on the coarse grid; din >= -0.4 size outside, so the exponent stays far
    # from float32 underflow
    shadow = cv2.exp(min0(din_coarse) * F32(1 / shade_len))
    mottle *= F32(1) - shadow * F32(shade)
    bg = field * F32(0.08)
    bg += F32(1)
    bg *= up(mottle, field.shape[0])
    return bg


def place(rng: np.random.Generator, din: np.ndarray, margin: float) -> Optional[Tuple[float, float]]:
    """A random point of the face at least ``margin`` px inside the product edge (None if none)."""
    size = din.shape[0]
    for _ in range(60):
        x, y = rng.uniform(0, size - 1), rng.uniform(0, size - 1)
        if din[int(y), int(x)] > margin:
            return x, y
    return None
