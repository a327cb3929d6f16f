"""What every importer shares: the registry, the candidate a format scan yields, the import itself.

An importer only *scans* its layout into :class:`Candidate` rows (image, label, mask file or
shapes) and format-level rejects. :func:`import_dataset` does the rest the same way for all:
strict decoding, duplicate detection by sha256, mask size checks, shapes rendered into masks,
rejects with reasons, and the data set written atomically.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
from pydantic import BaseModel

from ..format import (
    CLASSES_FILE,
    MANIFEST_FILE,
    REJECTS_FILE,
    Box,
    ClassFile,
    Dataset,
    DatasetError,
    Origin,
    Record,
    Reject,
)
from ..imaging import IMAGE_SUFFIXES, ImageFileError, binarize_mask, read_image, write_png
from ..progress import track

__all__ = [
    "IMPORTERS",
    "Candidate",
    "ImportReport",
    "Importer",
    "Scan",
    "Shape",
    "detect_format",
    "import_dataset",
    "list_images",
    "path_ids",
    "pick_ok_class",
    "register_importer",
]

REPORT_FILE = "import-report.json"
OK_CLASS_NAMES = ("ok", "good", "free", "normal", "pass", "defect_free", "no_defect")


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
    label: str
    mask: Optional[Path] = None
    shapes: List[Shape] = field(default_factory=list)
    normalized: bool = False  # shapes in 0..1 of the image size (YOLO)


@dataclass
class Scan:
    classes: List[str]  # index order, the OK class included
    ok_class: str
    candidates: List[Candidate]
    rejects: List[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class Importer:
    name: str
    version: str
    detect: Callable[[Path], bool]
    scan: Callable[[Path, Optional[str]], Scan]


IMPORTERS: Dict[str, Importer] = {}


def register_importer(name: str, version: str, detect: Callable[[Path], bool]):
    """Decorator for a scan function ``(src, ok_class) -> Scan``."""

    def wrap(scan: Callable[[Path, Optional[str]], Scan]):
        IMPORTERS[name] = Importer(name, version, detect, scan)
        return scan

    return wrap


class ImportReport(BaseModel):
    format: str
    out: str
    images: int
    classes: Dict[str, int]
    ok_class: str
    masks: int
    rejected: int
    rejects: List[Reject]
    warnings: List[Reject]


def list_images(folder: Path) -> List[Path]:
    """Image files directly in ``folder``, sorted (masks named ``*_mask`` excluded)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask"))


def path_ids(paths: List[Path], root: Path) -> List[str]:
    """Record ids for ``paths``: the path below ``root`` without suffix (``a/b``), with the suffix kept
    where two files differ only by it (``a/b.jpg``, ``a/b.png``), so ids stay unique."""
    rels = [p.relative_to(root) for p in paths]
    n = Counter(r.with_suffix("").as_posix() for r in rels)
    return [r.with_suffix("").as_posix() if n[r.with_suffix("").as_posix()] == 1 else r.as_posix()
            for r in rels]


def pick_ok_class(names: List[str], ok_class: Optional[str], src: Path) -> str:
    """The OK class: the one asked for, else the one whose name says defect-free."""
    if ok_class is not None:
        if ok_class not in names:
            raise DatasetError(f"{src}: --ok-class '{ok_class}' is not among the classes {names}")
        return ok_class
    found = [n for n in names if n.lower() in OK_CLASS_NAMES]
    if len(found) != 1:
        raise DatasetError(f"{src}: cannot tell which class is OK among {names}; pass --ok-class NAME")
    return found[0]


def detect_format(src: Path) -> str:
    hits = [name for name, imp in IMPORTERS.items() if name != "imagefolder" and imp.detect(src)]
    if not hits and IMPORTERS["imagefolder"].detect(src):
        hits = ["imagefolder"]
    if len(hits) != 1:
        known = ", ".join(IMPORTERS)
        what = "no known layout" if not hits else f"several layouts ({', '.join(hits)})"
        raise DatasetError(f"{src}: {what} recognised; pass --format (one of {known})")
    return hits[0]


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
        x0, y0 = max(lo[0], 0.0), max(lo[1], 0.0)
        x1, y1 = min(hi[0], float(w)), min(hi[1], float(h))
        if x1 <= x0 or y1 <= y0:
            problems.append(f"{s.label} shape {lo.round(1).tolist()}-{hi.round(1).tolist()} lies outside "
                            f"the {w}x{h} image")
            continue
        boxes.append(Box(label=s.label, x0=round(x0, 2), y0=round(y0, 2), x1=round(x1, 2), y1=round(y1, 2)))
        if s.is_box:
            cv2.rectangle(mask, (int(x0), int(y0)), (int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1), 255, -1)
        else:
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return boxes, mask, problems


