"""``lineguard export``, ``lineguard eval`` and ``lineguard bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import typer
from pydantic import BaseModel

from .. import options
from ..console import console, emit, shown
from .formats import FORMATS

if TYPE_CHECKING:
    from .bench import BenchReport


class ExportReport(BaseModel):
    """``lineguard export``'s result: the file written and the checks' reports beside it."""

    file: str
    size_mb: float
    parity: Optional[Dict[str, Any]] = None  # <file>.parity.json (onnx): ONNX Runtime vs PyTorch
    report: Optional[Dict[str, Any]] = None  # <file>.report.json (onnx-int8, engine): accuracy, size, speed


def export(
    model: Path = options.model(help="Model folder."),
    fmt: str = typer.Option("onnx", "--format", "-f", help=" | ".join(f.name for f in FORMATS if f.exported)),
    data: Optional[Path] = options.data(None, help="Real images: parity, calibration, accuracy."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (17: the TensorRT 8.5 ceiling)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Fixed batch size (default 1)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch (engine profile 1/8/32), not --batch."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images if not --data's train split."),
    half: bool = typer.Option(False, "--half", help="TensorRT FP16."),
    int8: bool = typer.Option(False, "--int8", help="TensorRT INT8."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="TensorRT workspace limit, GiB."),
    device: Optional[str] = options.device(None, help="TensorRT: cuda[:N] | dla:N (default cuda:0)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="INT8: accuracy points it may lose (1)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Export a model folder (formats: onnx, onnx-int8, engine) with parity/accuracy reports."""
    from .export import export as run
    from .formats import ExportError

    if dynamic and batch is not None:
        raise ExportError("--batch and --dynamic exclude each other")
    path = run(model, fmt, opset=opset, batch="dynamic" if dynamic else batch, data=data, calib=calib, half=half,
               int8=int8, workspace=workspace, device=device, max_drop=None if max_drop is None else max_drop / 100)
    side = {kind: Path(f"{path}.{kind}.json") for kind in ("parity", "report")}
    rep = ExportReport(file=str(path), size_mb=path.stat().st_size / 1e6,
                       **{k: json.loads(f.read_text()) for k, f in side.items() if f.is_file()})
    emit(rep, as_json, _show_export, quiet)


def _show_export(rep: ExportReport) -> None:
    console.print(f"{shown(rep.file)} ({rep.size_mb:.1f} MB)", highlight=False)
    if rep.parity:
        p = rep.parity
        console.print(f"parity vs PyTorch on {p['images']} images ({p['source']}): max abs diff "
                      f"{p['max_abs_diff']:.2e}, argmax agreement {p['argmax_agreement']:.4f}")
    if rep.report and "accuracy_delta" in rep.report:
        r = rep.report
        console.print(f"INT8 vs FP32 on {r['test_images']} test images: accuracy {r['accuracy']['int8']:.4f} vs "
                      f"{r['accuracy']['fp32']:.4f} ({r['accuracy_delta'] * 100:+.2f} points), size x"
                      f"{r['size_ratio']:.2f}, batch-1 {r['latency_ms']['int8']:.2f} vs {r['latency_ms']['fp32']:.2f}"
                      f" ms: use {'model-int8.onnx' if r['faster'] == 'int8' else 'model.onnx'} on this CPU"
                      f"{'; input convolution kept in FP32' if r['fp32_nodes'] else ''}")


def bench(
    model: List[Path] = options.model(help="Model folder or file; repeat to compare."),
    backend: List[str] = typer.Option(["ort"], "--backend", help="ort | ort-int8 | trt | torch; repeatable."),
    batch: List[int] = typer.Option([1, 2, 4, 8, 16, 32], "--batch", min=1, help="Batch size; repeatable."),
    device: str = options.device(help="cpu | cuda[:N] (ONNX Runtime and torch; an engine runs where it was built)."),
    preprocess: bool = typer.Option(False, "--preprocess/--no-preprocess",
                                    help="Include resizing 640x480 camera frames."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime / torch threads (default: all)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Interleaved measuring rounds."),
    seconds: float = typer.Option(0.5, "--seconds", help="Seconds per configuration and round."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON report here too."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Latency p50/p90/p99 and throughput per model, backend and batch size (one interleaved run)."""
    from ..console import strict_json
    from ..files import atomic_write
    from .bench import bench as run
    from .bench import nothing_ran, report
    from .runners import RunnerError

    ort_opts = {"device": device, "threads": threads}
    opts = {"ort": ort_opts, "ort-int8": ort_opts, "torch": {"device": device, "threads": threads}}
    rows = run(model, backend, batch, preprocess=preprocess, rounds=rounds, seconds=seconds, options=opts)
    rep = report(rows)
    if out is not None:
        atomic_write(out, strict_json(rep.model_dump(mode="json"), indent=1))
    emit(rep, as_json, lambda r: _show_bench(r, preprocess), quiet)
    failed = nothing_ran(rows)
    if failed:
        raise RunnerError(failed)


def _show_bench(rep: BenchReport, preprocess: bool) -> None:
    from rich.table import Table

    table = Table("model", "backend", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", title="lineguard bench")
    for r in rep.rows:
        if r["error"]:
            table.add_row(shown(r["model"]), r["backend"], str(r["batch"]), f"[red]{shown(r['error'])}[/]", "", "", "")
        else:
            table.add_row(shown(r["model"]), r["backend"], str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                          f"{r['p99_ms']:.2f}", f"{r['images_per_s']:.1f}")
    console.print(table)
    m = rep.machine
    console.print(f"{m['cpu']}, {m['cores']} cores; preprocessing {'included' if preprocess else 'excluded'}")
    for name, fams in rep.recommended.items():
        console.print(f"recommended for {shown(name)}: " + ", ".join(f"{f}: {b}" for f, b in fams.items()))


def evaluate(
    model: Path = options.model(help="Model folder (or an exported model file)."),
    data: Path = options.data(),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    backend: str = typer.Option("torch", "--backend", help="torch | ort | ort-int8 | trt (the one the line runs)."),
    device: Optional[str] = options.device(None, help="cpu | cuda[:N] | dla:N (default: the backend's: cpu, an "
                                                       "engine's own device)."),
    target_escape: Optional[float] = typer.Option(None, "--target-escape",
                                                  help="Pick the threshold on val for this escape rate."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Accuracy, macro-F1, per-class P/R, OK/NG AUROC, escape and false-reject rates, heatmap IoU, latency."""
    from .evaluate import evaluate as run

    rep = run(model, data, split=split, backend=backend, target_escape=target_escape, progress=not quiet,
              device=device)
    emit(rep, as_json, lambda m: console.print(
        f"{m.split} ({m.backend}): {m.images} images, accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, "
        + ("OK/NG figures not applicable (a defect-type model)" if m.task == "defect-type" else
           f"AUROC {m.ok_ng_auroc}, threshold {m.threshold:.4f}: escape {m.escape_rate:.4f}, false reject "
           f"{m.false_reject_rate:.4f}")
        + f"; heatmap IoU {m.heatmap_iou}; latency {m.latency.p50_ms:.1f} ms"), quiet)
