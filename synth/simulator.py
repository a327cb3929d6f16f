"""The procedural line simulator: 3C product surfaces seen by a line camera, with exact defect masks.

Each image is a patch of a product housing (brushed or anodized metal, or cover glass) with its
edges (bevel, polished chamfer), sometimes a logo, under a lighting gradient with vignetting, seen
through a noisy sensor (read noise + shot noise), with a small pose jitter. A defect part carries
one of three defects, with its pixel mask (0 background, 255 defect):

* ``scratch``: thin curved lines, bright or dark, 1-3 px, one to three segments;
* ``stain``: a soft irregular film (oil, water mark, fingerprint, haze), darker, brighter or tinted;
* ``dent``: a height bump whose slope shades the surface, plus a slight warp of the texture.

The mask is where the defect changes the rendered (noise-free) image by a visible amount, plus the
defect's core, closed morphologically; outside it the image is exactly the defect-free render
(:func:`render_with_reference` returns both). Every defect changes some pixels by >= 6 gray levels.
Image ``i`` of a run with seed ``S`` is drawn only from ``np.random.default_rng([S, i])``, label
included: a data set is identical whatever the number of worker processes, and a run can be sharded.

    ds = simulate_dataset("data/sim", n=2000, seed=0)
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Iterator, List, Literal, Optional, Sequence, Tuple, TypeVar, Union

import cv2
import numpy as np
from pydantic import Field, field_validator

from lineguard.config import StrictModel, dump_config
from lineguard.data.format import CLASSES_FILE, MANIFEST_FILE, ClassFile, Dataset, DatasetError, Origin, Record
from lineguard.data.imaging import sha256_bytes, write_png
from lineguard.data.progress import track
from lineguard.files import sync_all
from lineguard.workers import init_worker, keep_freed_memory, mp_context

__all__ = [
    "CLASSES",
    "DEFECTS",
    "SIMULATOR_VERSION",
    "SURFACES",
    "SimulatorConfig",
    "render",
    "render_with_reference",
    "simulate_dataset",
]

SIMULATOR_VERSION = "1"
DEFECTS = ("scratch", "stain", "dent")
SURFACES = ("brushed", "anodized", "glass")
CLASSES = ["dent", "scratch", "stain", "ok"]  # class index order of classes.yaml, the OK class last
OK = "ok"

_F32 = np.float32
Roi = Tuple[int, int, int, int]  # y0, y1, x0, x1 (exclusive)
T = TypeVar("T")


class SimulatorConfig(StrictModel):
    """What the simulator renders. Unknown keys are rejected."""

    size: int = Field(256, ge=64, le=2048, description="square image side in px")
    channels: Literal[1, 3] = Field(1, description="1 = gray, 3 = RGB")
    ok_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of OK parts")
    defects: List[str] = Field(default_factory=lambda: list(DEFECTS), description="defect classes drawn")
    surfaces: List[str] = Field(default_factory=lambda: list(SURFACES), description="surface kinds drawn")
    noise: float = Field(1.0, ge=0.0, le=5.0, description="sensor noise scale (0 = noise-free)")

    @field_validator("defects")
    @classmethod
    def _known_defects(cls, v: List[str]) -> List[str]:
        return _subset(v, DEFECTS, "defect")

    @field_validator("surfaces")
    @classmethod
    def _known_surfaces(cls, v: List[str]) -> List[str]:
        return _subset(v, SURFACES, "surface")


def _subset(v: List[str], known: Tuple[str, ...], what: str) -> List[str]:
    unknown = [x for x in v if x not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}, known: {list(known)}")
    if not v or len(set(v)) != len(v):
        raise ValueError(f"{what}s must be a non-empty list without repeats, got {v}")
    return v


# --------------------------------------------------------------------------------------------------
# scene


_LOW = 64  # side of the grid on which smooth fields (light, reflections, mottling) are computed


@lru_cache(maxsize=4)
def _grids(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel x and y coordinates (read-only, cached per size)."""
    ax = np.arange(size, dtype=_F32)
    xx, yy = np.meshgrid(ax, ax)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


@lru_cache(maxsize=1)
def _low_grid() -> Tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1] of the low-resolution grid, as cv2.resize maps it onto the image."""
    ax = (np.arange(_LOW, dtype=_F32) + _F32(0.5)) * _F32(2 / _LOW) - _F32(1)
    xn, yn = np.meshgrid(ax, ax)
    xn.setflags(write=False)
    yn.setflags(write=False)
    return xn, yn


def _max0(a: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """max(a, 0) for float32 (cv2.threshold: several times faster than np.maximum with a scalar)."""
    return cv2.threshold(a, 0, 0, cv2.THRESH_TOZERO, dst=out)[1]


def _min0(a: np.ndarray) -> np.ndarray:
    """min(a, 0) for float32."""
    return cv2.threshold(a, 0, 0, cv2.THRESH_TRUNC)[1]


def _up(small: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=1)
def _gauss_lut() -> np.ndarray:
    q = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float64)
    return (q / q.std()).astype(_F32)


def _noise(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Unit normal noise quantised to 256 levels: random bytes through a lookup table (fast)."""
    n = int(np.prod(shape))
    raw = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n].reshape(shape)
    return cv2.LUT(raw, _gauss_lut())


