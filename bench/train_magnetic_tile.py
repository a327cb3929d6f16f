"""Train every architecture on the magnetic-tile set with one recipe and write the figures as JSON.

    LINEGUARD_REAL_DATA=../shared/datasets/magnetic-tile \
        python bench/train_magnetic_tile.py --minutes 60 --out runs/bench/train_mt.json

Fixed stratified 70/10/20 split (seed 0), 224 px gray, the default TrainConfig recipe; each architecture
gets the same time budget, its model folder under --work. They run one after another in this process (compare
within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from _magnetic_tile import prepared_split

from lineguard.files import atomic_write
from lineguard.training.config import TrainConfig
from lineguard.training.engine import train

ARCHS = ["two_stream_lite0", "cnn_lite0", "cnn_resnet18"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=ARCHS)
    ap.add_argument("--minutes", type=float, default=60.0, help="training time budget per architecture")
    ap.add_argument("--epochs", type=int, default=200, help="upper bound; the time budget usually ends first")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--work", type=Path, default=Path("runs/bench/train_mt"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/train_mt.json"))
    args = ap.parse_args()
    data = prepared_split(args.work)
    results = {}
    for name in args.archs:
        cfg = TrainConfig(arch=name, epochs=args.epochs, max_minutes=args.minutes, precision=args.precision,
                          patience=1000)
        t0 = time.perf_counter()
        s = train(cfg, data, args.work / name, resume=(args.work / name / "checkpoint.pt").exists(), progress=False)
        results[name] = {"wall_minutes": (time.perf_counter() - t0) / 60, **s}
        t = s["test"]
        print(json.dumps({"arch": name, "test_accuracy": t["accuracy"], "test_macro_f1": t["macro_f1"],
                          "test_auroc": t["ok_ng_auroc"], "train_minutes": s["train_minutes"],
                          "images_per_s": s["train_images_per_s"], "gmacs": s["gmacs"]}), flush=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    report = {"benchmark": "train_magnetic_tile", "split": "stratified 70/10/20 seed 0", "precision": args.precision,
              "minutes_per_arch": args.minutes, "machine": machine, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
