"""The two patch sources a generator must beat: real-defect copy-paste and DRAEM-style Perlin anomalies.

    cp = CopyPasteSource.from_dataset(ds, split="train", size=64)     # method "copy-paste"
    pn = PerlinSource.from_dataset(ds, split="train", size=64)        # method "perlin"
    patches = cp.sample("Crack", 4, np.random.default_rng(0))

``CopyPasteSource`` returns real defect crops (:func:`~lineguard.synth.crops.defect_crops`) as they
are; the compositor varies their size, angle, flips and placement. Its version is a digest of the
crops' record ids and crop settings.

``PerlinSource`` makes the same generic anomaly for every class it is given (DRAEM, Zavrtanik et
al. 2021): the mask is Perlin noise (lattice 1-8 cells per axis, independently) thresholded at
0.5; the pixels are a texture made anomalous by three random photometric changes (gamma,
brightness, inversion, posterisation, equalisation, solarisation), mixed with the untouched
texture by a random opacity ``beta`` in [0, 0.8]. The texture is a random crop of an OK image of the
split (``texture="ok"``) or fractal Perlin noise (``texture="procedural"``).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple

import cv2
import numpy as np

from .. import LineguardError
from ..data.format import Dataset
from ..data.imaging import ImageFileError, read_image, resize
from .crops import Crop, defect_crops, group_by_class
from .patches import Patch, PatchSource

__all__ = ["PERLIN_VERSION", "CopyPasteSource", "PerlinSource", "SourceError", "perlin_noise"]

PERLIN_VERSION = "1"
_MIN_PIXELS = 16  # smallest Perlin mask kept (defect_crops' own floor)
_TRIES = 100


class SourceError(LineguardError):
    """A patch source that cannot be built or asked for a class it lacks; the message names both."""


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _check_label(source: PatchSource, label: str) -> None:
    if label not in source.classes:
        raise SourceError(f"{source.method} source: no class '{label}' (it has {source.classes})")


def _split_records(ds: Dataset, split: str) -> list:
    records = ds.split(split)
    if not records:
        raise SourceError(f"{ds.root}: split '{split}' is empty (run `lineguard data split`?)")
    return records


# --------------------------------------------------------------------------------------------------
# copy-paste


class CopyPasteSource(PatchSource):
    """Real defect crops, drawn uniformly per class (see the module docstring)."""

    method = "copy-paste"

    def __init__(self, crops: Sequence[Crop], classes: Sequence[str], where: str = "crops",
                 settings: Optional[Dict[str, object]] = None) -> None:
        by_class = group_by_class(crops)
        for c in classes:
            if not by_class.get(c):
                raise SourceError(f"{where}: no defect crop of class '{c}' (crops of {sorted(by_class)}); "
                                  f"copy-paste needs at least one per class")
        self._classes = list(classes)
        self._crops = {c: by_class[c] for c in self._classes}
        ids = sorted({x.record for c in self._classes for x in self._crops[c]})
        self.version = _digest({"records": ids, **(settings or {})})

    @classmethod
    def from_dataset(cls, ds: Dataset, split: str = "train", size: int = 64, pad: float = 0.25,
                     classes: Optional[Sequence[str]] = None, channels: Optional[int] = None) -> CopyPasteSource:
        """Crops of every defect of ``split`` (``classes``: default all defect classes of ``ds``)."""
        crops, skipped = defect_crops(ds, _split_records(ds, split), size=size, pad=pad, channels=channels)
        where = f"{ds.root} split '{split}'" + (f" ({len(skipped)} records without a usable mask)" if skipped else "")
        return cls(crops, list(classes) if classes is not None else ds.classes.defect_classes, where,
                   {"size": size, "pad": pad, "channels": channels})

    @property
    def classes(self) -> List[str]:
        return list(self._classes)

    def counts(self) -> Dict[str, int]:
        """Crops per class."""
        return {c: len(v) for c, v in self._crops.items()}

    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        _check_label(self, label)
        pool = self._crops[label]
        return [Patch(pool[k].image.copy(), pool[k].mask.copy(), label) for k in rng.integers(len(pool), size=n)]


# --------------------------------------------------------------------------------------------------
# Perlin


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: Tuple[int, int], res: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` (h, w) on a lattice of ``res`` (rows, cols) cells, float32 in
    about [-1, 1]."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0, 2 * math.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], -1).astype(np.float32)
    py = (np.arange(h, dtype=np.float32) + 0.5) * (ry / h)
    px = (np.arange(w, dtype=np.float32) + 0.5) * (rx / w)
    iy, ix = py.astype(np.int64), px.astype(np.int64)
    fy, fx = (py - iy)[:, None], (px - ix)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[iy[:, None] + dy, ix[None, :] + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = dot(0, 0) + u * (dot(0, 1) - dot(0, 0))
    bottom = dot(1, 0) + u * (dot(1, 1) - dot(1, 0))
    return (np.float32(math.sqrt(2)) * (top + v * (bottom - top))).astype(np.float32)


def _gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(0.5, 2.0)
    return cv2.LUT(x, (255 * (np.arange(256) / 255) ** g).astype(np.uint8))


def _brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.convertScaleAbs(x, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-30, 30))


def _invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - x


def _posterize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(2, 5))
    return x & np.uint8((0xFF << (8 - bits)) & 0xFF)


def _equalize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if x.ndim == 2:
        return cv2.equalizeHist(x)
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(x[..., c])) for c in range(3)])


def _solarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = int(rng.integers(32, 129))
    return np.where(x >= t, 255 - x, x).astype(np.uint8)


_CHANGES: Tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], ...] = (
    _gamma, _brightness, _invert, _posterize, _equalize, _solarize)


class PerlinSource(PatchSource):
    """DRAEM-style anomalies, the same for every class in ``classes`` (see the module docstring).

    ``textures``: uint8 images (gray or RGB, each at least ``size`` px per side) to crop anomaly
    pixels from; None = procedural texture (then ``channels`` sets gray or RGB)."""

    method = "perlin"

    def __init__(self, classes: Sequence[str], textures: Optional[Sequence[np.ndarray]] = None, size: int = 64,
                 channels: Literal[1, 3] = 1, texture_ids: Optional[Sequence[str]] = None) -> None:
        if not classes:
            raise SourceError("perlin source: no classes given")
        if size < 16:
            raise SourceError(f"perlin source: patch size {size} px, needs >= 16")
        self._classes = list(classes)
        self.size = size
        self.textures = list(textures) if textures is not None else None
        if self.textures is not None:
            if not self.textures:
                raise SourceError("perlin source: an empty texture list (pass None for procedural textures)")
            small = [t.shape[:2] for t in self.textures if min(t.shape[:2]) < size]
            if small:
                raise SourceError(f"perlin source: textures smaller than the {size}-px patch: {small[:3]}")
            self.channels = 3 if self.textures[0].ndim == 3 else 1
        else:
            self.channels = channels
        texture = list(texture_ids) if texture_ids is not None else (
            "procedural" if self.textures is None else f"{len(self.textures)} arrays")
        self.version = f"{PERLIN_VERSION}-" + _digest({"size": size, "channels": self.channels, "texture": texture})

    @classmethod
    def from_dataset(cls, ds: Dataset, split: str = "train", size: int = 64,
                     texture: Literal["ok", "procedural"] = "ok", max_textures: int = 64,
                     classes: Optional[Sequence[str]] = None) -> PerlinSource:
        """Anomalies for ``classes`` (default: the defect classes of ``ds``), textured from up to
        ``max_textures`` OK images of ``split`` (evenly spaced in manifest order) or procedurally."""
        names = list(classes) if classes is not None else ds.classes.defect_classes
        unknown = [c for c in names if c not in ds.classes.defect_classes]
        if unknown:
            raise SourceError(f"{ds.root}: {unknown} are not defect classes of the data set "
                              f"({ds.classes.defect_classes})")
        if texture == "procedural":
            first = ds.records[0] if ds.records else None
            channels = 3 if first is not None and _read(ds, first.image).ndim == 3 else 1
            return cls(names, None, size, channels)
        ok = [r for r in _split_records(ds, split) if r.label == ds.classes.ok_class]
        if not ok:
            which = "has no OK class" if ds.classes.ok_class is None else f"has no image of the OK class " \
                                                                             f"'{ds.classes.ok_class}'"
            raise SourceError(f"{ds.root}: split '{split}' {which} to take textures from (use texture='procedural')")
        picked = [ok[k] for k in sorted({int(k) for k in np.linspace(0, len(ok) - 1, min(max_textures, len(ok)))})]
        textures = []
        for r in picked:
            img = _read(ds, r.image)
            f = 4 * size / min(img.shape[:2])  # crops of `size` then show a quarter of the short side
            textures.append(resize(img, (max(size, round(img.shape[0] * f)), max(size, round(img.shape[1] * f)))))
        return cls(names, textures, size, texture_ids=[r.id for r in picked])

    @property
    def classes(self) -> List[str]:
        return list(self._classes)

    def _mask(self, rng: np.random.Generator) -> np.ndarray:
        for _ in range(_TRIES):
            res = (2 ** int(rng.integers(0, 4)), 2 ** int(rng.integers(0, 4)))
            noise = perlin_noise((self.size, self.size), res, rng)
            k = int(rng.integers(4))
            m = np.rot90(noise, k) > 0.5
            if m.sum() >= _MIN_PIXELS:
                return np.ascontiguousarray(m).view(np.uint8) * np.uint8(255)
        raise SourceError(f"perlin source: no mask of >= {_MIN_PIXELS} px in {_TRIES} draws")

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        s = self.size
        if self.textures is None:
            noise = sum(perlin_noise((s, s), (2**o, 2**o), rng) * np.float32(0.5**o) for o in range(1, 5))
            level, swing = rng.uniform(40, 215), rng.uniform(20, 80)
            tex = np.clip(level + swing * noise, 0, 255).astype(np.uint8)
            return cv2.cvtColor(tex, cv2.COLOR_GRAY2RGB) if self.channels == 3 else tex
        t = self.textures[int(rng.integers(len(self.textures)))]
        y = int(rng.integers(t.shape[0] - s + 1))
        x = int(rng.integers(t.shape[1] - s + 1))
        return np.ascontiguousarray(np.rot90(t[y:y + s, x:x + s], int(rng.integers(4))))

    def sample(self, label: str, n: int, rng: np.random.Generator) -> List[Patch]:
        _check_label(self, label)
        out = []
        for _ in range(n):
            mask = self._mask(rng)
            plain = self._texture(rng)
            changed = plain
            for k in rng.choice(len(_CHANGES), 3, replace=False):
                changed = _CHANGES[int(k)](changed, rng)
            beta = rng.uniform(0.0, 0.8)
            image = cv2.addWeighted(changed, 1 - beta, plain, beta, 0)
            out.append(Patch(image, mask, label))
        return out


def _read(ds: Dataset, rel: str) -> np.ndarray:
    try:
        return read_image(ds.path(rel))[0]
    except ImageFileError as e:
        raise SourceError(f"{ds.path(rel)}: {e}") from None