def _smooth_noise(rng: np.random.Generator, cells: int, h: int, w: int) -> np.ndarray:
    """Low-frequency noise: a small random grid upsampled (bicubic, then bilinear when large)."""
    small = rng.standard_normal((cells, cells), dtype=_F32)
    if max(h, w) > 48:
        small = cv2.resize(small, (min(w, 32), min(h, 32)), interpolation=cv2.INTER_CUBIC)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


class _Scene:
    """The defect-free scene: per-pixel maps composed by :func:`_compose`."""

    size: int
    scale: float  # size / 256: lengths are given for 256 px and scaled
    surface: str
    edge: bool  # some product edge is in view (else the face fills the frame)
    din: np.ndarray  # distance inside the product edge in px (negative outside)
    alpha: np.ndarray  # product coverage 0..1 (anti-aliased edge)
    albedo: np.ndarray  # face reflectance incl. texture, logo, reflections, chamfer highlight
    height: np.ndarray  # surface height in px (bevel); defects add to it
    bg: np.ndarray  # background luminance incl. the product's shadow
    light: np.ndarray  # lighting (gradient x vignetting) in gray levels per unit reflectance
    kernel: np.ndarray  # 3x3 filter: height -> slope toward the light
    ks: float  # diffuse shading per unit slope (relative)
    kref: float  # specular shading per unit slope (absolute)
    tint_face: np.ndarray  # RGB tints (3,)
    tint_bg: np.ndarray


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=_F32) / 8


