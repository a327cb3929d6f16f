"""The lineguard data set format, read and written by every stage (see data/README.md).

A data set is a folder with::

    classes.yaml      format version, class names in index order, the OK class
    manifest.jsonl    one JSON object per image (:class:`Record`)
    rejects.jsonl     files an importer could not use, each with the reason (may be empty)

Paths in the manifest are relative to the folder when the file lies inside it, absolute otherwise
(imports reference the original files unless ``--copy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, field_validator, model_validator

from .. import LineguardError
from ..config import describe, read_yaml
from ..files import FileError, atomic_path, atomic_write, read_regular, utf8_text

__all__ = [
    "CLASSES_FILE",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "REJECTS_FILE",
    "SPLITS",
    "Box",
    "ClassFile",
    "Dataset",
    "DatasetError",
    "Origin",
    "Record",
    "Reject",
    "numbered_id",
]

FORMAT_VERSION = 1
CLASSES_FILE = "classes.yaml"
MANIFEST_FILE = "manifest.jsonl"
REJECTS_FILE = "rejects.jsonl"
SPLITS = ("train", "val", "test")
Source = Literal["real", "simulated", "synthetic"]
Split = Literal["train", "val", "test"]


class DatasetError(LineguardError):
    """A data set folder that cannot be read; the message names the file and the cause."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Box(_Row):
    """An axis-aligned box in pixels (x1, y1 exclusive), with its class."""

    label: str
    x0: FiniteFloat
    y0: FiniteFloat
    x1: FiniteFloat
    y1: FiniteFloat

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box has no area: ({self.x0}, {self.y0}, {self.x1}, {self.y1})")
        return self


class Origin(_Row):
    """Who made a record: an importer or a generator, its version, and the seed if any."""

    kind: Literal["importer", "generator"]
    name: str
    version: str
    seed: Optional[int] = None


class Record(_Row):
    """One image of a data set. ``mask`` is a single-channel PNG, pixel >= 128 = defect."""

    id: str
    image: str
    label: str
    mask: Optional[str] = None
    boxes: Optional[List[Box]] = None
    split: Optional[Split] = None
    fold: Optional[int] = None
    source: Source
    origin: Origin
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mask_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Reject(_Row):
    """A file an importer could not use, and why (file names that are not UTF-8 are kept as ``\\xNN``)."""

    path: str
    reason: str

    @field_validator("path", "reason")
    @classmethod
    def _utf8(cls, v: str) -> str:
        return utf8_text(v)


class ClassFile(_Row):
    """``classes.yaml``: class names in index order and the name of the OK (defect-free) class; without one
    (``ok_class`` absent or null) the set is a defect-type set: every image is defective, its models tell the
    defect's type and give no OK/NG figures."""

    format: Literal["lineguard-dataset"] = "lineguard-dataset"
    version: int = FORMAT_VERSION
    classes: List[str]
    ok_class: Optional[str] = None

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: List[str]) -> List[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError(f"class names must be unique and non-empty: {v}")
        return v

    @model_validator(mode="after")
    def _ok_named(self) -> ClassFile:
        if self.ok_class is not None and self.ok_class not in self.classes:
            raise ValueError(f"ok_class '{self.ok_class}' is not one of the classes {self.classes}")
        if self.version != FORMAT_VERSION:
            raise ValueError(f"format version {self.version}, this lineguard reads version {FORMAT_VERSION}")
        return self

    @property
    def defect_classes(self) -> List[str]:
        return [c for c in self.classes if c != self.ok_class]

    @property
    def ok_index(self) -> Optional[int]:
        """The OK class's index, None in a defect-type set."""
        return None if self.ok_class is None else self.classes.index(self.ok_class)

    def index(self, name: str) -> int:
        return self.classes.index(name)

    def save(self, path: Union[str, Path]) -> None:
        atomic_write(path, yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def numbered_id(prefix: str, i: int, n: int) -> str:
    """The record id of item ``i`` of ``n`` made by a writer (``sim-000017``): zero-padded, so ids sort in
    item order."""
    return f"{prefix}-{i:0{max(6, len(str(max(n - 1, 0))))}d}"


def _read_jsonl(path: Path, model: type) -> Iterator:
    try:
        data = read_regular(path)
    except FileError as e:
        raise DatasetError(str(e)) from None
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line)") from None
        if not line.strip():
            continue
        try:
            yield model.model_validate_json(line)
        except ValidationError as e:
            raise DatasetError(f"{path}:{n}: {describe(e, quote=False, limit=1)}") from None


def _write_jsonl(path: Path, rows: Iterable[BaseModel]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:  # a killed write leaves the old file
        for r in rows:
            f.write(r.model_dump_json(exclude_none=True) + "\n")


def _load_classes(path: Path) -> ClassFile:
    try:
        return ClassFile.model_validate(read_yaml(path, DatasetError))
    except ValidationError as e:
        raise DatasetError(f"{path}: {describe(e, quote=False, limit=1)}") from None


class Dataset:
    """A data set folder: its class file, its records and its rejects."""

    def __init__(self, root: Union[str, Path], classes: ClassFile, records: List[Record],
                 rejects: Optional[List[Reject]] = None) -> None:
        self.root = Path(root)
        self.classes = classes
        self.records = records
        self.rejects = rejects or []

    @classmethod
    def load(cls, root: Union[str, Path]) -> Dataset:
        root = Path(root)
        cpath = root / CLASSES_FILE
        if not cpath.is_file():
            raise DatasetError(f"{root}: not a lineguard data set ({CLASSES_FILE} missing)")
        classes = _load_classes(cpath)
        mpath = root / MANIFEST_FILE
        if not mpath.is_file():
            raise DatasetError(f"{root}: {MANIFEST_FILE} missing")
        records = list(_read_jsonl(mpath, Record))
        rpath = root / REJECTS_FILE
        rejects = list(_read_jsonl(rpath, Reject)) if rpath.is_file() else []
        return cls(root, classes, records, rejects)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.classes.save(self.root / CLASSES_FILE)
        _write_jsonl(self.root / MANIFEST_FILE, self.records)
        _write_jsonl(self.root / REJECTS_FILE, self.rejects)

    def path(self, rel: str) -> Path:
        """Absolute path of a manifest path (relative ones are inside the data set folder)."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def absolute(self, r: Record, **update: Any) -> Record:
        """A copy of ``r`` naming its image and mask by absolute path (so another data set's manifest can list
        it without copying the files), with ``update``'s fields set."""
        return r.model_copy(update={"image": str(self.path(r.image).resolve()),
                                    "mask": None if r.mask is None else str(self.path(r.mask).resolve()), **update})

    def relative(self, path: Union[str, Path]) -> str:
        """The manifest spelling of ``path``: relative inside the folder, absolute outside."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    def split(self, name: str) -> List[Record]:
        return [r for r in self.records if r.split == name]

    def counts(self, records: Optional[List[Record]] = None) -> Dict[str, int]:
        """Images per class, in class order."""
        rows = self.records if records is None else records
        out = {c: 0 for c in self.classes.classes}
        for r in rows:
            out[r.label] = out.get(r.label, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.records)
