"""What every importer shares: the registry, the candidate a format scan yields, the import itself.

An importer only *scans* its layout into ``candidates.Candidate`` rows (image, label, mask file or
shapes) and format-level rejects. :func:`import_dataset` does the rest the same way for all:
strict decoding, duplicate detection by sha256, mask size checks, shapes rendered into masks,
rejects with reasons, and the data set written atomically.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from pydantic import AfterValidator, BaseModel
from typing_extensions import Annotated

from ...files import atomic_write, inside, replace_folder, sync_all, utf8_text
from ..format import (
    CLASSES_FILE,
    MANIFEST_FILE,
    REJECTS_FILE,
    ClassFile,
    Dataset,
    DatasetError,
    Origin,
    Reject,
)
from ..imaging import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
)
from .candidates import Scan, import_candidates

__all__ = [
    "IMPORTERS",
    "NO_OK",
    "ImportReport",
    "Importer",
    "detect_format",
    "import_dataset",
    "is_image_name",
    "list_images",
    "object_ok_class",
    "path_ids",
    "pick_ok_class",
    "register_importer",
]

REPORT_FILE = "import-report.json"
OK_CLASS_NAMES = ("ok", "good", "free", "normal", "pass", "defect_free", "no_defect")
NO_OK = "none"  # --ok-class none: a defect-type set, no OK class
DEFAULT_OK = "ok"  # the class of images without objects in the object formats (VOC, YOLO)


def object_ok_class(ok_class: Optional[str]) -> Optional[str]:
    """The OK class of an object format: images without objects are OK (``ok`` unless named), none in a
    defect-type set."""
    return None if ok_class == NO_OK else ok_class or DEFAULT_OK


@dataclass(frozen=True)
class Importer:
    name: str
    version: str
    detect: Callable[[Path], bool]
    scan: Callable[[Path, Optional[str]], Scan]
    layout: str  # what ``detect`` looks for, for the error when nothing matches


IMPORTERS: Dict[str, Importer] = {}


def register_importer(name: str, version: str, detect: Callable[[Path], bool], layout: str):
    """Decorator for a scan function ``(src, ok_class) -> Scan``; ``layout`` describes the folders it reads."""

    def wrap(scan: Callable[[Path, Optional[str]], Scan]):
        IMPORTERS[name] = Importer(name, version, detect, scan, layout)
        return scan

    return wrap


class ImportReport(BaseModel):
    format: str
    out: Annotated[str, AfterValidator(utf8_text)]
    images: int
    classes: Dict[str, int]
    ok_class: Optional[str]  # None: a defect-type set
    masks: int
    rejected: int
    rejects: List[Reject]
    warnings: List[Reject]


def is_image_name(p: Path) -> bool:
    """Anything but a folder with an image suffix: files, symlinks (dangling ones too), FIFOs and devices;
    the import rejects what is no regular image file, with the reason."""
    try:
        return p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
    except OSError:  # a name the file system refuses: kept, and rejected with the reason
        return p.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> List[Path]:
    """Image files directly in ``folder``, sorted (masks named ``*_mask`` excluded)."""
    return sorted(p for p in folder.iterdir() if is_image_name(p) and not p.stem.endswith("_mask"))


def path_ids(paths: List[Path], root: Path) -> List[str]:
    """Record ids for ``paths``: the path below ``root`` without suffix (``a/b``), with the suffix kept
    where two files differ only by it (``a/b.jpg``, ``a/b.png``), so ids stay unique."""
    rels = [p.relative_to(root) for p in paths]
    n = Counter(r.with_suffix("").as_posix() for r in rels)
    return [r.with_suffix("").as_posix() if n[r.with_suffix("").as_posix()] == 1 else r.as_posix()
            for r in rels]


def pick_ok_class(names: List[str], ok_class: Optional[str], src: Path) -> Optional[str]:
    """The OK class: the one asked for (None for ``--ok-class none``: a defect-type set), else the one whose name
    says defect-free."""
    if ok_class == NO_OK and NO_OK not in names:
        return None
    if ok_class is not None:
        if ok_class not in names:
            raise DatasetError(f"{src}: --ok-class '{ok_class}' is not among the classes {names}")
        return ok_class
    found = [n for n in names if n.lower() in OK_CLASS_NAMES]
    if len(found) != 1:
        raise DatasetError(f"{src}: cannot tell which class is OK among {names}; pass --ok-class NAME, or "
                           f"--ok-class {NO_OK} for a defect-type set (every image defective)")
    return found[0]


def detect_format(src: Path) -> str:
    hits = [name for name, imp in IMPORTERS.items() if name != "imagefolder" and imp.detect(src)]
    if not hits and IMPORTERS["imagefolder"].detect(src):
        hits = ["imagefolder"]
    if not hits:
        expected = "; ".join(f"{n}: {imp.layout}" for n, imp in IMPORTERS.items())
        raise DatasetError(f"{src}: no known layout recognised (expected one of {expected}); pass --format")
    if len(hits) != 1:
        raise DatasetError(f"{src}: several layouts recognised ({', '.join(hits)}); pass --format "
                           f"(one of {', '.join(IMPORTERS)})")
    return hits[0]


def _check_folders(src: Path, out: Path, overwrite: bool) -> bool:
    """Refuse an --out that would damage the source or another folder; True when ``out`` holds a data set."""
    if not src.is_dir():
        raise DatasetError(f"{src}: not a folder")
    if inside(out, src):
        raise DatasetError(f"{out}: --out lies inside the source folder {src}; choose a folder outside it")
    if inside(src, out):
        raise DatasetError(f"{out}: --out holds the source folder {src}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    holds = (out / MANIFEST_FILE).exists() or (out / CLASSES_FILE).exists()
    if holds and not overwrite:
        raise DatasetError(f"{out}: already holds a data set; pass --overwrite to replace it")
    if out.is_dir() and not holds and any(out.iterdir()):
        raise DatasetError(f"{out}: exists and holds files that are not a lineguard data set; choose a new folder")
    return holds


def import_dataset(
    src: Union[str, Path],
    out: Union[str, Path],
    fmt: str = "auto",
    ok_class: Optional[str] = None,
    copy: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    allow_outside: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> ImportReport:
    """Import ``src`` (layout ``fmt``) into a lineguard data set at ``out``.

    The set is built in a temporary folder beside ``out`` and put in place in one step when complete: a
    failed or killed import (``overwrite`` included) leaves the data set that was there unchanged. Every
    file read must lie inside ``src`` (symlinks resolved) unless ``allow_outside``; every file written lies
    inside ``out``."""
    src, out = Path(src), Path(out)
    had_set = _check_folders(src, out, overwrite)
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt not in IMPORTERS:
        raise DatasetError(f"unknown format '{fmt}' (known: {', '.join(IMPORTERS)})")
    importer = IMPORTERS[fmt]
    scan = importer.scan(src, ok_class)
    classes = ClassFile(classes=scan.classes, ok_class=scan.ok_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work(out)
    work = Path(tempfile.mkdtemp(dir=str(out.parent), prefix=f".{out.name}.importing-{os.getpid()}-"))
    try:
        ds = Dataset(work, classes, [], list(scan.rejects))
        warnings = import_candidates(ds, scan, src, Origin(kind="importer", name=fmt, version=importer.version),
                                      copy=copy, allow_outside=allow_outside, max_pixels=max_pixels,
                                      progress=progress)
        sync_all(work)  # the copied images and drawn masks, before the manifest that names them
        ds.save()
        report = ImportReport(
            format=fmt, out=str(out), images=len(ds.records), classes=ds.counts(), ok_class=classes.ok_class,
            masks=sum(r.mask is not None for r in ds.records), rejected=len(ds.rejects),
            rejects=ds.rejects, warnings=warnings)
        atomic_write(work / REPORT_FILE, report.model_dump_json(indent=1))
        if not ds.records and had_set:
            first = f"; first: {ds.rejects[0].path}: {ds.rejects[0].reason}" if ds.rejects else ""
            raise DatasetError(f"{src}: nothing usable imported ({len(ds.rejects)} rejects{first}); the data set "
                               f"in {out} is unchanged")
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not ds.records:
        raise DatasetError(f"{src}: nothing usable imported ({len(ds.rejects)} rejects, see {out / REJECTS_FILE})")
    return report


def _remove_stale_work(out: Path) -> None:
    """Remove the temporary folders that killed imports into ``out`` left (their process is gone)."""
    for work in out.parent.glob(f".{glob.escape(out.name)}.importing-*"):
        pid = work.name.rsplit(".importing-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        return True
    return True


