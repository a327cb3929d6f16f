"""``lineguard bench``: latency percentiles and throughput per model, backend and batch size.

    rows = bench(["runs/a", "runs/b"], backends=["ort", "ort-int8"], batches=[1, 8])

Measurement: a warm-up per configuration, then ``rounds`` rounds in which every configuration of a
runtime family (ONNX Runtime, TensorRT, PyTorch) runs in turn for about ``seconds`` each, so slow
drifts of the host (up to 1.7x on our shared CPUs) hit all of them alike: compare ratios within one
run. Families run one after another (PyTorch's and ONNX Runtime's thread pools disturb each other).
``preprocess=True`` times camera-sized frames (``source_size``) through ``Runner.prepare`` as well.
Torch-free, Python 3.8 (runs on the line computer).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .runners import Runner, RunnerError, load_runner

__all__ = ["BenchRow", "bench", "machine", "recommend", "report"]

FAMILY = {"ort": "onnxruntime", "ort-int8": "onnxruntime", "trt": "tensorrt", "torch": "torch"}


@dataclass
class BenchRow:
    model: str
    backend: str
    batch: int
    preprocess: bool
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    images_per_s: float = float("nan")
    calls: int = 0
    error: Optional[str] = None
    runner: Dict[str, object] = field(default_factory=dict)


def machine() -> Dict[str, object]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: Dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                              "system": platform.platform()}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def _frames(runner: Runner, batch: int, preprocess: bool, source_size: Tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(batch)
    h, w, c = runner.input_shape if not preprocess else (*source_size, runner.input_shape[2])
    return rng.integers(0, 256, (batch, h, w, c), dtype=np.uint8)


def _call(runner: Runner, frames: np.ndarray, preprocess: bool) -> float:
    t0 = time.perf_counter()
    x = np.stack([runner.prepare(f) for f in frames]) if preprocess else frames
    runner.predict(x)
    return time.perf_counter() - t0


def bench(models: Sequence[Union[str, Path]], backends: Sequence[str], batches: Sequence[int] = (1,),
          preprocess: bool = False, source_size: Tuple[int, int] = (480, 640), rounds: int = 5,
          seconds: float = 0.5, warmup: int = 3, options: Optional[Dict[str, Dict[str, object]]] = None
          ) -> List[BenchRow]:
    """One row per (model, backend, batch). A runner that cannot load gives rows with ``error`` set
    (the others still run). ``options[backend]`` go to that backend's runner."""
    rows: List[BenchRow] = []
    for family in dict.fromkeys(FAMILY[b] for b in backends):
        runners: List[Tuple[str, str, Optional[Runner]]] = []
        for m in models:
            for b in (b for b in backends if FAMILY[b] == family):
                try:
                    runners.append((str(m), b, load_runner(m, backend=b, **(options or {}).get(b, {}))))
                except RunnerError as e:
                    runners.append((str(m), b, None))
                    rows += [BenchRow(str(m), b, n, preprocess, error=str(e)) for n in batches]
        configs = [(m, b, r, n) for m, b, r in runners if r is not None for n in batches]
        frames = {(id(r), n): _frames(r, n, preprocess, source_size) for _, _, r, n in configs}
        times: Dict[int, List[float]] = {i: [] for i in range(len(configs))}
        for _, _, r, n in configs:
            for _ in range(warmup):
                _call(r, frames[id(r), n], preprocess)
        for _ in range(rounds):
            for i, (_, _, r, n) in enumerate(configs):
                end = time.perf_counter() + seconds
                while True:
                    times[i].append(_call(r, frames[id(r), n], preprocess))
                    if time.perf_counter() >= end and len(times[i]) >= 3:
                        break
        for i, (m, b, r, n) in enumerate(configs):
            t = np.asarray(times[i]) * 1000
            rows.append(BenchRow(m, b, n, preprocess, p50_ms=float(np.percentile(t, 50)),
                                 p90_ms=float(np.percentile(t, 90)), p99_ms=float(np.percentile(t, 99)),
                                 images_per_s=float(n * 1000 / t.mean()), calls=len(t), runner=r.describe()))
        for _, _, r in runners:
            if r is not None:
                r.close()
    return rows


def recommend(rows: Sequence[BenchRow]) -> Dict[str, Dict[str, str]]:
    """Per model and runtime family, the backend with the lowest batch-1 median (e.g. ort vs ort-int8):
    INT8 is not assumed to win."""
    best: Dict[str, Dict[str, Tuple[float, str]]] = {}
    smallest = min((r.batch for r in rows), default=1)
    for r in rows:
        if r.error is None and r.batch == smallest:
            fam = best.setdefault(r.model, {})
            cur = fam.get(FAMILY[r.backend])
            if cur is None or r.p50_ms < cur[0]:
                fam[FAMILY[r.backend]] = (r.p50_ms, r.backend)
    return {m: {f: b for f, (_, b) in fams.items()} for m, fams in best.items()}


def report(rows: Sequence[BenchRow]) -> Dict[str, object]:
    """The JSON ``lineguard bench --json`` prints: machine, rows, recommendation."""
    return {"machine": machine(), "rows": [asdict(r) for r in rows], "recommended": recommend(rows)}