def _build_scene(rng: np.random.Generator, size: int, surface: str) -> _Scene:
    sc = _Scene()
    s = size / 256.0
    sc.size, sc.scale, sc.surface = size, s, surface
    xn, yn = _low_grid()

    # geometry: a rounded rectangle, each side in view with p=0.3, small rotation (pose jitter)
    off = [rng.uniform(0.04, 0.24) if rng.random() < 0.3 else -rng.uniform(0.05, 0.5) for _ in range(4)]
    left, right, top, bottom = off[0] * size, size * (1 - off[1]), off[2] * size, size * (1 - off[3])
    cx, cy = (left + right) / 2, (top + bottom) / 2
    hw, hh = (right - left) / 2, (bottom - top) / 2
    rad = min(rng.uniform(0.04, 0.2) * size, 0.9 * min(hw, hh))
    ang = math.radians(min(3.0, max(-3.0, rng.normal(0.0, 1.3))))
    ca, sa = math.cos(ang), math.sin(ang)
    box = (cx, cy, hw, hh, rad, ca, sa)
    # the distance map on a 4x coarser grid, upsampled: exact along straight edges, and off by well
    # under 0.2 px on the rounded corners (radius >= 10 px at 256 px)
    n = -(-size // 4)
    coarse = (np.arange(n, dtype=_F32) + _F32(0.5)) * _F32(size / n) - _F32(0.5)
    din_coarse = _inside_distance(coarse, box)
    din = _up(din_coarse, size)
    sc.din = din
    dmin = float(din.min())
    sc.edge = dmin < 8 * s + 2  # bevel, chamfer or background in view
    sc.alpha = np.clip(din + _F32(0.5), _F32(0), _F32(1))

    # bevel: a rounded ramp of width w up to the flat face
    w = rng.uniform(2.5, 7.0) * s
    t = np.clip(din * _F32(1 / w), _F32(0), _F32(1))
    sc.height = t * (_F32(2 * w) - _F32(w) * t)

    # light: a gradient toward the light, vignetting, overall gain (in gray levels)
    beta = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(beta), math.sin(beta)
    grad, vig, gain = rng.uniform(0.0, 0.3), rng.uniform(0.0, 0.35), 255 * rng.uniform(0.85, 1.15)
    sc.light = _up((_F32(gain) + _F32(gain * grad * lx) * xn + _F32(gain * grad * ly) * yn)
                   * (1 - _F32(vig / 2) * (xn * xn + yn * yn)), size)
    # slope toward the light: a surface rising away from the light turns from it
    sc.kernel = -(_F32(lx) * _SOBEL_X + _F32(ly) * _SOBEL_X.T)

    # one noise field textures both the face and the background (they do not overlap)
    noise = _noise(rng, (size, size))

    if surface == "brushed":
        base = rng.uniform(0.45, 0.72)
        k = max(3, int(rng.uniform(0.15, 0.5) * size)) | 1
        amp = rng.uniform(0.02, 0.05)
        tex = cv2.scaleAdd(cv2.blur(noise, (k, 1)), amp * math.sqrt(k) * 0.8, noise * _F32(amp * 0.25))
        tex += rng.standard_normal((size, 1), dtype=_F32) * _F32(amp * 0.5)  # groove depth per row
        rot = cv2.getRotationMatrix2D((size / 2, size / 2), -math.degrees(ang), 1.0)
        tex = cv2.warpAffine(tex, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # anisotropic highlight: a soft band across the brushing direction
        u = ca * xn + sa * yn - _F32(rng.uniform(-0.9, 0.9))
        smooth = cv2.exp(np.maximum(u * u * _F32(-1 / rng.uniform(0.08, 0.4) ** 2), _F32(-30)))
        smooth = smooth * _F32(rng.uniform(0.0, 0.22)) + _F32(base)
        sc.ks, sc.kref = rng.uniform(0.12, 0.25), rng.uniform(0.05, 0.2)
        tints = ((1.0, 1.0, 1.0), (1.02, 1.0, 0.97), (0.97, 1.0, 1.04), (1.12, 1.0, 0.8))
    elif surface == "anodized":
        base = rng.uniform(0.25, 0.65)
        tex = cv2.GaussianBlur(noise, (0, 0), 0.8) * _F32(rng.uniform(0.02, 0.05))
        smooth = _smooth_noise(rng, 6, _LOW, _LOW) * _F32(rng.uniform(0.005, 0.02)) + _F32(base)
        sc.ks, sc.kref = rng.uniform(0.12, 0.25), rng.uniform(0.03, 0.1)
        tints = ((1.0, 1.0, 1.0), (0.96, 0.99, 1.05), (0.7, 0.95, 1.35), (1.2, 0.95, 0.9),
                 (0.85, 1.1, 0.95), (1.35, 0.82, 0.8), (1.15, 1.0, 0.8))
    else:  # glass: dark and smooth, lit by soft reflections of the lamps
        tex = noise * _F32(0.004)
        smooth = np.full((_LOW, _LOW), rng.uniform(0.05, 0.14), dtype=_F32)
        for _ in range(int(rng.integers(1, 3))):
            phi = rng.uniform(0, math.pi)
            u = math.cos(phi) * xn + math.sin(phi) * yn
            u0 = rng.uniform(-1.2, 0.8)
            u1 = u0 + rng.uniform(0.15, 0.8)
            soft = _F32(1 / rng.uniform(0.08, 0.4))
            ramp = np.clip((u - _F32(u0)) * soft, 0, 1) * np.clip((_F32(u1) - u) * soft, 0, 1)
            smooth += ramp * _F32(rng.uniform(0.05, 0.25))
        sc.ks, sc.kref = rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.3)
        tints = ((0.95, 1.0, 1.08), (1.0, 1.0, 1.0))
    albedo = tex
    albedo += _up(smooth, size)
    ink = rng.uniform(5, 18) * s  # the black printed border of cover glass
    if surface == "glass" and dmin < ink:
        albedo -= np.clip(_F32(ink) - din, _F32(0), _F32(1)) * (albedo - _F32(0.03))

    # polished chamfer: a thin bright line along the edge
    rim_amp = rng.uniform(0.1, 0.45)
    if sc.edge:
        rim = din - _F32(1.3 * s)
        rim *= rim
        rim = np.clip(_F32(1) - rim * _F32(1 / (1.2 * s) ** 2), _F32(0), _F32(1))
        albedo += rim * _F32(rim_amp)

    if rng.random() < 0.35:
        _logo(rng, sc, albedo)
    sc.albedo = albedo

    # background: a dark fixture or ESD mat, and the product's soft shadow
    bgl = rng.uniform(0.04, 0.2)
    mottle = _smooth_noise(rng, 8, n, n) * _F32(0.15 * bgl) + _F32(bgl)
    shade_len, shade = rng.uniform(4, 14) * s, rng.uniform(0.2, 0.7)
    if sc.edge:  # the shadow is smooth: computed on the coarse grid
        # din >= -0.4 size outside, so the exponent stays far from float32 underflow
        shadow = cv2.exp(_min0(din_coarse) * _F32(1 / shade_len))
        mottle *= _F32(1) - shadow * _F32(shade)
        bg = noise * _F32(0.08)
        bg += _F32(1)
        bg *= _up(mottle, size)
        sc.bg = bg

    sc.tint_face = np.array(tints[int(rng.integers(len(tints)))], dtype=_F32)
    bg_tints = ((1.0, 1.0, 1.0), (0.8, 1.12, 1.0), (0.8, 0.95, 1.3), (1.05, 1.0, 0.95))
    sc.tint_bg = np.array(bg_tints[int(rng.integers(len(bg_tints)))], dtype=_F32)
    return sc


def _inside_distance(ax: np.ndarray, box: Tuple[float, ...]) -> np.ndarray:
    """Signed distance inside a rotated rounded rectangle, at pixel positions ``ax`` x ``ax``."""
    cx, cy, hw, hh, rad, ca, sa = box
    dx, dy = ax - _F32(cx), ax - _F32(cy)
    qx = (ca * dx)[None, :] + (sa * dy)[:, None]
    np.abs(qx, out=qx)
    qx -= _F32(hw - rad)
    qy = (ca * dy)[:, None] - (sa * dx)[None, :]
    np.abs(qy, out=qy)
    qy -= _F32(hh - rad)
    inner = _min0(np.maximum(qx, qy))
    din = cv2.magnitude(_max0(qx), _max0(qy))
    din += inner
    np.subtract(_F32(rad), din, out=din)
    return din


def _logo(rng: np.random.Generator, sc: _Scene, albedo: np.ndarray) -> None:
    """Put a printed or polished mark on the face (in place): a few letters or a ring."""
    s = sc.scale
    text = None
    if rng.random() < 0.6:
        text = "".join(_pick(rng, "ABCDEFGHKLMNPRSTUVXZ0123456789") for _ in range(int(rng.integers(2, 5))))
        font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)[
            int(rng.integers(3))]
        fs = rng.uniform(0.4, 1.0) * s
        th = max(1, round(rng.uniform(1, 2.5) * s))
        (tw, tht), base = cv2.getTextSize(text, font, fs, th)
        hx, hy = tw / 2, (tht + base) / 2
    else:
        hx = hy = rng.uniform(8, 22) * s
        th = max(1, round(rng.uniform(1.5, 4) * s))
    c = _place(rng, sc, max(hx, hy) + 4 * s)
    if c is None:
        return
    y0, y1, x0, x1 = _roi_around(sc.size, c[0] - hx, c[1] - hy, c[0] + hx, c[1] + hy, th + 2)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    x, y = int(c[0]) - x0, int(c[1]) - y0
    if text is not None:
        cv2.putText(canvas, text, (int(x - hx), int(y + tht / 2)), font, fs, 255, th, cv2.LINE_AA)
    else:
        cv2.circle(canvas, (x, y), int(hx), 255, th, cv2.LINE_AA)
    a = canvas.astype(_F32) * _F32(rng.uniform(0.3, 0.8) / 255)
    alb = albedo[y0:y1, x0:x1]
    alb += a * (_F32(rng.uniform(0.15, 0.85)) - alb)


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """A uniform choice (much faster than ``rng.choice`` on a Python sequence)."""
    return items[int(rng.integers(len(items)))]


