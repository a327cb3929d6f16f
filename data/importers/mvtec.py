"""The MVTec AD layout, one category folder (e.g. ``bottle/``)::

    train/good/*.png                       defect-free training images
    test/good/*.png                        defect-free test images
    test/<defect>/*.png                    defect images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png  their masks

The OK class is ``good``. MVTec's own train/test split is not imported (lineguard re-splits); ids
keep it visible and unique: ``train/good/000``, ``test/crack/000``. A defect image whose mask file is
missing is kept without a mask (a warning, from :func:`import_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..format import DatasetError, Reject
from .base import list_images, path_ids, register_importer
from .candidates import Candidate, Scan

OK = "good"


def _dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect(src: Path) -> bool:
    return (src / "train" / OK).is_dir() and (src / "test").is_dir()


@register_importer("mvtec", version="1", detect=detect, layout="train/good/ + test/<defect>/")
def scan(src: Path, ok_class: Optional[str]) -> Scan:
    if ok_class not in (None, OK):
        raise DatasetError(f"{src}: the OK class of an MVTec AD folder is '{OK}', not '{ok_class}'")
    rejects: List[Reject] = []
    candidates: List[Candidate] = []
    defects: List[str] = []
    folders = [src / "train" / OK]
    for d in _dirs(src / "train"):
        if d.name != OK:
            rejects.append(Reject(path=str(d), reason=f"unexpected folder: MVTec AD trains on {OK}/ only"))
    folders += _dirs(src / "test")
    for d in folders:
        label = d.name
        imgs = list_images(d)
        if not imgs:
            rejects.append(Reject(path=str(d), reason="empty class folder: no image files directly inside"))
            continue
        if label != OK and label not in defects:
            defects.append(label)
        for img, rec_id in zip(imgs, path_ids(imgs, src)):
            mask = None if label == OK else src / "ground_truth" / label / f"{img.stem}_mask.png"
            candidates.append(Candidate(id=rec_id, image=img, label=label, mask=mask))
    classes = [*sorted(defects), OK]
    return Scan(classes=classes, ok_class=OK, candidates=candidates, rejects=rejects)
