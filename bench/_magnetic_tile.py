"""The benchmarks' shared data step: the magnetic-tile set imported and split 70/10/20 (seed 0), once."""

from __future__ import annotations

import os
from pathlib import Path

from lineguard.data.format import Dataset
from lineguard.data.importers import import_dataset
from lineguard.data.split import split_dataset


def prepared_split(work: Path) -> Path:
    """``work/data``: ``$LINEGUARD_REAL_DATA`` imported and split, reused when already there."""
    src = os.environ.get("LINEGUARD_REAL_DATA")
    if not src:
        raise SystemExit("set LINEGUARD_REAL_DATA to the magnetic-tile folder")
    data = work / "data"
    if not (data / "manifest.jsonl").exists():
        import_dataset(src, data, progress=False)
        split_dataset(Dataset.load(data), val=0.1, test=0.2, seed=0)
    return data
