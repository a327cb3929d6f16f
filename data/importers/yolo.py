"""The YOLO layout (detection and segmentation), described by ``data.yaml``::

    path: .                # optional; the root of the entries below (relative to data.yaml's folder)
    train: images/train    # image folders (or lists of folders, or .txt files listing images)
    val: images/val
    names: [scratch, dent]  # or {0: scratch, 1: dent}

Labels: ``labels/train/<stem>.txt`` when the image path has an ``images`` folder (the last one is
replaced by ``labels``), else ``<stem>.txt`` next to the image. A line ``cls cx cy w h`` is a box, a
line ``cls x1 y1 ... xn yn`` (n >= 3) a polygon, both normalised to 0..1; :func:`import_dataset`
renders them into the mask and labels the image with the class covering the largest area.

* An empty label file is a verified OK image (class ``--ok-class``, default ``ok``, added last).
* A *missing* label file is rejected ("no label file"), unlike YOLO training, which treats it as
  background: an image nobody labelled is not an image somebody checked and found OK.
* A label file with an unknown class id, a malformed line, or coordinates outside 0..1 (beyond a
  small tolerance) is rejected with its line number; its image is not imported.

The YOLO split is not imported (lineguard re-splits), but ids keep it: ``train/<stem>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

import numpy as np

from ...config import read_yaml
from ...files import FileError, printable, read_regular, resolved
from ..format import DatasetError, Reject
from .base import is_image_name, object_ok_class, path_ids, register_importer
from .candidates import Candidate, Scan, Shape

YAML_NAMES = ("data.yaml", "data.yml")
SPLIT_KEYS = ("train", "val", "test")
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer list-file line names no file
TOLERANCE = 0.01  # coordinates up to this far outside 0..1 are clipped, further is an error


class _BadLabel(ValueError):
    pass


def _yaml_file(src: Path) -> Optional[Path]:
    return next((src / n for n in YAML_NAMES if (src / n).is_file()), None)


def detect(src: Path) -> bool:
    y = _yaml_file(src)
    if y is None:
        return False
    try:
        data = read_yaml(y, DatasetError)
    except DatasetError:
        return True  # a data.yaml that does not load is still meant as YOLO: scan says why
    return isinstance(data, dict) and "names" in data


def _class_names(data: dict, yfile: Path) -> Dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        out = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            out = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{yfile}: 'names' keys must be class ids (integers)") from None
    else:
        raise DatasetError(f"{yfile}: 'names' must be a list or a mapping id -> name")
    bad = [v for v in out.values() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
    if bad:
        raise DatasetError(f"{yfile}: class names must be text, got a {type(bad[0]).__name__}")
    out = {k: str(v).strip() for k, v in out.items()}
    if not out or any(not v for v in out.values()) or len(set(out.values())) != len(out):
        raise DatasetError(f"{yfile}: class names must be unique and non-empty: {list(out.values())[:20]}")
    return out


def _images_of(entry: Path, root: Path) -> Tuple[List[Path], List[Reject]]:
    """Images under a folder (recursively), or listed in a .txt file (one path a line; a line that cannot
    name a file is a reject)."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if is_image_name(p)), []
    try:
        text = read_regular(entry).decode("utf-8")
    except FileError as e:
        raise DatasetError(str(e)) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{entry}: image list is not UTF-8 text") from None
    out, rejects = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if "\0" in line or len(line) > MAX_PATH_CHARS:
            rejects.append(Reject(path=f"{entry}:{n}", reason=f"'{printable(line[:200])}' is not a file path (a NUL "
                                                               f"byte, or over {MAX_PATH_CHARS} characters)"))
        elif line:
            p = Path(line)
            p = p if p.is_absolute() else (entry.parent if line.startswith("./") else root) / p
            out.append(Path(os.path.normpath(p)))  # '..' resolved in the text: ids never keep it
    return out, rejects


def _label_path(image: Path) -> Path:
    """``.../images/<rest>/<stem>.txt`` with the last ``images`` folder replaced by ``labels``; the
    ``.txt`` next to the image where there is no such folder or only the one next to it exists."""
    beside = image.with_suffix(".txt")
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return beside
    i = len(parts) - 2 - parts[:-1][::-1].index("images")
    parts[i] = "labels"
    swapped = Path(*parts).with_suffix(".txt")
    return beside if not swapped.is_file() and beside.is_file() else swapped


def _parse_line(text: str, names: Dict[int, str]) -> Shape:
    tokens = text.split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise _BadLabel(f"not numbers: {text.strip()!r}") from None
    if not np.isfinite(values).all():
        raise _BadLabel(f"not finite numbers: {text.strip()!r}")
    cls, coords = values[0], values[1:]
    if cls != int(cls) or int(cls) not in names:
        raise _BadLabel(f"unknown class id {tokens[0]} (data.yaml names ids {min(names)}..{max(names)})")
    if len(coords) != 4 and (len(coords) < 6 or len(coords) % 2):
        raise _BadLabel(f"malformed line: {len(coords)} numbers after the class id (4 for a box, "
                        f"an even count >= 6 for a polygon)")
    xy = np.array(coords, dtype=np.float64)
    if len(coords) == 4:
        cx, cy, w, h = xy
        if w <= 0 or h <= 0:
            raise _BadLabel(f"box has no area: width {w}, height {h}")
        xy = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    if xy.min() < -TOLERANCE or xy.max() > 1 + TOLERANCE:
        raise _BadLabel(f"coordinates outside 0..1: {xy.min():.3g}..{xy.max():.3g}")
    return Shape(label=names[int(cls)], points=np.clip(xy, 0.0, 1.0), is_box=len(coords) == 4)


