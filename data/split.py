"""Stratified, seeded train/val/test splits (and k folds) that keep identical images together, and the
checks of what training may use: the class index of every record, a split training can start on, the
synthetic records to train beside a real set."""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from pydantic import BaseModel

from .format import Dataset, DatasetError, Record

__all__ = ["SplitReport", "check_training_split", "label_indices", "label_sets", "split_dataset", "synthetic_records"]


class SplitReport(BaseModel):
    images: int
    seed: int
    folds: Optional[int]
    counts: Dict[str, Dict[str, int]]  # split -> class -> images
    warnings: List[str]  # classes too small to reach every requested split


def _groups(records: List[Record]) -> Dict[str, List[int]]:
    """Indices of records grouped by image content: duplicates must share a split."""
    groups: Dict[str, List[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.sha256].append(i)
    return groups


def _take(n: int, fraction: float) -> int:
    """How many of ``n`` groups go to a split of ``fraction``: rounded, at least 1 when possible."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, round(n * fraction)), n - 1)


def split_dataset(ds: Dataset, val: float = 0.1, test: float = 0.2, seed: int = 0,
                  folds: Optional[int] = None) -> SplitReport:
    """Assign ``split`` (and ``fold`` with ``folds``) to every record of ``ds`` in place, then save.

    Per class, groups of identical images are shuffled with ``seed``; the first share goes to
    test, the next to val, the rest to train. With ``folds=K`` the non-test groups of each class
    are also dealt round-robin into folds 0..K-1 (for cross-validation; val stays as assigned).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"split fractions must be in [0, 1) and sum below 1: val={val}, test={test}")
    if folds is not None and folds < 2:
        raise DatasetError(f"--folds must be at least 2, got {folds}")
    rng = np.random.default_rng(seed)
    by_class: Dict[str, List[List[int]]] = defaultdict(list)
    for members in _groups(ds.records).values():
        by_class[ds.records[members[0]].label].append(members)
    records = list(ds.records)
    warnings: List[str] = []
    asked = {"test": test, "val": val}
    for label in sorted(by_class):
        groups = sorted(by_class[label], key=lambda m: records[m[0]].id)
        order = rng.permutation(len(groups))
        n_test = _take(len(groups), test)
        n_val = _take(len(groups) - n_test, val / (1 - test)) if val > 0 else 0
        short = [name for name, n in (("test", n_test), ("val", n_val)) if asked[name] > 0 and n == 0]
        if short or len(groups) - n_test - n_val == 0:
            warnings.append(f"class '{label}' has {len(groups)} distinct image(s): none in "
                            f"{', '.join(short) or 'train'}")
        for rank, g in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            fold = (rank - n_test) % folds if folds and split != "test" else None
            for i in groups[g]:
                records[i] = records[i].model_copy(update={"split": split, "fold": fold})
    counts = {s: ds.counts([r for r in records if r.split == s]) for s in ("train", "val", "test")}
    empty = [name for name, share in asked.items() if share > 0 and not sum(counts[name].values())]
    if empty:
        raise DatasetError(f"{ds.root}: too few images for the split asked for: {' and '.join(empty)} would "
                           f"hold no image ({'; '.join(warnings)}); the data set is unchanged")
    ds.records = records
    ds.save()
    return SplitReport(images=len(ds), seed=seed, folds=folds, counts=counts, warnings=warnings)


def label_indices(ds: Dataset, records: Sequence[Record], classes: Optional[Sequence[str]] = None) -> List[int]:
    """The index of every record's label in ``classes`` (default: ``ds``'s own); a label that is not one
    of them is a :class:`DatasetError` naming the record."""
    names = list(ds.classes.classes if classes is None else classes)
    index = {c: i for i, c in enumerate(names)}
    for r in records:
        if r.label not in index:
            raise DatasetError(f"{ds.root}: record {r.id}: label '{r.label}' is not one of the classes {names}")
    return [index[r.label] for r in records]


def label_sets(ds: Dataset, records: Sequence[Record], classes: Optional[Sequence[str]] = None) -> np.ndarray:
    """Every record's classes as a multi-hot row (N x C float32) over ``classes`` (default: ``ds``'s own): its
    label and the class of each of its boxes (several defects on one part); a box class outside ``classes`` is a
    :class:`DatasetError` naming the record."""
    names = list(ds.classes.classes if classes is None else classes)
    index = {c: i for i, c in enumerate(names)}
    rows = np.zeros((len(records), len(names)), np.float32)
    for k, (r, i) in enumerate(zip(records, label_indices(ds, records, names))):
        rows[k, i] = 1.0
        for b in r.boxes or []:
            if b.label not in index:
                raise DatasetError(f"{ds.root}: record {r.id}: box class '{b.label}' is not one of the classes "
                                   f"{names}")
            rows[k, index[b.label]] = 1.0
    return rows


def check_training_split(ds: Dataset, train_records: Sequence[Record], val_records: Sequence[Record]) -> None:
    """Raise :class:`DatasetError` when training cannot start: an empty split, a label outside the
    classes, or a class of ``classes.yaml`` without a training image (the model could never learn it)."""
    for name, rows in (("train", train_records), ("val", val_records)):
        if not rows:
            raise DatasetError(f"{ds.root}: split '{name}' is empty (run `lineguard data split`?)")
    trained = set(label_indices(ds, train_records))
    label_indices(ds, val_records)
    missing = [c for i, c in enumerate(ds.classes.classes) if i not in trained]
    if len(missing) == 1:
        raise DatasetError(f"{ds.root}: class '{missing[0]}' has no training images")
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise DatasetError(f"{ds.root}: classes {names} have no training images")


def synthetic_records(real: Dataset, synthetic: Dataset) -> List[Record]:
    """The records of a synthetic set that training may use beside ``real``: those without a split or
    in its train split. Their labels must be classes of ``real``; an empty set is an error."""
    recs = [r for r in synthetic.records if r.split in (None, "train")]
    if not recs:
        raise DatasetError(f"{synthetic.root}: no images without a split or in the train split")
    unknown = sorted({r.label for r in recs} - set(real.classes.classes))
    if unknown:
        raise DatasetError(f"{synthetic.root}: labels {unknown} are not classes of {real.root} "
                           f"({real.classes.classes})")
    return recs
