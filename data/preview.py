"""Contact sheets with mask overlays: one overview (a row per class) and one sheet per class."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Union

import cv2
import numpy as np
from pydantic import BaseModel

from .format import Dataset, Record
from .imaging import ImageFileError, binarize_mask, read_image, write_png

__all__ = ["PreviewReport", "preview_dataset", "render_tile"]

RED = (255, 40, 40)
LABEL_W = 140


class PreviewReport(BaseModel):
    """``lineguard data preview``'s result: the sheets written, {"overview" or class: path}."""

    root: str
    sheets: Dict[str, str]


def render_tile(image: np.ndarray, mask: Optional[np.ndarray], size: int) -> np.ndarray:
    """An RGB ``size`` x ``size`` tile: the image letterboxed, the mask tinted red with its outline."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    if mask is not None:
        m = binarize_mask(mask)
        tint = rgb.copy()
        tint[m] = RED
        rgb = cv2.addWeighted(rgb, 0.65, tint, 0.35, 0)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, RED, max(1, max(rgb.shape[:2]) // 160))
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, 3), 32, np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    tile[y:y + small.shape[0], x:x + small.shape[1]] = small
    return tile


def _tile(ds: Dataset, rec: Record, size: int) -> np.ndarray:
    try:
        img = read_image(ds.path(rec.image))[0]
        mask = read_image(ds.path(rec.mask))[0] if rec.mask else None
    except ImageFileError:
        img, mask = np.zeros((size, size), np.uint8), None
        cv2.putText(img, "unreadable", (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1, cv2.LINE_AA)
    return render_tile(img, mask, size)


def _caption(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.5) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)


def _grid(tiles: List[np.ndarray], cols: int, size: int, gap: int = 4) -> np.ndarray:
    rows = max(1, -(-len(tiles) // cols))
    sheet = np.full((rows * (size + gap) + gap, cols * (size + gap) + gap, 3), 16, np.uint8)
    for k, t in enumerate(tiles):
        y, x = (gap + i * (size + gap) for i in divmod(k, cols))
        sheet[y:y + size, x:x + size] = t
    return sheet


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def preview_dataset(root: Union[str, Path], out: Union[str, Path], per_class: int = 8, tile: int = 128,
                    split: Optional[str] = None, seed: int = 0) -> Dict[str, str]:
    """Write ``out`` (overview: a row of ``per_class`` samples per class) and ``<out>-<class>.png``
    sheets of up to 4 rows each; returns {"overview" or class: path}. Samples are drawn with ``seed``."""
    ds = Dataset.load(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: Dict[str, str] = {}
    rows = []
    for cls in ds.classes.classes:
        recs = [r for r in ds.records if r.label == cls and (split is None or r.split == split)]
        pick = [recs[i] for i in sorted(rng.permutation(len(recs))[:per_class * 4])]
        tiles = [_tile(ds, r, tile) for r in pick]
        row = _grid(tiles[:per_class] or [np.full((tile, tile, 3), 32, np.uint8)], per_class, tile)
        band = np.full((row.shape[0], LABEL_W, 3), 16, np.uint8)
        ok = " (OK)" if cls == ds.classes.ok_class else ""
        _caption(band, f"{cls}{ok}", 6, row.shape[0] // 2 - 4)
        _caption(band, f"{len(recs)} images", 6, row.shape[0] // 2 + 16, 0.4)
        rows.append(np.hstack([band, row]))
        if tiles:
            sheet = _grid(tiles, per_class, tile)
            path = out.with_name(f"{out.stem}-{_safe(cls)}.png")
            write_png(path, sheet)
            written[cls] = str(path)
    write_png(out, np.vstack(rows))
    written["overview"] = str(out)
    return written