def _place(rng: np.random.Generator, sc: _Scene, margin: float) -> Optional[Tuple[float, float]]:
    """A random point of the face at least ``margin`` px inside the product edge (None if none)."""
    size = sc.size
    for _ in range(60):
        x, y = rng.uniform(0, size - 1), rng.uniform(0, size - 1)
        if sc.din[int(y), int(x)] > margin:
            return x, y
    return None


def _roi_around(size: int, x0: float, y0: float, x1: float, y1: float, pad: float) -> Roi:
    return (max(0, int(y0 - pad)), min(size, math.ceil(y1 + pad) + 1),
            max(0, int(x0 - pad)), min(size, math.ceil(x1 + pad) + 1))


def _compose(sc: _Scene, albedo: np.ndarray, height: np.ndarray, roi: Roi, flat: bool = False) -> np.ndarray:
    """Luminance in gray levels (noise-free) of ``roi`` from full-size albedo and height maps.

    ``flat``: the height map is known to be flat there (no shading to compute)."""
    y0, y1, x0, x1 = roi
    alb = albedo[y0:y1, x0:x1]
    if flat:
        face = alb.copy()
    else:
        n = sc.size
        py0, py1, px0, px1 = max(y0 - 1, 0), min(y1 + 1, n), max(x0 - 1, 0), min(x1 + 1, n)
        slope = cv2.filter2D(height[py0:py1, px0:px1], -1, sc.kernel)
        slope = slope[y0 - py0:y0 - py0 + y1 - y0, x0 - px0:x0 - px0 + x1 - x0]
        face = alb * _F32(sc.ks)
        face += _F32(sc.kref)
        face *= slope
        face += alb
        _max0(face, out=face)
    if sc.edge:
        bg = sc.bg[y0:y1, x0:x1]
        face -= bg
        face *= sc.alpha[y0:y1, x0:x1]
        face += bg
    face *= sc.light[y0:y1, x0:x1]
    return face


# --------------------------------------------------------------------------------------------------
# defects: each returns the region it touches, the changed albedo/height maps, its core (a boolean map
# of the region that is part of the mask however faint) and an optional RGB tint of the region