def _read_labels(path: Path, names: Dict[int, str]) -> List[Shape]:
    shapes = []
    for n, line in enumerate(read_regular(path).decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                shapes.append(_parse_line(line, names))
            except _BadLabel as e:
                raise _BadLabel(f"line {n}: {e}") from None
    return shapes


def _split_entries(data: dict, root: Path, base: Path, yfile: Path
                   ) -> Tuple[List[Tuple[str, List[Path]]], List[Reject]]:
    """``(split, [folder or list file])`` per split named in data.yaml; entries not found are rejects."""
    out, rejects = [], []
    for key in SPLIT_KEYS:
        value: Union[str, list, None] = data.get(key)
        if not value:
            continue
        paths = []
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, (str, int)) or isinstance(v, bool) or "\0" in str(v):
                raise DatasetError(f"{yfile}: '{key}' entries must be folder or list-file paths, got a "
                                   f"{type(v).__name__}")
            p = Path(str(v))
            hits = [p] if p.is_absolute() else [r / p for r in dict.fromkeys((root, base))]
            hit = next((h for h in hits if h.exists()), None)
            if hit is None:
                rejects.append(Reject(path=str(yfile), reason=f"{key}: {v} not found (looked in {hits[0]})"))
            else:
                paths.append(hit)
        out.append((key, paths))
    if not out and (root / "images").is_dir():  # no split named: everything under images/
        out.append(("", [root / "images"]))
    return out, rejects


def _candidate(image: Path, rec_id: str, names: Dict[int, str], ok: Optional[str]) -> Union[Candidate, Reject]:
    """The candidate for ``image`` with its label file read, or the reject saying why not."""
    try:
        label_file = _label_path(image)
        if not label_file.is_file():
            return Reject(path=str(image), reason=f"no label file (expected {label_file})")
        shapes = _read_labels(label_file, names)
    except _BadLabel as e:
        return Reject(path=str(label_file), reason=str(e))
    except FileError as e:
        return Reject(path=str(label_file), reason=e.reason)
    except UnicodeDecodeError:
        return Reject(path=str(label_file), reason="label file is not UTF-8 text")
    except OSError as e:  # a name too long for the file system, ...
        return Reject(path=str(image), reason=f"cannot read its label file ({e.strerror or e})")
    return Candidate(id=rec_id, image=image, label=shapes[0].label if shapes else ok, shapes=shapes,
                     normalized=True)


@register_importer("yolo", version="1", detect=detect, layout="data.yaml with names")
def scan(src: Path, ok_class: Optional[str]) -> Scan:
    yfile = _yaml_file(src)
    if yfile is None:
        raise DatasetError(f"{src}: no {' or '.join(YAML_NAMES)}")
    data = read_yaml(yfile, DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{yfile}: expected a mapping with 'names' and image folders")
    names = _class_names(data, yfile)
    ok = object_ok_class(ok_class)
    if ok is not None and ok in names.values():
        raise DatasetError(f"{yfile}: '{ok}' is a labelled class; pass --ok-class with another name for "
                           f"images without labels")
    base = yfile.parent
    path = data.get("path")
    if path is not None and (not isinstance(path, (str, int)) or isinstance(path, bool) or "\0" in str(path)):
        raise DatasetError(f"{yfile}: 'path' must be a folder path, got a {type(path).__name__}")
    root = base / str(path) if path else base
    if not root.is_dir():
        root = base  # a 'path' written for another machine: fall back to data.yaml's folder
    splits, rejects = _split_entries(data, root, base, yfile)
    if not splits:
        raise DatasetError(f"{yfile}: names no train/val/test image folder, and there is no images/ folder")

    candidates: List[Candidate] = []
    seen: Set[Path] = set()
    for split, entries in splits:
        for entry in entries:
            try:
                listed, bad_lines = _images_of(entry, root)
            except DatasetError as e:  # an unreadable image list costs its images, not the import
                rejects.append(Reject(path=str(entry), reason=str(e).split(": ", 1)[-1]))
                continue
            rejects.extend(bad_lines)
            images = [p for p in listed if resolved(p) not in seen]
            seen.update(resolved(p) for p in images)
            top = entry if entry.is_dir() else root
            try:
                ids = path_ids(images, top)
            except ValueError:  # a list file naming images outside the root
                ids = [p.stem for p in images]
            if len(entries) > 1:  # train: [images/a, images/b] -> train/a/<stem>, train/b/<stem>
                ids = [f"{entry.stem}/{i}" for i in ids]
            for image, rec_id in zip(images, ids):
                found = _candidate(image, f"{split}/{rec_id}" if split else rec_id, names, ok)
                (candidates if isinstance(found, Candidate) else rejects).append(found)
    classes = [names[k] for k in sorted(names)] + ([ok] if ok else [])
    return Scan(classes=classes, ok_class=ok, candidates=candidates, rejects=rejects)
