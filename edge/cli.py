"""``lineguard export`` and ``lineguard bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console, shown


def export(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | onnx-int8 | engine"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (17: the TensorRT 8.5 ceiling)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Fixed batch size or 'dynamic' (default 1)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Real images: parity, calibration, accuracy."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images if not --data's train split."),
    half: bool = typer.Option(False, "--half", help="TensorRT FP16."),
    int8: bool = typer.Option(False, "--int8", help="TensorRT INT8."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="TensorRT workspace limit, GiB."),
    device: Optional[str] = typer.Option(None, "--device", help="TensorRT: gpu | dla:0 | dla:1."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="INT8: accuracy points it may lose (1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Export a model directory (formats: onnx, onnx-int8, engine) with parity/accuracy reports."""
    from .export import export as run
    from .formats import strict_json

    b = None if batch is None else batch if batch == "dynamic" else _int(batch, "--batch")
    path = run(model, fmt, opset=opset, batch=b, data=data, calib=calib, half=half, int8=int8,
               workspace=workspace, device=device, max_drop=None if max_drop is None else max_drop / 100)
    reports = [p for p in (Path(str(path) + ".parity.json"), Path(str(path) + ".report.json")) if p.is_file()]
    summary = {"file": str(path), "size_mb": path.stat().st_size / 1e6,
               **{r.name.split(".")[-2]: json.loads(r.read_text()) for r in reports}}
    if as_json:
        print(strict_json(summary), flush=True)
        return
    console.print(f"{path} ({summary['size_mb']:.1f} MB)")
    if "parity" in summary:
        p = summary["parity"]
        console.print(f"parity vs PyTorch on {p['images']} images ({p['source']}): max abs diff "
                      f"{p['max_abs_diff']:.2e}, argmax agreement {p['argmax_agreement']:.4f}")
    if "report" in summary:
        r = summary["report"]
        console.print(f"INT8 vs FP32 on {r['test_images']} test images: accuracy {r['accuracy']['int8']:.4f} vs "
                      f"{r['accuracy']['fp32']:.4f} ({r['accuracy_delta'] * 100:+.2f} points), size x"
                      f"{r['size_ratio']:.2f}, batch-1 {r['latency_ms']['int8']:.2f} vs {r['latency_ms']['fp32']:.2f}"
                      f" ms: use {'model-int8.onnx' if r['faster'] == 'int8' else 'model.onnx'} on this CPU"
                      f"{'; input convolution kept in FP32' if r['fp32_nodes'] else ''}")


def bench(
    model: List[Path] = typer.Option(..., "--model", "-m", help="Model directory or file; repeat to compare."),
    backend: List[str] = typer.Option(["ort"], "--backend", "-b", help="ort | ort-int8 | trt | torch; repeatable."),
    batches: str = typer.Option("1,2,4,8,16,32", "--batch", help="Batch sizes, comma-separated."),
    preprocess: bool = typer.Option(False, "--preprocess/--no-preprocess",
                                    help="Include resizing 640x480 camera frames."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime / torch threads (default: all)."),
    device: str = typer.Option("cpu", "--device", help="ONNX Runtime: cpu | cuda | tensorrt; torch: cpu | cuda."),
    rounds: int = typer.Option(5, "--rounds", help="Interleaved measuring rounds."),
    seconds: float = typer.Option(0.5, "--seconds", help="Seconds per configuration and round."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON here too."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Latency p50/p90/p99 and throughput per model, backend and batch size (one interleaved run)."""
    from rich.table import Table

    from ..files import atomic_write
    from .bench import bench as run
    from .bench import nothing_ran, report
    from .formats import strict_json
    from .runners import RunnerError

    sizes = [_int(b, "--batch") for b in batches.split(",") if b.strip()]
    ort_opts = {"device": device, "threads": threads}
    options = {"ort": ort_opts, "ort-int8": ort_opts, "torch": {"device": device if device == "cuda" else "cpu",
                                                               "threads": threads}}
    rows = run(model, backend, sizes, preprocess=preprocess, rounds=rounds, seconds=seconds, options=options)
    result = report(rows)
    if out is not None:
        atomic_write(out, strict_json(result, indent=1))
    failed = nothing_ran(rows)
    if as_json:
        print(strict_json(result), flush=True)
        if failed:
            raise RunnerError(failed)
        return
    table = Table("model", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", title="lineguard bench")
    for r in rows:
        if r.error:
            table.add_row(r.model, r.backend, str(r.batch), f"[red]{shown(r.error)}[/]", "", "", "")
        else:
            table.add_row(r.model, r.backend, str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
                          f"{r.images_per_s:.1f}")
    console.print(table)
    m = result["machine"]
    console.print(f"{m['cpu']}, {m['cores']} cores; preprocessing {'included' if preprocess else 'excluded'}")
    for name, fams in result["recommended"].items():
        console.print(f"recommended for {name}: " + ", ".join(f"{f}: {b}" for f, b in fams.items()))
    if failed:
        raise RunnerError(failed)


def _int(text: str, flag: str) -> int:
    from .formats import ExportError

    try:
        value = int(text)
    except ValueError:
        raise ExportError(f"{flag} takes positive integers, got '{text}'") from None
    if value < 1:
        raise ExportError(f"{flag} takes positive integers, got {value}")
    return value
