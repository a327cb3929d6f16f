"""Edge acceptance figures on the magnetic-tile set: export, parity, INT8 accuracy and one bench run.

    python bench/train_magnetic_tile.py --work runs/bench/train_mt          # trains the model directories
    python bench/edge_magnetic_tile.py --work runs/bench/train_mt --out runs/bench/edge_mt.json

Exports the trained ``two_stream_lite0`` and ``cnn_resnet18`` (the plain resnet18 baseline) and a
``two_stream_resnet18`` (trained if its directory exists, else random weights: speed only) to ONNX and
INT8 with the real data (parity and INT8 accuracy on the test split), then benchmarks all of them in
one interleaved ``lineguard bench`` run and writes the ratios the edge issue asks for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lineguard.data.format import Dataset
from lineguard.data.modelspec import ModelSpec
from lineguard.data.preprocess import Preprocess
from lineguard.edge.bench import bench, machine, recommend
from lineguard.edge.export import export
from lineguard.edge.formats import ExportError
from lineguard.files import atomic_write
from lineguard.training.model_dir import save_model_files
from lineguard.training.models import create_model, model_config


def _random_model_dir(out: Path, data: Path, name: str, like: Path) -> Path:
    ds = Dataset.load(data)
    pre = ModelSpec.load(like).preprocess
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(ds.classes.classes), in_chans=pre.channels, img_size=pre.size).eval()
    spec = ModelSpec(arch=model_config(model), classes=ds.classes.classes, ok_class=ds.classes.ok_class,
                     preprocess=Preprocess(**pre.model_dump()))
    save_model_files(out, model, spec, ds.classes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/bench/train_mt"), help="train_magnetic_tile.py --work")
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/edge_mt.json"))
    args = ap.parse_args()
    data = args.work / "data"
    dirs = {"two_stream_lite0": args.work / "two_stream_lite0", "cnn_resnet18": args.work / "cnn_resnet18",
            "two_stream_resnet18": args.work / "two_stream_resnet18"}
    trained = {k: (v / "metrics.json").is_file() for k, v in dirs.items()}  # a trainer's model directory
    if not (dirs["two_stream_resnet18"] / "model.yaml").is_file():
        _random_model_dir(dirs["two_stream_resnet18"], data, "two_stream_resnet18", dirs["two_stream_lite0"])
    result = {"machine": machine(), "trained": trained, "export": {}}
    for name, d in dirs.items():
        t0 = time.perf_counter()
        export(d, "onnx", data=data)
        error = None
        try:  # an INT8 model losing > 1 point is refused; its report stays and the figures are kept
            export(d, "onnx-int8", data=data, max_drop=1.0 if not trained[name] else None)
        except ExportError as e:
            error = str(e)
        int8 = json.loads((d / "model-int8.onnx.report.json").read_text())
        result["export"][name] = {"seconds": time.perf_counter() - t0, "int8_error": error, "int8": int8,
                                  "parity": json.loads((d / "model.onnx.parity.json").read_text())}
        print(name, json.dumps({k: int8[k] for k in ("accuracy", "latency_ms")}), error or "", flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    opts = {"threads": args.threads}
    rows = bench(list(dirs.values()), ["ort", "ort-int8"], batches=batches, rounds=args.rounds,
                 options={"ort": opts, "ort-int8": opts})
    result["bench"] = [r.__dict__ for r in rows]
    result["recommended"] = recommend(rows)
    p50 = {(Path(r.model).name, r.backend, r.batch): r.p50_ms for r in rows if r.error is None}
    def ratio(a: tuple, b: tuple) -> object:
        return p50[a] / p50[b] if a in p50 and b in p50 else "missing"

    result["ratios"] = {
        "two_stream_lite0_vs_resnet18_ort_fp32_b1": ratio(("two_stream_lite0", "ort", 1), ("cnn_resnet18", "ort", 1)),
        **{f"{m}_int8_vs_fp32_b1": ratio((m, "ort-int8", 1), (m, "ort", 1)) for m in dirs},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=1, default=str))
    print(json.dumps(result["ratios"], indent=1))
    for (m, b, n), v in sorted(p50.items()):
        print(f"{m:22s} {b:9s} batch {n:2d}: p50 {v:7.2f} ms")


if __name__ == "__main__":
    main()
