"""The candidates a format scan yields and how each becomes a record or a reject: strict decoding,
duplicates by sha256, mask checks, shapes rendered into masks, files that may not be read refused.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ...files import atomic_path, inside
from ..format import Box, Dataset, DatasetError, Origin, Record, Reject
from ..imaging import MIN_SIDE, ImageFileError, binarize_mask, read_image, sha256_bytes, write_png
from ..progress import track

__all__ = ["CLIP_TOLERANCE", "Candidate", "Scan", "Shape", "check_id", "import_candidates"]

CLIP_TOLERANCE = 1.0  # pixels a shape may reach outside its image before the clipping is a warning


@dataclass
class Shape:
    """A box (4 numbers: x0 y0 x1 y1) or polygon (N x 2 points), in pixels or normalised to 0..1."""

    label: str
    points: np.ndarray
    is_box: bool = True


@dataclass
class Candidate:
    """One image found by a scan, before any file is decoded."""

    id: str
    image: Path
    label: Optional[str]  # None: no object on it, in a defect-type set (rejected)
    mask: Optional[Path] = None
    shapes: List[Shape] = field(default_factory=list)
    normalized: bool = False  # shapes in 0..1 of the image size (YOLO)


@dataclass
class Scan:
    classes: List[str]  # index order, the OK class included
    ok_class: Optional[str]  # None: a defect-type set
    candidates: List[Candidate]
    rejects: List[Reject] = field(default_factory=list)


def _render_shapes(shapes: List[Shape], normalized: bool, w: int, h: int
                   ) -> Tuple[List[Box], np.ndarray, List[str]]:
    """Boxes (for the manifest) and a mask drawn from every shape; problems as text."""
    scale = np.array([w, h], dtype=np.float64) if normalized else np.ones(2)
    boxes: List[Box] = []
    problems: List[str] = []
    mask = np.zeros((h, w), np.uint8)
    for s in shapes:
        pts = np.asarray(s.points, dtype=np.float64).reshape(-1, 2) * scale
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if not np.isfinite(pts).all():
            problems.append(f"{s.label} shape has coordinates that are not finite numbers; left out")
            continue
        x0, y0 = max(lo[0], 0.0), max(lo[1], 0.0)
        x1, y1 = min(hi[0], float(w)), min(hi[1], float(h))
        if x1 <= x0 or y1 <= y0:
            problems.append(f"{s.label} shape {_span(lo, hi)} lies outside the {w}x{h} image")
            continue
        if max(x0 - lo[0], y0 - lo[1], hi[0] - x1, hi[1] - y1) > CLIP_TOLERANCE:
            problems.append(f"{s.label} shape {_span(lo, hi)} reaches outside the {w}x{h} image; clipped to it")
        boxes.append(Box(label=s.label, x0=round(x0, 2), y0=round(y0, 2), x1=round(x1, 2), y1=round(y1, 2)))
        if s.is_box:
            cv2.rectangle(mask, (int(x0), int(y0)), (int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1), 255, -1)
        else:
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return boxes, mask, problems


def _span(lo: np.ndarray, hi: np.ndarray) -> str:
    return f"({lo[0]:.4g}, {lo[1]:.4g})-({hi[0]:.4g}, {hi[1]:.4g})"


def _image_label(c: Candidate, boxes: List[Box], ok_class: Optional[str]) -> Optional[str]:
    """The label of an image with shapes: the class covering the largest area (OK if none)."""
    if not c.shapes:
        return c.label
    if not boxes:
        return ok_class
    area: Counter = Counter()
    for b in boxes:
        area[b.label] += (b.x1 - b.x0) * (b.y1 - b.y0)
    return area.most_common(1)[0][0]


def check_id(rec_id: str) -> Optional[str]:
    """Why ``rec_id`` cannot name files in a data set (None if it can): it must be a relative path of plain
    names (no ``..``, no empty part, no control characters), as files under ``images/`` and ``masks/``."""
    try:
        rec_id.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8 text (data sets are); rename it"
    parts = rec_id.split("/")
    if not rec_id or rec_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return f"record id '{rec_id}' is not a relative path of plain names (no '..', '/', empty part)"
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in rec_id):
        return f"record id {rec_id!r} holds control characters or backslashes"
    if any(len(p.encode("utf-8")) > 200 for p in parts):
        return f"record id '{rec_id[:60]}...' has a name longer than 200 bytes"
    return None


def _dest(root: Path, kind: str, rec_id: str, suffix: str) -> Path:
    """``root/kind/<id><suffix>``, checked to lie inside ``root`` (the id is checked already)."""
    dst = root / kind / f"{rec_id}{suffix}"
    if not inside(dst, root):
        raise DatasetError(f"{dst}: would be written outside the data set {root}")
    return dst


def _source_problem(path: Path, src: Path, allow_outside: bool) -> Optional[str]:
    """Why the source file ``path`` may not be read (None if it may)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "the path is not UTF-8 text (a manifest is); rename it"
    try:
        if path.is_symlink() and not path.exists():
            return f"dangling symlink (its target {os.readlink(path)} does not exist)"
    except (OSError, ValueError) as e:
        return f"cannot read it ({getattr(e, 'strerror', None) or e})"
    if not allow_outside and not inside(path, src):
        return f"lies outside the source folder {src}; pass --allow-outside to read it"
    return None


