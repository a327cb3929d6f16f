"""What the synthesis benchmarks share: a real-vs-generated figure and a GAN run's latest log rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import cv2
import numpy as np

from lineguard.data.format import Dataset
from lineguard.synth.crops import defect_crops, group_by_class
from lineguard.synth.gan.source import GanSource


def sample_grid(real: Path, gan_dir: Path, out: Path, per_class: int = 8) -> None:
    """Rows per class: ``per_class`` real crops of ``real``'s train split, then as many generated patches (image
    over mask). It holds real crops: keep it out of the repository."""
    src = GanSource.load(gan_dir)
    size = src.resolution
    ds = Dataset.load(real)
    crops = group_by_class(defect_crops(ds, ds.split("train"), size=size, channels=1)[0])
    rows = []
    for c in src.classes:
        cells = [np.vstack([x.image, x.mask]) for x in crops.get(c, [])[:per_class]]
        n_real = len(cells)
        for p in src.sample(c, per_class, np.random.default_rng(0)):
            img = p.image if p.image.ndim == 2 else cv2.cvtColor(p.image, cv2.COLOR_RGB2GRAY)
            cells.append(np.vstack([img, p.mask]))
        rows.append(np.hstack([*cells[:n_real], np.full((2 * size, 8), 255, np.uint8), *cells[n_real:]]))
    width = max(r.shape[1] for r in rows)
    cv2.imwrite(str(out), np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1])), constant_values=255) for r in rows]))


def last_row(path: Path) -> Dict[str, Any]:
    """The last row of a JSON-lines file (a GAN run's ``log.jsonl``, ``shapes.jsonl`` or ``texture.jsonl``)."""
    return json.loads(path.read_text().splitlines()[-1])
