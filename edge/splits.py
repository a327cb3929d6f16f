"""Real frames from a lineguard data set, as every runner takes them (torch-free, Python 3.8).

    frames, labels = dataset_frames("data/mt", spec, split="test")   # uint8 (N, H, W, C), int64 (N,)
    test = load_frames("data/mt", spec, split="test", masks=True)     # + records, split, defect masks
    check_disjoint(load_frames("data/mt", spec, split="train"), test)  # calibration never sees test images

A requested split without images is an error (never a silent fall-back to every image); so is an image or
mask whose content changed since the manifest was written (its sha256).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from lineguard.data.format import Dataset, DatasetError, Record
from lineguard.data.imaging import ImageFileError, binarize_mask, read_image
from lineguard.data.modelspec import ModelSpec
from lineguard.data.preprocess import Preprocess

__all__ = ["Frames", "check_disjoint", "dataset_frames", "load_frames"]


@dataclass
class Frames:
    """Frames of a data set's split, their labels (indices of the model's classes) and records."""

    frames: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    records: List[Record]
    root: Path
    split: Optional[str]  # None: every image of the set
    masks: Optional[np.ndarray] = None  # bool (N, H, W) at the input size (False where no mask); masks=True

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_mask(self) -> np.ndarray:
        """bool (N,): the record has a defect mask."""
        return np.array([r.mask is not None for r in self.records], bool)


def _records(ds: Dataset, split: Optional[str], limit: Optional[int], seed: int) -> List[Record]:
    if split is None:
        records = list(ds.records)
    else:
        records = ds.split(split)
        if not records:
            have = sorted({r.split for r in ds.records if r.split is not None})
            raise DatasetError(f"{ds.root}: no images in the '{split}' split ({len(ds.records)} images, splits: "
                               f"{', '.join(have) or 'none'}); run `lineguard data split {ds.root}`")
    if limit is not None and len(records) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in pick]
    return records


def _read(ds: Dataset, r: Record, rel: str, want: Optional[str]) -> np.ndarray:
    """The pixels of ``rel`` (record ``r``'s image or mask), checked against the manifest's sha256 ``want``."""
    path = ds.path(rel)
    try:
        img, sha = read_image(path)
    except ImageFileError as e:
        raise DatasetError(f"{path} (record {r.id}): {e}") from None
    if want is not None and sha != want:
        raise DatasetError(f"{path} (record {r.id}): file changed since the manifest was written (sha256 "
                           f"{sha[:12]}..., manifest {want[:12]}...); restore it or import the data set again")
    return img


def _mask(ds: Dataset, r: Record, rel: str, image_shape: Tuple[int, ...], pre: Preprocess) -> np.ndarray:
    """Record ``r``'s mask file ``rel`` where ``pre`` puts its image (``Preprocess.resize_mask``)."""
    m = _read(ds, r, rel, r.mask_sha256)
    if m.shape[:2] != image_shape[:2]:
        raise DatasetError(f"{ds.path(rel)} (record {r.id}): mask is {m.shape[1]}x{m.shape[0]} px, "
                           f"the image {image_shape[1]}x{image_shape[0]}")
    return pre.resize_mask(binarize_mask(m))


def load_frames(data: Union[str, Path, Dataset], spec: ModelSpec, split: Optional[str] = "test",
                limit: Optional[int] = None, seed: int = 0, masks: bool = False) -> Frames:
    """Images of ``split`` (None: every image) resized with the model's ``Preprocess``, with their labels
    (and with ``masks``, the defect masks at the input size). A set whose ``split`` has no images is a
    :class:`DatasetError` (run ``lineguard data split``). ``limit`` takes an evenly spread, seeded sample.
    A label the model does not know, an unreadable file or one changed since the manifest is an error."""
    ds = data if isinstance(data, Dataset) else Dataset.load(data)
    records = _records(ds, split, limit, seed)
    index = {c: i for i, c in enumerate(spec.classes)}
    h, w = spec.preprocess.size
    frames = np.empty((len(records), h, w, spec.preprocess.channels), np.uint8)
    labels = np.empty(len(records), np.int64)
    got_masks = np.zeros((len(records), h, w), bool) if masks else None
    for i, r in enumerate(records):
        if r.label not in index:
            raise DatasetError(f"{ds.root}: record {r.id} has label '{r.label}', not a class of the model "
                               f"({spec.classes})")
        img = _read(ds, r, r.image, r.sha256)
        px = spec.preprocess.resize(img)
        frames[i] = px[..., None] if px.ndim == 2 else px
        labels[i] = index[r.label]
        if got_masks is not None and r.mask is not None:
            got_masks[i] = _mask(ds, r, r.mask, img.shape, spec.preprocess)
    return Frames(frames, labels, records, ds.root, split, got_masks)


def dataset_frames(data: Union[str, Path], spec: ModelSpec, split: Optional[str] = "test",
                   limit: Optional[int] = None, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(frames, labels) of :func:`load_frames`."""
    got = load_frames(data, spec, split=split, limit=limit, seed=seed)
    return got.frames, got.labels


def check_disjoint(calib: Frames, test: Frames) -> None:
    """:class:`DatasetError` if the calibration and the test frames share an image (the same content, or the
    same record of one data set): INT8 must not be gated on the images it was calibrated on."""
    same_set = calib.root.resolve() == test.root.resolve()
    ids = {r.id for r in calib.records} if same_set else set()
    shas = {r.sha256 for r in calib.records}
    shared = [r for r in test.records if r.sha256 in shas or r.id in ids]
    if shared:
        names = ", ".join(r.id for r in shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
        raise DatasetError(f"{test.root}: {len(shared)} image(s) of the '{test.split}' split (the accuracy check) "
                           f"are also calibration images ('{calib.split}' split of {calib.root}): {names}; "
                           "calibration and test images must differ: re-split with `lineguard data split` "
                           "or pass other --calib images")
