"""The magnetic-tile layout: ``MT_<Class>/Imgs/<name>.jpg`` with a same-name ``.png`` mask; ``MT_Free`` is OK."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..format import Reject
from .base import pick_ok_class, register_importer
from .candidates import Candidate, Scan

PREFIX = "MT_"


def _class_dirs(src: Path):
    return sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def detect(src: Path) -> bool:
    return any((d / "Imgs").is_dir() for d in _class_dirs(src))


@register_importer("magnetic-tile", version="1", detect=detect, layout="MT_<Class>/Imgs/*.jpg")
def scan(src: Path, ok_class: Optional[str]) -> Scan:
    dirs = _class_dirs(src)
    names = [d.name[len(PREFIX):] for d in dirs]
    ok = pick_ok_class(names, ok_class or ("Free" if "Free" in names else None), src)
    candidates, rejects = [], []
    for d, name in zip(dirs, names):
        imgs = sorted((d / "Imgs").glob("*.jpg")) if (d / "Imgs").is_dir() else []
        if not imgs:
            rejects.append(Reject(path=str(d), reason="empty class folder: no Imgs/*.jpg"))
        for img in imgs:
            candidates.append(Candidate(id=f"{name}/{img.stem}", image=img, label=name,
                                        mask=img.with_suffix(".png")))
    classes = [*sorted(n for n in names if n != ok), *([ok] if ok is not None else [])]
    return Scan(classes=classes, ok_class=ok, candidates=candidates, rejects=rejects)