class _Rejected(Exception):
    """A candidate file that is not imported: ``path`` and why (a line of rejects.jsonl)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


@dataclass
class _Importer:
    """Decodes and checks candidates one by one into ``ds`` (records and rejects), collecting warnings."""

    ds: Dataset
    scan: Scan
    src: Path
    origin: Origin
    copy: bool
    allow_outside: bool
    max_pixels: int
    warnings: List[Reject] = field(default_factory=list)
    seen: Dict[str, str] = field(default_factory=dict)  # image sha256 -> first path
    ids: Dict[str, str] = field(default_factory=dict)  # record id -> its image path

    def warn(self, path: Path, reason: str) -> None:
        self.warnings.append(Reject(path=str(path), reason=reason))

    def readable(self, path: Path) -> None:
        problem = _source_problem(path, self.src, self.allow_outside)
        if problem is not None:
            raise _Rejected(path, problem)

    def add(self, c: Candidate) -> None:
        """Import one candidate or raise :class:`_Rejected`."""
        problem = check_id(c.id)
        if problem is not None:
            raise _Rejected(c.image, problem)
        self.readable(c.image)
        if c.id in self.ids:  # one id, two records: the second mask would overwrite the first
            raise _Rejected(c.image, f"id '{c.id}' already used by {self.ids[c.id]}")
        try:
            pixels, sha = read_image(c.image, max_pixels=self.max_pixels)
        except ImageFileError as e:
            raise _Rejected(c.image, str(e)) from None
        if sha in self.seen:
            raise _Rejected(c.image, f"duplicate of {self.seen[sha]} (same sha256)")
        h, w = pixels.shape[:2]
        if min(h, w) < MIN_SIDE:
            self.warn(c.image, f"only {w}x{h} pixels (models take {MIN_SIDE} px or more a side: it will be upscaled)")
        label, boxes, drawn = c.label, None, None
        mask_rel = mask_sha = None
        if c.mask is not None:
            mask_rel, mask_sha = self.mask(c, w, h)
        elif c.shapes:
            found, drawn, problems = _render_shapes(c.shapes, c.normalized, w, h)
            for p in problems:
                self.warn(c.image, p)
            label, boxes = _image_label(c, found, self.scan.ok_class), found or None
        if label is None:
            raise _Rejected(c.image, "no defect marked, and a defect-type set (--ok-class none) has no OK class")
        if label not in self.ds.classes.classes:
            raise _Rejected(c.image, f"label '{label}' is not a known class ({', '.join(self.ds.classes.classes)})")
        if drawn is not None:  # written only for a kept record: no orphan mask files
            mask_path = _dest(self.ds.root, "masks", c.id, ".png")
            mask_sha = sha256_bytes(write_png(mask_path, drawn, durable=False))  # synced before the manifest
            mask_rel = self.ds.relative(mask_path)
        self.seen[sha] = self.ids[c.id] = str(c.image)
        self.ds.records.append(Record(
            id=c.id, image=_place(self.ds, c.image, "images", c.id, self.copy), label=label, mask=mask_rel,
            mask_sha256=mask_sha, boxes=boxes, source="real", origin=self.origin, sha256=sha, width=w, height=h))

    def mask(self, c: Candidate, w: int, h: int) -> Tuple[Optional[str], Optional[str]]:
        """The candidate's mask file placed in the data set and its sha256 ((None, None): kept without mask)."""
        assert c.mask is not None
        self.readable(c.mask)
        if not c.mask.is_file():
            self.warn(c.mask, f"mask file missing; {c.image} kept without mask")
            return None, None
        try:
            mask, mask_sha = read_image(c.mask, max_pixels=self.max_pixels)
        except ImageFileError as e:
            raise _Rejected(c.mask, f"mask unusable: {e}") from None
        if mask.shape[:2] != (h, w):
            raise _Rejected(c.mask, f"mask is {mask.shape[1]}x{mask.shape[0]}, image {c.image.name} is {w}x{h}")
        if c.label != self.scan.ok_class and not binarize_mask(mask).any():
            self.warn(c.mask, f"mask of a '{c.label}' image is empty; image kept without mask")
            return None, None
        return _place(self.ds, c.mask, "masks", c.id, self.copy), mask_sha


def import_candidates(ds: Dataset, scan: Scan, src: Path, origin: Origin, *, copy: bool, allow_outside: bool,
                       max_pixels: int, progress: bool) -> List[Reject]:
    """Decode and check every candidate into ``ds`` (records and rejects); returns the warnings."""
    importer = _Importer(ds, scan, src, origin, copy, allow_outside, max_pixels)
    for c in track(scan.candidates, "import", enabled=progress):
        try:
            importer.add(c)
        except _Rejected as r:
            ds.rejects.append(Reject(path=str(r.path), reason=r.reason))
    return importer.warnings


def _place(ds: Dataset, path: Path, kind: str, rec_id: str, copy: bool) -> str:
    """Reference ``path`` in the manifest, or copy it into the data set first."""
    if not copy:
        return ds.relative(path)
    dst = _dest(ds.root, kind, rec_id, path.suffix.lower())
    with atomic_path(dst, durable=False) as tmp:  # synced before the manifest
        shutil.copyfile(path, tmp)
    return ds.relative(dst)
