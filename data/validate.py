"""Check a data set folder against its manifest: every file there, decodable, of the stated size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Union

from pydantic import BaseModel

from ..files import TMP_SUFFIX, resolved
from .format import Dataset, Reject
from .imaging import MAX_PIXELS, ImageFileError, read_image
from .progress import track

__all__ = ["ValidationReport", "validate_dataset"]


class ValidationReport(BaseModel):
    root: str
    images: int
    masks: int
    valid: bool
    errors: List[Reject]
    warnings: List[Reject]


def _stray_files(ds: Dataset) -> List[Reject]:
    """Files under ``images/`` and ``masks/`` that no record names, and leftover temporary files anywhere
    (e.g. from a killed run, or images of an earlier, larger run)."""
    named = {resolved(ds.path(rel)) for r in ds.records for rel in (r.image, r.mask) if rel is not None}
    out = []
    for path in sorted(p for p in ds.root.rglob("*") if not p.is_dir()):
        rel = path.relative_to(ds.root)
        if path.name.endswith(TMP_SUFFIX):
            out.append(Reject(path=str(path), reason="temporary file left by an interrupted write"))
        elif rel.parts[0] in ("images", "masks") and resolved(path) not in named:
            out.append(Reject(path=str(path), reason="stray file: no record of the manifest names it"))
    return out


def validate_dataset(root: Union[str, Path], progress: bool = True, max_pixels: int = MAX_PIXELS
                     ) -> ValidationReport:
    """Decode every image and mask; report each problem with the file and the reason. Files the manifest
    does not name (under images/ and masks/, and temporary files) are warnings."""
    ds = Dataset.load(root)
    errors: List[Reject] = []
    warnings: List[Reject] = []
    classes = set(ds.classes.classes)

    for rec_id, n in Counter(r.id for r in ds.records).items():
        if n > 1:
            errors.append(Reject(path=rec_id, reason=f"id used by {n} records"))
    for sha, n in Counter(r.sha256 for r in ds.records).items():
        if n > 1:
            ids = [r.id for r in ds.records if r.sha256 == sha]
            warnings.append(Reject(path=ids[0], reason=f"same image content as {', '.join(ids[1:])}"))

    for r in track(ds.records, "validate", enabled=progress):
        img_path = ds.path(r.image)
        if r.label not in classes:
            errors.append(Reject(path=str(img_path), reason=f"label '{r.label}' is not in {ds.classes.classes}"))
        try:
            pixels, sha = read_image(img_path, max_pixels=max_pixels)
        except ImageFileError as e:
            errors.append(Reject(path=str(img_path), reason=str(e)))
            continue
        if sha != r.sha256:
            errors.append(Reject(path=str(img_path), reason="content changed since import (sha256 differs)"))
        h, w = pixels.shape[:2]
        if (w, h) != (r.width, r.height):
            errors.append(Reject(path=str(img_path), reason=f"is {w}x{h}, manifest says {r.width}x{r.height}"))
        if r.mask is not None:
            mask_path = ds.path(r.mask)
            try:
                mask, mask_sha = read_image(mask_path, max_pixels=max_pixels)
            except ImageFileError as e:
                errors.append(Reject(path=str(mask_path), reason=f"mask unusable: {e}"))
                continue
            if r.mask_sha256 is not None and mask_sha != r.mask_sha256:
                errors.append(Reject(path=str(mask_path), reason="mask content changed since it was written "
                                                                 "(sha256 differs)"))
            if mask.shape[:2] != (h, w):
                errors.append(Reject(path=str(mask_path),
                                     reason=f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {w}x{h}"))
    warnings.extend(_stray_files(ds))
    if any(r.split is None for r in ds.records):
        warnings.append(Reject(path=str(ds.root), reason="some records have no split yet (run `data split`)"))
    return ValidationReport(root=str(ds.root), images=len(ds), masks=sum(r.mask is not None for r in ds.records),
                            valid=not errors, errors=errors, warnings=warnings)
