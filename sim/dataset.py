"""A simulated data set: ``n`` parts rendered into a folder in the lineguard format (data/README.md).

    ds = simulate_dataset("data/sim", n=2000, seed=0)

Part ``i`` is :func:`~lineguard.sim.render.render_part` ``(cfg, seed, i)``: the data set is identical whatever
the number of worker processes. ``classes.yaml`` lists the configured defects (sorted), then the OK class;
``simulator.yaml`` is the resolved config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

from ..config import dump_config
from ..data.format import CLASSES_FILE, MANIFEST_FILE, ClassFile, Dataset, DatasetError, Origin, Record, numbered_id
from ..data.imaging import sha256_bytes, write_png
from ..data.progress import track
from ..files import sync_all
from ..workers import run_chunks
from .config import OK, SIMULATOR_VERSION, SimulatorConfig
from .render import render_part

__all__ = ["CONFIG_FILE", "simulate_dataset"]

CONFIG_FILE = "simulator.yaml"
MAX_CHUNK = 32  # parts a worker renders per task
Row = Tuple[int, str, str, str]  # index, label, image sha256, mask sha256


class _Job(NamedTuple):
    cfg: SimulatorConfig
    seed: int
    out: str
    n: int
    chunk: int


def _render_chunk(job: _Job, k: int) -> List[Row]:
    """Render and write the parts of chunk ``k``; returns a row per part."""
    root = Path(job.out)
    rows = []
    for i in range(k * job.chunk, min(job.n, (k + 1) * job.chunk)):
        part = render_part(job.cfg, job.seed, i)
        ident = numbered_id("sim", i, job.n)
        data = write_png(root / "images" / f"{ident}.png", part.image, durable=False)  # synced before the manifest
        mask_data = write_png(root / "masks" / f"{ident}.png", part.mask, durable=False)
        rows.append((i, part.label, sha256_bytes(data), sha256_bytes(mask_data)))
    return rows


def _rows(job: _Job, workers: int) -> Iterator[Row]:
    """Every part's row once written, in the order they are done."""
    for rows in run_chunks(_render_chunk, job, range(math.ceil(job.n / job.chunk)), workers):
        yield from rows


def simulate_dataset(out: Union[str, Path], n: int, seed: int = 0, cfg: Optional[SimulatorConfig] = None,
                     workers: int = 2, progress: bool = True) -> Dataset:
    """Render ``n`` parts into the data set folder ``out`` (lineguard format) and return the Dataset."""
    cfg = cfg if cfg is not None else SimulatorConfig()
    out = Path(out)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name in (CLASSES_FILE, MANIFEST_FILE):
        if (out / name).exists():
            raise DatasetError(f"{out}: already holds a data set ({name} exists); simulate into a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / CONFIG_FILE)
    chunk = 1 if workers <= 1 else max(1, min(MAX_CHUNK, math.ceil(n / (workers * 4))))
    done: List[Optional[Tuple[str, str, str]]] = [None] * n
    for i, label, sha, mask_sha in track(_rows(_Job(cfg, seed, str(out), n, chunk), workers), "simulate",
                                         enabled=progress, total=n):
        done[i] = (label, sha, mask_sha)
    origin = Origin(kind="generator", name="line-simulator", version=SIMULATOR_VERSION, seed=seed)
    records = []
    for i, row in enumerate(done):
        assert row is not None
        ident = numbered_id("sim", i, n)
        records.append(Record(id=ident, image=f"images/{ident}.png", label=row[0], mask=f"masks/{ident}.png",
                              source="simulated", origin=origin, sha256=row[1], mask_sha256=row[2], width=cfg.size,
                              height=cfg.size))
    ds = Dataset(out, ClassFile(classes=cfg.classes, ok_class=OK), records)
    sync_all(out)  # every image and mask, before the manifest that names them
    ds.save()
    return ds
