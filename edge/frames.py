"""Real frames from a lineguard data set, as every runner takes them (torch-free, Python 3.8).

    frames, labels = dataset_frames("data/mt", spec, split="test")   # uint8 (N, H, W, C), int64 (N,)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import ImageFileError, read_image
from lineguard.data.modelspec import ModelSpec

__all__ = ["dataset_frames"]


def dataset_frames(data: Union[str, Path], spec: ModelSpec, split: Optional[str] = "test",
                   limit: Optional[int] = None, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Images of ``split`` (None: every image; a set without that split: every image too) resized with
    the model's ``Preprocess``, and their labels as indices of ``spec.classes``. ``limit`` takes an
    evenly spread, seeded sample. A label the model does not know or an unreadable image is an error."""
    ds = Dataset.load(data)
    records = ds.split(split) if split is not None else []
    if not records:
        records = list(ds.records)
    if limit is not None and len(records) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in pick]
    index = {c: i for i, c in enumerate(spec.classes)}
    h, w = spec.preprocess.size
    frames = np.empty((len(records), h, w, spec.preprocess.channels), np.uint8)
    labels = np.empty(len(records), np.int64)
    for i, r in enumerate(records):
        if r.label not in index:
            raise DatasetError(f"{ds.root}: record {r.id} has label '{r.label}', not a class of the model "
                               f"({spec.classes})")
        try:
            img, _ = read_image(ds.path(r.image))
        except ImageFileError as e:
            raise DatasetError(f"{ds.path(r.image)} (record {r.id}): {e}") from None
        px = spec.preprocess.resize(img)
        frames[i] = px[..., None] if px.ndim == 2 else px
        labels[i] = index[r.label]
    return frames, labels
