"""One part of a run: image ``index`` of a run with seed ``S`` is drawn only from
``np.random.default_rng([S, index])``, label included, so any part can be rendered alone, in any order, in any
process (the virtual camera: :func:`render_part`, no disk).

The mask (0 background, 255 defect) is where the defect changes the rendered (noise-free) image by a visible
amount, plus the defect's core, closed morphologically; outside it the image is exactly the defect-free
render (:func:`render_with_reference` returns both). Every defect changes some pixels by >= 6 gray levels.

    part = render_part(SimulatorConfig(size=256), seed=0, index=17)    # part.image, part.mask, part.label
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from .config import OK, SimulatorConfig
from .defects import Defect, make_defect
from .maps import F32, Roi, max0, pick
from .scene import Scene, build_scene
from .sensor import Sensor, Tint

__all__ = ["Part", "render_part", "render_with_reference"]

_FLOOR = 6.0  # every defect changes some pixels by at least this many gray levels


@dataclass
class Part:
    """One frame: ``image`` HxW (gray) or HxWx3 (RGB) uint8, ``mask`` HxW uint8 in {0, 255}, ``label``."""

    image: np.ndarray
    mask: np.ndarray
    label: str


def render_part(cfg: SimulatorConfig, seed: int, index: int) -> Part:
    """Image ``index`` of the run with ``seed``, with its mask and label."""
    return _render(cfg, seed, index)[0]


def render_with_reference(cfg: SimulatorConfig, seed: int, index: int) -> Tuple[Part, np.ndarray]:
    """Like :func:`render_part`, plus the image of the same part without its defect (same surface, light and
    sensor noise)."""
    part, sc, clean, sensor = _render(cfg, seed, index)
    return part, sensor.expose(clean, sc, None, cfg.channels)


def _draw_label(rng: np.random.Generator, cfg: SimulatorConfig) -> str:
    u = rng.random()
    if u < cfg.ok_fraction or cfg.ok_fraction >= 1.0:
        return OK
    k = int((u - cfg.ok_fraction) / (1.0 - cfg.ok_fraction) * len(cfg.defects))
    return cfg.defects[min(k, len(cfg.defects) - 1)]


def _render(cfg: SimulatorConfig, seed: int, index: int) -> Tuple[Part, Scene, np.ndarray, Sensor]:
    """(part, its scene, its defect-free luminance, its sensor draw)."""
    rng = np.random.default_rng([int(seed), int(index)])
    label = _draw_label(rng, cfg)
    size = cfg.size
    surfaces = cfg.surfaces
    if label == "dent" and len(surfaces) > 1:  # glass does not dent; metal does
        surfaces = [x for x in surfaces if x != "glass"] or surfaces
    sc = build_scene(rng, size, pick(rng, surfaces))
    clean = _luminance(sc, sc.product.albedo, sc.product.height, (0, size, 0, size), flat=not sc.product.edge)
    mask = np.zeros((size, size), np.uint8)
    lum, tint = clean, None
    if label != OK:
        d = make_defect(rng, sc, label, cfg.scratch)
        if d is None:
            raise RuntimeError(f"seed {seed} image {index}: no room for a {label} on the part")
        lum, tint = _apply(sc, d, clean, mask)
    sensor = Sensor.draw(rng, size, cfg.channels, cfg.noise)
    return Part(sensor.expose(lum, sc, tint, cfg.channels), mask, label), sc, clean, sensor


def _apply(sc: Scene, d: Defect, clean: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, Optional[Tint]]:
    """The luminance with defect ``d`` where it is visible (its mask, written into ``mask``), and its tint."""
    y0, y1, x0, x1 = d.roi
    ref = clean[y0:y1, x0:x1]
    dlum = _luminance(sc, d.albedo, d.height, d.roi)
    diff = dlum - ref
    peak = float(np.abs(diff).max())
    if peak < _FLOOR:
        diff *= F32(_FLOOR / max(peak, 1e-6))
        dlum = ref + diff
        peak = _FLOOR
    # the mask: where the change is visible (also smoothed, so that texture does not fray it), plus the
    # core; outside it the part is left exactly as without the defect
    thr = max(3.0, min(0.2 * peak, 6.0))
    adiff = np.abs(diff)
    vis = cv2.GaussianBlur(adiff, (0, 0), 0.8)
    m = ((vis > F32(0.7 * thr)) | (adiff > F32(thr)) | d.core) & (sc.product.din[y0:y1, x0:x1] > 0.5)
    m = cv2.morphologyEx(m.view(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    mask[y0:y1, x0:x1] = m * np.uint8(255)
    lum = clean.copy()
    lum[y0:y1, x0:x1] = np.where(m.view(bool), dlum, ref)
    tint = (d.roi, d.tint[0] * m, d.tint[1]) if d.tint is not None else None
    return lum, tint


def _luminance(sc: Scene, albedo: np.ndarray, height: np.ndarray, roi: Roi, flat: bool = False) -> np.ndarray:
    """Luminance in gray levels (noise-free) of ``roi`` from full-size albedo and height maps.

    ``flat``: the height map is known to be flat there (no shading to compute)."""
    p = sc.product
    y0, y1, x0, x1 = roi
    alb = albedo[y0:y1, x0:x1]
    if flat:
        face = alb.copy()
    else:
        n = sc.size
        py0, py1, px0, px1 = max(y0 - 1, 0), min(y1 + 1, n), max(x0 - 1, 0), min(x1 + 1, n)
        slope = cv2.filter2D(height[py0:py1, px0:px1], -1, sc.lighting.kernel)
        slope = slope[y0 - py0:y0 - py0 + y1 - y0, x0 - px0:x0 - px0 + x1 - x0]
        face = alb * F32(p.ks)
        face += F32(p.kref)
        face *= slope
        face += alb
        max0(face, out=face)
    if p.edge:
        assert sc.backdrop.luminance is not None  # there whenever an edge is in view
        bg = sc.backdrop.luminance[y0:y1, x0:x1]
        face -= bg
        face *= p.alpha[y0:y1, x0:x1]
        face += bg
    face *= sc.lighting.light[y0:y1, x0:x1]
    return face
