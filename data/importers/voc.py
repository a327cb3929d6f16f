"""The Pascal VOC detection layout: ``Annotations/<id>.xml`` and ``JPEGImages/<filename>``.

Each ``<object>`` gives a class ``<name>`` and a ``<bndbox>`` (xmin ymin xmax ymax, 1-based and
inclusive: pixel columns xmin-1 .. xmax-1); boxes are rendered into a mask by
:func:`import_dataset`. An XML without objects is an OK image. Classes are the object names found,
sorted, then the OK class (``--ok-class`` or ``ok``; with ``--ok-class none`` there is none and an image without
objects is rejected). Segmentation folders and ``ImageSets`` are not read (lineguard makes its own splits).

Annotation files are parsed with :mod:`xml.etree.ElementTree`: they are trusted local files (the
standard library parser does not guard against hostile XML such as entity expansion).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional, Set, Tuple

import numpy as np

from ...files import FileError, read_regular
from ..format import DatasetError, Reject
from ..imaging import IMAGE_SUFFIXES
from .base import list_images, object_ok_class, register_importer
from .candidates import Candidate, Scan, Shape


class _BadXml(ValueError):
    pass


ANNOTATION_DIRS = ("annotations",)  # folder names, matched case-insensitively
IMAGE_DIRS = ("jpegimages", "images")


def _folder(src: Path, names: Tuple[str, ...]) -> Optional[Path]:
    """The sub-folder of ``src`` whose lower-case name is the first of ``names`` found."""
    found = {p.name.lower(): p for p in sorted(src.iterdir()) if p.is_dir()} if src.is_dir() else {}
    return next((found[n] for n in names if n in found), None)


def _xml_files(ann: Path) -> List[Path]:
    return sorted(p for p in ann.iterdir() if p.suffix.lower() == ".xml" and (p.is_file() or p.is_symlink()))


def _layout(src: Path) -> Tuple[Optional[Path], Optional[Path]]:
    return _folder(src, ANNOTATION_DIRS), _folder(src, IMAGE_DIRS)


def detect(src: Path) -> bool:
    ann, images = _layout(src)
    return ann is not None and images is not None and bool(_xml_files(ann))


def _find_image(images: Path, xml: Path, filename: Optional[str]) -> Tuple[Optional[Path], str]:
    """The image an XML describes: ``<filename>``, else the XML's stem with an image suffix."""
    if filename:
        p = images / filename
        if p.is_file():
            return p, filename
    stems = [Path(filename).stem] if filename else []
    stems.append(xml.stem)
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            for s in (suffix, suffix.upper()):
                p = images / f"{stem}{s}"
                if p.is_file():
                    return p, p.name
    return None, filename or f"{xml.stem}.jpg"


def _number(obj: ET.Element, tag: str, n: int) -> float:
    text = obj.findtext(f"bndbox/{tag}")
    if text is None:
        raise _BadXml(f"object {n}: <bndbox><{tag}> missing")
    try:
        value = float(text)
    except ValueError:
        raise _BadXml(f"object {n}: <{tag}> is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise _BadXml(f"object {n}: <{tag}> is not a finite number: {text.strip()!r}")
    return value


def _objects(root: ET.Element) -> List[Shape]:
    shapes = []
    for n, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise _BadXml(f"object {n}: no <name>")
        xmin, ymin, xmax, ymax = (_number(obj, t, n) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise _BadXml(f"object {n} ({name}): box ({xmin}, {ymin}, {xmax}, {ymax}) has no area")
        # 1-based inclusive -> 0-based start, exclusive end
        shapes.append(Shape(label=name, points=np.array([xmin - 1, ymin - 1, xmax, ymax], dtype=np.float64)))
    return shapes


@register_importer("voc", version="1", detect=detect, layout="Annotations/*.xml + JPEGImages/ or images/ (any case)")
def scan(src: Path, ok_class: Optional[str]) -> Scan:
    ok = object_ok_class(ok_class)
    ann, images = _layout(src)
    if ann is None or images is None:
        have = ", ".join(sorted(p.name + "/" for p in src.iterdir() if p.is_dir())) or "no folders"
        raise DatasetError(f"{src}: not a VOC layout: expected an Annotations/ folder (any case) and a "
                           f"JPEGImages/ or images/ folder (any case); found {have}")
    rejects: List[Reject] = []
    found: List[Tuple[str, Path, List[Shape]]] = []
    used: Set[Path] = set()
    for xml in _xml_files(ann):
        try:
            root = ET.fromstring(read_regular(xml))
        except FileError as e:
            rejects.append(Reject(path=str(xml), reason=e.reason))
            continue
        except ET.ParseError as e:
            rejects.append(Reject(path=str(xml), reason=f"XML does not parse: {e}"))
            image, _ = _find_image(images, xml, None)
            if image is not None:  # reported once, with its XML, not again as "no annotation"
                used.add(image)
            continue
        image, name = _find_image(images, xml, (root.findtext("filename") or "").strip() or None)
        if image is None:
            rejects.append(Reject(path=str(xml), reason=f"image file missing: {images / name}"))
            continue
        used.add(image)
        try:
            shapes = _objects(root)
        except _BadXml as e:
            rejects.append(Reject(path=str(xml), reason=str(e)))
            continue
        found.append((xml.stem, image, shapes))
    for img in list_images(images):
        if img not in used:
            rejects.append(Reject(path=str(img), reason="no annotation (no Annotations/*.xml names it)"))
    names = sorted({s.label for _, _, shapes in found for s in shapes})
    if ok is not None and ok in names:
        raise DatasetError(f"{src}: '{ok}' is an object class in the annotations; pass --ok-class with "
                           f"another name for images without objects")
    candidates = [Candidate(id=rec_id, image=img, label=shapes[0].label if shapes else ok, shapes=shapes)
                  for rec_id, img, shapes in found]
    return Scan(classes=[*names, ok] if ok else names, ok_class=ok, candidates=candidates, rejects=rejects)
