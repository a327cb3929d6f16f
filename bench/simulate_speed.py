"""Throughput of the line simulator as `lineguard data simulate` runs it (render + PNG + manifest).

    python bench/simulate_speed.py --n 2000 --out runs/bench/simulate.json

Runs every configuration in one process, one after another, so the figures compare within one
run (this host's speed drifts). Acceptance (``acceptance`` in the JSON): >= 200 images/s at 256 px, gray,
with 2 workers; below 100 (the floor the test suite used to hold) the simulator has regressed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from lineguard.files import atomic_write
from lineguard.sim import SimulatorConfig, simulate_dataset

TARGET_IMAGES_PER_S = 200.0  # 256 px, gray, 2 workers
FLOOR_IMAGES_PER_S = 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/simulate.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lg-sim-") as tmp:  # start the fork server before timing
        simulate_dataset(Path(tmp) / "warm", n=8, cfg=SimulatorConfig(size=64), workers=2, progress=False)
    rows = []
    for channels in (1, 3):
        for workers in (1, 2):
            times = []
            for _ in range(args.repeats):
                tmp = Path(tempfile.mkdtemp(prefix="lg-sim-"))
                t0 = time.perf_counter()
                simulate_dataset(tmp / "ds", n=args.n, seed=0, cfg=SimulatorConfig(size=args.size, channels=channels),
                                 workers=workers, progress=False)
                times.append(time.perf_counter() - t0)
                shutil.rmtree(tmp)
            best = min(times)
            rows.append({"channels": channels, "workers": workers, "n": args.n, "size": args.size,
                         "seconds": round(best, 3), "images_per_s": round(args.n / best, 1)})
            print(json.dumps(rows[-1]))
    gray2 = next(r for r in rows if r["channels"] == 1 and r["workers"] == 2)
    acceptance = {"size": args.size, "images_per_s": gray2["images_per_s"], "target": TARGET_IMAGES_PER_S,
                  "floor": FLOOR_IMAGES_PER_S, "met": gray2["images_per_s"] >= TARGET_IMAGES_PER_S,
                  "regressed": gray2["images_per_s"] < FLOOR_IMAGES_PER_S}
    result = {"benchmark": "simulate", "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                                  "python": platform.python_version()}, "results": rows,
              "acceptance": acceptance}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