class _Defect:
    roi: Roi
    albedo: np.ndarray
    height: np.ndarray
    core: np.ndarray
    tint: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (alpha of the region, RGB tint)


def _scratch(rng: np.random.Generator, sc: _Scene, k: float) -> Optional[_Defect]:
    size, s = sc.size, sc.scale
    length = rng.uniform(0.06, 0.45) * size * k
    for _ in range(8):
        c = _place(rng, sc, 4 * s + 2)
        if c is None:
            return None
        step = 2.0 * s
        m = max(4, int(length / step))
        phi = rng.uniform(0, 2 * math.pi)
        bend = rng.normal(0, 1.0) / max(length, 1.0)
        sarc = np.arange(m) * step
        ang = phi + bend * sarc + np.cumsum(rng.normal(0, 0.03, m))
        pts = np.stack([np.cumsum(np.cos(ang)) * step, np.cumsum(np.sin(ang)) * step], 1)
        pts += np.array(c) - pts.mean(0)
        ix = np.clip(pts.astype(int), 0, size - 1)
        if (sc.din[ix[:, 1], ix[:, 0]] > 3 * s + 1).all():
            break
        length *= 0.7
    else:
        return None
    # one to three segments: gaps in the stroke, or a second near-parallel stroke
    strokes = [pts]
    nseg = _pick(rng, (1, 1, 1, 2, 2, 3))
    if nseg > 1 and m >= 12:
        if rng.random() < 0.5:
            cuts = np.sort(rng.choice(np.arange(3, m - 3), nseg - 1, replace=False))
            strokes, prev = [], 0
            for cu in cuts:
                gap = int(rng.integers(1, 4))
                strokes.append(pts[prev:max(prev + 2, cu - gap)])
                prev = cu + gap
            strokes.append(pts[min(prev, m - 2):])
        else:
            for _ in range(nseg - 1):
                shift = rng.normal(0, 3 * s, 2)
                a, b = sorted(rng.choice(np.arange(m), 2, replace=False))
                seg = pts[a:max(b, a + 3)] + shift
                ix = np.clip(seg.astype(int), 0, size - 1)
                if (sc.din[ix[:, 1], ix[:, 0]] > 3 * s + 1).all():
                    strokes.append(seg)
    thick = max(1, round(_pick(rng, (1, 1, 1, 1, 2, 2, 3)) * max(1.0, s * 0.75)))
    allp = np.concatenate(strokes)
    roi = _roi_around(size, allp[:, 0].min(), allp[:, 1].min(), allp[:, 0].max(), allp[:, 1].max(),
                      thick + 3)
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
            taper = 0.6 if j == 0 or j + 7 >= len(q) else 1.0  # shallower at the ends
            cv2.polylines(canvas, [q[j:j + 7]], False, int(255 * level * taper), thick, cv2.LINE_AA, shift)
    a = canvas.astype(_F32) * _F32(1 / 255)
    inside = sc.din[y0:y1, x0:x1] > 1
    a *= inside
    bright = rng.random() < (0.85 if sc.surface == "glass" else 0.6)
    alb = sc.albedo[y0:y1, x0:x1]
    d = _Defect()
    d.albedo = sc.albedo.copy()
    if bright:
        c = rng.uniform(0.05, 0.4) if sc.surface != "glass" else rng.uniform(0.04, 0.3)
        d.albedo[y0:y1, x0:x1] = alb + a * _F32(c)
    else:
        d.albedo[y0:y1, x0:x1] = alb * (1 - a * _F32(rng.uniform(0.12, 0.6)))
    d.roi, d.height, d.core = roi, sc.height, (a > 0.4) & inside
    return d


