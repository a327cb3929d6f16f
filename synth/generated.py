"""The folder of a generated set (see :mod:`lineguard.synth.generate`): ``generate.yaml`` (the settings),
``parts/c<k>.json`` (one per chunk, written when its files are), and once every chunk is there the merged
data set (:func:`merge_shards`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Tuple, Union

from pydantic import ValidationError

from .. import LineguardError
from ..config import StrictModel, describe, dump_config, read_yaml
from ..data.format import CLASSES_FILE, MANIFEST_FILE, REJECTS_FILE, ClassFile, Dataset, Record, numbered_id
from ..files import TMP_SUFFIX, atomic_path, atomic_write
from .compose import ComposeConfig
from .near_copy import NearCopyConfig

__all__ = ["FILES_PER_FOLDER", "GENERATOR_VERSION", "GenerateError", "GenerateSettings", "chunk_count", "claim",
           "merge_shards", "part_path", "read_settings"]

GENERATOR_VERSION = "2"  # 2: patches drawn per chunk
FILES_PER_FOLDER = 10_000
SETTINGS_FILE = "generate.yaml"
REPORT_FILE = "generate-report.json"
PARTS = "parts"


class GenerateError(LineguardError):
    """A generation that cannot start, resume or merge; the message names the folder and the cause."""


class GenerateSettings(StrictModel):
    """``generate.yaml``: what a folder holds; a resumed run must match it exactly."""

    generator: str = GENERATOR_VERSION
    method: str
    version: str
    source_classes: List[str]
    base: str  # where the first run found the base set (for information)
    base_digest: str  # the base set's train split (OK backgrounds and defect records)
    classes: ClassFile
    n: int
    seed: int
    size: int
    chunk: int
    compose: ComposeConfig
    near_copy: NearCopyConfig


def part_path(out: Path, k: int) -> Path:
    return out / PARTS / f"c{k:07d}.json"


def chunk_count(s: GenerateSettings) -> int:
    return math.ceil(s.n / s.chunk)


def read_settings(out: Path) -> GenerateSettings:
    path = out / SETTINGS_FILE
    if not path.is_file():
        raise GenerateError(f"{out}: not a generated set ({SETTINGS_FILE} missing)")
    try:
        return GenerateSettings.model_validate(read_yaml(path, GenerateError))
    except ValidationError as e:
        raise GenerateError(f"{path}: {describe(e, GenerateSettings)}") from None


def claim(out: Path, settings: GenerateSettings) -> None:
    """Write ``generate.yaml`` and ``parts/``, or check that the folder's run has the same settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        old = read_settings(out).model_dump(mode="json")
        new = settings.model_dump(mode="json")
        # the base set is compared by content (base_digest): shards on other machines may mount it elsewhere
        diff = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k != "base" and old.get(k) != new[k]]
        if diff:
            raise GenerateError(f"{path}: this folder holds a run with other settings ({'; '.join(diff)}); "
                                f"resume with the same settings or write to a new folder")
    else:
        for name in (CLASSES_FILE, MANIFEST_FILE):
            if (out / name).exists():
                raise GenerateError(f"{out}: holds a data set not made by `generate` ({name} exists)")
        out.mkdir(parents=True, exist_ok=True)
        dump_config(settings, path)
    (out / PARTS).mkdir(exist_ok=True)


def _part_records(out: Path, s: GenerateSettings, k: int) -> Tuple[List[Record], int]:
    """The records of chunk ``k``'s part and its near-copy rejections; a damaged part is an error."""
    path = part_path(out, k)
    try:
        part = json.loads(path.read_text())
        rows = [Record.model_validate(r) for r in part["records"]]
    except (ValueError, KeyError, TypeError) as e:
        raise GenerateError(f"{path}: unreadable part ({e}); delete it and rerun to render it again") from None
    want = [numbered_id("gen", i, s.n) for i in range(k * s.chunk, min(s.n, (k + 1) * s.chunk))]
    if [r.id for r in rows] != want:
        raise GenerateError(f"{path}: holds images {[r.id for r in rows][:3]}..., expected {want[:3]}...; "
                            f"delete it and rerun")
    return rows, int(part["near_copy_rejected"])


def merge_shards(out: Union[str, Path], excluded_backgrounds: Optional[List[str]] = None) -> Dataset:
    """Merge every chunk's part in ``out`` into ``manifest.jsonl`` + ``classes.yaml`` (+ the report); a
    missing chunk is an error naming the shards to run."""
    out = Path(out)
    s = read_settings(out)
    total = chunk_count(s)
    missing = [k for k in range(total) if not part_path(out, k).is_file()]
    if missing:
        raise GenerateError(f"{out}: {len(missing)} of {total} chunks are not rendered yet (chunks "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}); run the missing shards or "
                            f"rerun to resume")
    for stale in out.rglob(f".*{TMP_SUFFIX}"):  # a killed run's half-written files: every chunk is done now
        stale.unlink(missing_ok=True)
    counts = {c: 0 for c in s.classes.classes}
    rejected = 0
    with atomic_path(out / MANIFEST_FILE) as tmp, tmp.open("w", encoding="utf-8") as f:  # shards may race: own temp
        for k in range(total):
            rows, r = _part_records(out, s, k)
            rejected += r
            for rec in rows:
                counts[rec.label] += 1
                f.write(rec.model_dump_json(exclude_none=True) + "\n")
    s.classes.save(out / CLASSES_FILE)
    (out / REJECTS_FILE).touch()
    report = {"images": s.n, "classes": counts, "method": s.method, "version": s.version, "seed": s.seed,
              "near_copy_rejected": rejected, "near_copy": s.near_copy.enabled}
    if excluded_backgrounds is not None:
        report["excluded_backgrounds"] = excluded_backgrounds
    atomic_write(out / REPORT_FILE, json.dumps(report, indent=1))
    return Dataset.load(out)
