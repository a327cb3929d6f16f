"""Throughput of the line simulator as `lineguard data simulate` runs it (render + PNG + manifest).

    python bench/simulate_speed.py --n 2000 --out runs/bench/simulate.json

Runs every configuration in one process, one after another, so the figures compare within one
run (this host's speed drifts). Acceptance: >= 200 images/s at 256 px with 2 workers.
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
from lineguard.synth.simulator import SimulatorConfig, simulate_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per configuration")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/simulate.json"))
    args = ap.parse_args()
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
    result = {"benchmark": "simulate", "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                                  "python": platform.python_version()}, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
