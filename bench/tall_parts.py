"""A data set of wide parts (1 : 2.5) from the line simulator, where global context should matter: each part is
rendered square at ``--size`` and its middle band of ``--size / 2.5`` rows kept; scratches run long (half the
side or more, shortened only to stay on the face) and within 10 degrees of the band's length, thin and often faint,
so seeing one whole takes the width of the part. A defective part keeps its label only when most of its defect
(at least half its pixels, and ``MIN_DEFECT_PX``) lies in the band; the others are left out.

    python bench/tall_parts.py --out runs/bench/wide --n 1100 --size 240 --seed 0     # 96 x 240 px
    lineguard data split runs/bench/wide --val 0 --test 0 --folds 5
    python bench/arch_cv.py --data runs/bench/wide --img-size 96x224 --epochs 14 --note "wide parts"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lineguard.data.format import ClassFile, Dataset, Origin, Record, numbered_id
from lineguard.data.imaging import sha256_bytes, write_png
from lineguard.data.progress import track
from lineguard.files import sync_all
from lineguard.sim.config import OK, SIMULATOR_VERSION, SimulatorConfig
from lineguard.sim.defects import ScratchShape
from lineguard.sim.render import render_part

MIN_DEFECT_PX = 20  # a defect with fewer pixels inside the band does not count
LONG = ScratchShape(length=(0.5, 0.95), angle=10)


def build(out: Path, n: int, size: int, seed: int, progress: bool = True) -> Dataset:
    cfg = SimulatorConfig(size=size, scratch=LONG, ok_fraction=0.4)
    band = round(size / 2.5)
    top = (size - band) // 2
    origin = Origin(kind="generator", name="line-simulator-wide", version=SIMULATOR_VERSION, seed=seed)
    records, skipped = [], 0
    for i in track(range(n), "wide parts", enabled=progress, total=n):
        part = render_part(cfg, seed, i)
        image, mask = part.image[top:top + band], part.mask[top:top + band]
        inside, total = int((mask > 127).sum()), int((part.mask > 127).sum())
        if part.label != OK and (inside < MIN_DEFECT_PX or 2 * inside < total):
            skipped += 1
            continue
        ident = numbered_id("wide", i, n)
        data = write_png(out / "images" / f"{ident}.png", image, durable=False)
        mask_data = write_png(out / "masks" / f"{ident}.png", mask, durable=False)
        records.append(Record(id=ident, image=f"images/{ident}.png", label=part.label, mask=f"masks/{ident}.png",
                              source="simulated", origin=origin, sha256=sha256_bytes(data),
                              mask_sha256=sha256_bytes(mask_data), width=size, height=band))
    ds = Dataset(out, ClassFile(classes=cfg.classes, ok_class=OK), records)
    sync_all(out)
    ds.save()
    print(json.dumps({"out": str(out), "images": len(records), "skipped": skipped, "size": [band, size],
                      "classes": ds.counts()}))
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build(args.out, args.n, args.size, args.seed)


if __name__ == "__main__":
    main()