def _image_label(c: Candidate, boxes: List[Box], ok_class: str) -> str:
    """The label of an image with shapes: the class covering the largest area (OK if none)."""
    if not c.shapes:
        return c.label
    if not boxes:
        return ok_class
    area: Counter = Counter()
    for b in boxes:
        area[b.label] += (b.x1 - b.x0) * (b.y1 - b.y0)
    return area.most_common(1)[0][0]


def import_dataset(
    src: Union[str, Path],
    out: Union[str, Path],
    fmt: str = "auto",
    ok_class: Optional[str] = None,
    copy: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Import ``src`` (layout ``fmt``) into a lineguard data set at ``out``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    if ((out / MANIFEST_FILE).exists() or (out / CLASSES_FILE).exists()) and not overwrite:
        raise DatasetError(f"{out}: already holds a data set; pass --overwrite to replace it")
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt not in IMPORTERS:
        raise DatasetError(f"unknown format '{fmt}' (known: {', '.join(IMPORTERS)})")
    importer = IMPORTERS[fmt]
    scan = importer.scan(src, ok_class)
    classes = ClassFile(classes=scan.classes, ok_class=scan.ok_class)
    ds = Dataset(out, classes, [], list(scan.rejects))
    origin = Origin(kind="importer", name=fmt, version=importer.version)
    warnings: List[Reject] = []
    seen: Dict[str, str] = {}
    ids: Dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)

    def reject(path: Path, reason: str) -> None:
        ds.rejects.append(Reject(path=str(path), reason=reason))

    for c in track(scan.candidates, "import", enabled=progress):
        if c.id in ids:  # one id, two records: the second mask would overwrite the first
            reject(c.image, f"id '{c.id}' already used by {ids[c.id]}")
            continue
        try:
            pixels, sha = read_image(c.image)
        except ImageFileError as e:
            reject(c.image, str(e))
            continue
        if sha in seen:
            reject(c.image, f"duplicate of {seen[sha]} (same sha256)")
            continue
        h, w = pixels.shape[:2]
        mask_rel: Optional[str] = None
        boxes: Optional[List[Box]] = None
        drawn: Optional[np.ndarray] = None
        label = c.label
        if c.mask is not None:
            if not c.mask.is_file():
                warnings.append(Reject(path=str(c.mask), reason=f"mask file missing; {c.image} kept without mask"))
            else:
                try:
                    mask, _ = read_image(c.mask)
                except ImageFileError as e:
                    reject(c.mask, f"mask unusable: {e}")
                    continue
                if mask.shape[:2] != (h, w):
                    reject(c.mask, f"mask is {mask.shape[1]}x{mask.shape[0]}, image {c.image.name} is {w}x{h}")
                    continue
                if label != scan.ok_class and not binarize_mask(mask).any():
                    warnings.append(Reject(path=str(c.mask),
                                           reason=f"mask of a '{label}' image is empty; image kept without mask"))
                else:
                    mask_rel = _place(ds, c.mask, "masks", c.id, copy)
        elif c.shapes:
            boxes, drawn, problems = _render_shapes(c.shapes, c.normalized, w, h)
            warnings.extend(Reject(path=str(c.image), reason=p) for p in problems)
            label = _image_label(c, boxes, scan.ok_class)
            boxes = boxes or None
        if label not in classes.classes:
            reject(c.image, f"label '{label}' is not a known class ({', '.join(classes.classes)})")
            continue
        if drawn is not None:  # written only for a kept record: no orphan mask files
            mask_path = out / "masks" / f"{c.id}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_png(mask_path, drawn)
            mask_rel = ds.relative(mask_path)
        seen[sha] = str(c.image)
        ids[c.id] = str(c.image)
        ds.records.append(Record(
            id=c.id, image=_place(ds, c.image, "images", c.id, copy), label=label, mask=mask_rel,
            boxes=boxes, source="real", origin=origin, sha256=sha, width=w, height=h))

    ds.save()
    report = ImportReport(
        format=fmt, out=str(out), images=len(ds.records), classes=ds.counts(), ok_class=classes.ok_class,
        masks=sum(r.mask is not None for r in ds.records), rejected=len(ds.rejects),
        rejects=ds.rejects, warnings=warnings)
    (out / REPORT_FILE).write_text(report.model_dump_json(indent=1))
    if not ds.records:
        raise DatasetError(f"{src}: nothing usable imported ({len(ds.rejects)} rejects, see {out / REJECTS_FILE})")
    return report


def _place(ds: Dataset, path: Path, kind: str, rec_id: str, copy: bool) -> str:
    """Reference ``path`` in the manifest, or copy it into the data set first."""
    if not copy:
        return ds.relative(path)
    dst = ds.root / kind / f"{rec_id}{path.suffix.lower()}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dst)
    return ds.relative(dst)
