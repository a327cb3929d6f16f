"""The image-folder layout: one folder per class, images directly inside (``src/<class>/*.png``).

The OK class is found by its name (``good``, ``ok``, ``OK``, ``Free``, ...) or given with
``--ok-class``. No masks. Files in nested folders are not read; files of other types (``.txt``,
``Thumbs.db``) are skipped; an image lying directly in ``src`` has no class and is rejected.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..format import DatasetError, Reject
from ..imaging import IMAGE_SUFFIXES
from .base import IMPORTERS, list_images, path_ids, pick_ok_class, register_importer
from .candidates import Candidate, Scan

NAME = "imagefolder"
# Folder and file names that belong to other layouts: a source holding one is not an image folder.
OTHER_LAYOUT_NAMES = ("Annotations", "JPEGImages", "images", "labels", "ground_truth",
                      "data.yaml", "data.yml")


def _class_dirs(src: Path) -> List[Path]:
    return sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect(src: Path) -> bool:
    other = {n.lower() for n in OTHER_LAYOUT_NAMES}
    if any(p.name.lower() in other for p in src.iterdir()):
        return False
    if any(imp.detect(src) for name, imp in IMPORTERS.items() if name != NAME):
        return False
    return any(list_images(d) for d in _class_dirs(src))


@register_importer(NAME, version="1", detect=detect, layout="<class>/<image files>")
def scan(src: Path, ok_class: Optional[str]) -> Scan:
    rejects: List[Reject] = []
    found = []
    for d in _class_dirs(src):
        imgs = list_images(d)
        if imgs:
            found.append((d.name, imgs))
        else:
            rejects.append(Reject(path=str(d), reason="empty class folder: no image files directly inside"))
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            rejects.append(Reject(path=str(p), reason="image outside any class folder (no class)"))
    if not found:
        raise DatasetError(f"{src}: no class folder with images (expected <class>/<image> files)")
    names = [n for n, _ in found]
    ok = pick_ok_class(names, ok_class, src)
    candidates = []
    for name, imgs in found:
        for img, rec_id in zip(imgs, path_ids(imgs, src)):
            candidates.append(Candidate(id=rec_id, image=img, label=name))
    classes = [*sorted(n for n in names if n != ok), *([ok] if ok is not None else [])]
    return Scan(classes=classes, ok_class=ok, candidates=candidates, rejects=rejects)