def _stain(rng: np.random.Generator, sc: _Scene, k: float) -> Optional[_Defect]:
    size, s = sc.size, sc.scale
    r = max(3.0, rng.uniform(5, 28) * s * k)
    elong = rng.uniform(1.0, 1.8)
    ra, rb = r * elong, r / elong
    c = _place(rng, sc, ra * 1.3 + 3)
    if c is None:
        return None
    cx, cy = c
    roi = _roi_around(size, cx - ra * 1.3, cy - ra * 1.3, cx + ra * 1.3, cy + ra * 1.3, 2)
    y0, y1, x0, x1 = roi
    h, w = y1 - y0, x1 - x0
    xx, yy = _grids(size)
    gx_, gy_ = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]

    def smooth(cells: int) -> np.ndarray:
        return _smooth_noise(rng, cells, h, w)

    # the outline: one ellipse, or a splatter of two or three, with a wobbly edge
    field, rho2 = None, None
    for b in range(_pick(rng, (1, 1, 2, 3))):
        th = rng.uniform(0, math.pi)
        f = 1.0 if b == 0 else rng.uniform(0.35, 0.7)
        ox, oy = (0.0, 0.0) if b == 0 else tuple(rng.uniform(-0.55, 0.55, 2) * ra)
        dx, dy = gx_ - _F32(cx + ox), gy_ - _F32(cy + oy)
        u = (math.cos(th) * dx + math.sin(th) * dy) * _F32(1 / (ra * f))
        v = (math.cos(th) * dy - math.sin(th) * dx) * _F32(1 / (rb * f))
        r2 = u * u + v * v
        field = 1 - r2 if field is None else np.maximum(field, 1 - r2)
        rho2 = r2 if rho2 is None else rho2
    field = field + smooth(6) * _F32(rng.uniform(0.1, 0.3))
    soft = _F32(1 / rng.uniform(0.2, 0.7))
    env = np.clip(field * soft, 0, 1)
    env = cv2.GaussianBlur(env, (0, 0), max(0.6, 0.8 * s))
    kind = _pick(rng, ("oil", "water", "finger", "haze"))
    if kind == "finger":  # loops of ridges, distorted and broken
        period = rng.uniform(3.0, 5.0) * s
        warp = smooth(4) * _F32(rng.uniform(1.5, 4.0)) + smooth(9) * _F32(0.8)
        ridge = np.sin(np.sqrt(rho2) * _F32(2 * math.pi * r / period) + warp)
        broken = np.clip(smooth(10) * _F32(1.5) + _F32(0.8), 0, 1)
        a = env * (0.3 + 0.7 * np.clip(ridge, 0, 1) * broken)
    elif kind == "water":  # coffee-ring: dried residue concentrates at the rim
        ring = env * (1 - env) * 4
        a = np.clip(ring * _F32(0.9) + env * _F32(0.2), 0, 1)
    else:  # a film of uneven thickness
        a = env * np.clip(_F32(0.8) + smooth(5) * _F32(rng.uniform(0.05, 0.25)), 0.3, 1)
    inside = sc.din[y0:y1, x0:x1] > 1
    a = a * inside
    alb = sc.albedo[y0:y1, x0:x1]
    d = _Defect()
    d.albedo = sc.albedo.copy()
    darker = sc.surface != "glass" and rng.random() < 0.75
    if darker:
        d.albedo[y0:y1, x0:x1] = alb * (1 - a * _F32(rng.uniform(0.08, 0.45)))
    else:  # a film scatters light: a haze, visible on dark and smooth surfaces
        d.albedo[y0:y1, x0:x1] = alb + a * _F32(rng.uniform(0.03, 0.16))
    tints = {"oil": (1.1, 1.0, 0.75), "water": (0.95, 1.0, 1.1), "finger": (1.03, 1.0, 0.95),
             "haze": (1.0, 1.0, 1.0)}
    d.tint = (a, np.array(tints[kind], dtype=_F32))
    d.roi, d.height, d.core = roi, sc.height, (env > 0.4) & inside
    return d


def _dent(rng: np.random.Generator, sc: _Scene, k: float) -> Optional[_Defect]:
    size, s = sc.size, sc.scale
    sig = max(2.0, rng.uniform(2.5, 13) * s * k)
    elong = rng.uniform(1.0, 2.2)
    sa_, sb_ = sig * elong, sig / math.sqrt(elong)
    c = _place(rng, sc, 3 * sa_ + 3)
    if c is None:
        return None
    cx, cy = c
    roi = _roi_around(size, cx - 3 * sa_, cy - 3 * sa_, cx + 3 * sa_, cy + 3 * sa_, 2)
    y0, y1, x0, x1 = roi
    xx, yy = _grids(size)
    th = rng.uniform(0, math.pi)
    dx, dy = xx[y0:y1, x0:x1] - _F32(cx), yy[y0:y1, x0:x1] - _F32(cy)
    u = (math.cos(th) * dx + math.sin(th) * dy) * _F32(1 / sa_)
    v = (math.cos(th) * dy - math.sin(th) * dx) * _F32(1 / sb_)
    g = cv2.exp((u * u + v * v) * _F32(-0.5))
    # a sharp impact centre on a wider, shallow deformation
    g = g * _F32(0.7) + cv2.exp((u * u + v * v) * _F32(-2.0)) * _F32(0.3)
    contrast = rng.uniform(0.06, 0.45)  # shading swing it causes, as a fraction of the surface level
    depth = contrast * min(sa_, sb_) / (0.6 * (sc.ks + sc.kref / 0.5))
    d = _Defect()
    d.height = sc.height.copy()
    d.height[y0:y1, x0:x1] -= g * _F32(depth)
    # the metal flows: texture (and reflections) shift along the slope
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    peak = float(np.abs(gx).max() + np.abs(gy).max()) / 2 + 1e-6
    shift = _F32(rng.uniform(0.5, 3.5) * s / peak)
    if sc.surface == "glass":
        shift *= 2
    shift = np.clip(g * _F32(5), 0, 1) * shift  # no creeping shift far out
    mapx = xx[y0:y1, x0:x1] + gx * shift
    mapy = yy[y0:y1, x0:x1] + gy * shift
    d.albedo = sc.albedo.copy()
    d.albedo[y0:y1, x0:x1] = cv2.remap(sc.albedo, mapx, mapy, cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT)
    d.roi, d.core = roi, (g > 0.35) & (sc.din[y0:y1, x0:x1] > 1)
    return d


_MAKERS = {"scratch": _scratch, "stain": _stain, "dent": _dent}


# --------------------------------------------------------------------------------------------------
# rendering


def _draw_label(rng: np.random.Generator, cfg: SimulatorConfig) -> str:
    u = rng.random()
    if u < cfg.ok_fraction or cfg.ok_fraction >= 1.0:
        return OK
    k = int((u - cfg.ok_fraction) / (1.0 - cfg.ok_fraction) * len(cfg.defects))
    return cfg.defects[min(k, len(cfg.defects) - 1)]


def _sensor(lum: np.ndarray, sc: _Scene, z: np.ndarray, read: float, shot: float,
            tint: Optional[Tuple[Roi, np.ndarray, np.ndarray]], channels: int) -> np.ndarray:
    """Colour, then read + shot noise from the fixed draw ``z``, then quantise (rounding, saturating)."""
    if channels == 3:
        if sc.edge:
            tmap = sc.alpha[..., None] * (sc.tint_face - sc.tint_bg)
            tmap += sc.tint_bg
        else:
            tmap = np.broadcast_to(sc.tint_face, (sc.size, sc.size, 3))
        if tint is not None:
            (y0, y1, x0, x1), a, col = tint
            tmap = tmap.copy()
            tmap[y0:y1, x0:x1] *= 1 + a[..., None] * (col - 1)
        sig = lum[..., None] * tmap
    else:
        sig = lum
    if read > 0 or shot > 0:
        std = cv2.sqrt(sig * _F32(shot) + _F32(read * read))
        std *= z
        return cv2.add(sig, std, dtype=cv2.CV_8U)
    return cv2.add(sig, _F32(0) * sig, dtype=cv2.CV_8U)


def render_with_reference(cfg: SimulatorConfig, seed: int, index: int
                          ) -> Tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """Like :func:`render`, plus the same part without its defect (same surface, light and noise)."""
    return _render(cfg, seed, index, reference=True)  # type: ignore[return-value]


def render(cfg: SimulatorConfig, seed: int, index: int) -> Tuple[np.ndarray, np.ndarray, str]:
    """Image (HxW or HxWx3 RGB uint8), mask (HxW uint8 0/255) and label of image ``index`` of a run."""
    return _render(cfg, seed, index, reference=False)[:3]  # type: ignore[return-value]


def _render(cfg: SimulatorConfig, seed: int, index: int, reference: bool) -> tuple:
    rng = np.random.default_rng([int(seed), int(index)])
    label = _draw_label(rng, cfg)
    size = cfg.size
    surfaces = cfg.surfaces
    if label == "dent" and len(surfaces) > 1:  # glass does not dent; metal does
        surfaces = [x for x in surfaces if x != "glass"] or surfaces
    surface = surfaces[int(rng.integers(len(surfaces)))]
    sc = _build_scene(rng, size, surface)
    clean = _compose(sc, sc.albedo, sc.height, (0, size, 0, size), flat=not sc.edge)
    mask = np.zeros((size, size), np.uint8)
    lum, tint = clean, None
    if label != OK:
        d = None
        for k in (1.0, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1):  # smaller when the part shows little face
            d = _MAKERS[label](rng, sc, k)
            if d is not None:
                break
        if d is None:
            raise RuntimeError(f"seed {seed} image {index}: no room for a {label} on the part")
        y0, y1, x0, x1 = d.roi
        ref = clean[y0:y1, x0:x1]
        dlum = _compose(sc, d.albedo, d.height, d.roi)
        diff = dlum - ref
        peak = float(np.abs(diff).max())
        floor = 6.0  # every defect changes some pixels by at least 6 gray levels
        if peak < floor:
            diff *= _F32(floor / max(peak, 1e-6))
            dlum = ref + diff
            peak = floor
        # the mask: where the change is visible (also smoothed, so that texture does not fray it),
        # plus the core; outside it the part is left exactly as without the defect
        thr = max(3.0, min(0.2 * peak, 6.0))
        adiff = np.abs(diff)
        vis = cv2.GaussianBlur(adiff, (0, 0), 0.8)
        m = ((vis > _F32(0.7 * thr)) | (adiff > _F32(thr)) | d.core) & (sc.din[y0:y1, x0:x1] > 0.5)
        m = cv2.morphologyEx(m.view(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        mask[y0:y1, x0:x1] = m * np.uint8(255)
        lum = clean.copy()
        lum[y0:y1, x0:x1] = np.where(m.view(bool), dlum, ref)
        if d.tint is not None:
            tint = (d.roi, d.tint[0] * m, d.tint[1])
    # sensor: read noise and shot noise, one draw shared by the image and its reference
    z = _noise(rng, (size, size, 3) if cfg.channels == 3 else (size, size))
    read = rng.uniform(0.6, 2.5) * cfg.noise
    shot = rng.uniform(0.01, 0.06) * cfg.noise ** 2
    img = _sensor(lum, sc, z, read, shot, tint, cfg.channels)
    if not reference:
        return img, mask, label
    return img, mask, label, _sensor(clean, sc, z, read, shot, None, cfg.channels)


# --------------------------------------------------------------------------------------------------
# data sets


def _ident(index: int, width: int) -> str:
    return f"sim-{index:0{width}d}"


def _render_range(cfg: SimulatorConfig, seed: int, start: int, stop: int, out: str, width: int
                  ) -> List[Tuple[int, str, str, str]]:
    """Render and write images ``start..stop-1``; returns (index, label, image sha256) per image."""
    root = Path(out)
    rows = []
    for i in range(start, stop):
        img, mask, label = render(cfg, seed, i)
        ident = _ident(i, width)
        data = write_png(root / "images" / f"{ident}.png", img, durable=False)  # synced before the manifest
        mask_data = write_png(root / "masks" / f"{ident}.png", mask, durable=False)
        rows.append((i, label, sha256_bytes(data), sha256_bytes(mask_data)))
    return rows


def _mp_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes that have imported this module once (:func:`lineguard.workers.mp_context`)."""
    return mp_context(__name__)


def _init_worker() -> None:
    init_worker()  # the workers (and their fork server) die with this process, even SIGKILLed
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only compete
    # Rendering makes many short-lived arrays of a few 100 kB: keeping freed memory in the heap halves
    # the render time (only in these worker processes, and only on glibc).
    keep_freed_memory()


def _results(cfg: SimulatorConfig, n: int, seed: int, out: Path, width: int, workers: int
             ) -> Iterator[Tuple[int, str, str, str]]:
    """(index, label, image sha256, mask sha256) of every image once written, in the order they are done."""
    chunk = max(1, min(32, math.ceil(n / max(1, workers * 4))))
    if workers <= 1 or n <= chunk:
        for i in range(n):
            yield from _render_range(cfg, seed, i, i + 1, str(out), width)
        return
    spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_init_worker) as ex:
        futs = [ex.submit(_render_range, cfg, seed, a, b, str(out), width) for a, b in spans]
        try:
            # Starting a worker costs ~0.5 s (imports): meanwhile, this process renders chunks from
            # the back of the queue itself, until the first worker result arrives.
            for f, (a, b) in zip(reversed(futs), reversed(spans)):
                if any(x.done() for x in futs) or not f.cancel():
                    break
                yield from _render_range(cfg, seed, a, b, str(out), width)
            for f in as_completed(futs):
                if not f.cancelled():
                    yield from f.result()
        finally:
            for f in futs:
                f.cancel()


def simulate_dataset(out: Union[str, Path], n: int, seed: int = 0, cfg: Optional[SimulatorConfig] = None,
                     workers: int = 2, progress: bool = True) -> Dataset:
    """Render ``n`` parts into the data set folder ``out`` (lineguard format) and return the Dataset."""
    cfg = cfg if cfg is not None else SimulatorConfig()
    out = Path(out)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name in (CLASSES_FILE, MANIFEST_FILE):
        if (out / name).exists():
            raise DatasetError(f"{out}: already holds a data set ({name} exists); simulate into a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "simulator.yaml")
    width = max(6, len(str(max(n - 1, 0))))
    rows: List[Optional[Tuple[str, str, str]]] = [None] * n
    for i, label, sha, mask_sha in track(_results(cfg, n, seed, out, width, workers), "simulate", enabled=progress,
                               total=n):
        rows[i] = (label, sha, mask_sha)
    origin = Origin(kind="generator", name="line-simulator", version=SIMULATOR_VERSION, seed=seed)
    records = []
    for i, row in enumerate(rows):
        assert row is not None
        ident = _ident(i, width)
        records.append(Record(id=ident, image=f"images/{ident}.png", label=row[0], mask=f"masks/{ident}.png",
                              source="simulated", origin=origin, sha256=row[1], mask_sha256=row[2], width=cfg.size,
                              height=cfg.size))
    ds = Dataset(out, ClassFile(classes=list(CLASSES), ok_class=OK), records)
    sync_all(out)  # every image and mask, before the manifest that names them
    ds.save()
    return ds
