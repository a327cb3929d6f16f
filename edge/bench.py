"""``lineguard bench``: latency percentiles and throughput per model, backend and batch size.

    rows = bench(["runs/a", "runs/b"], backends=["ort", "ort-int8"], batches=[1, 8])

Measurement: a warm-up per configuration, then ``rounds`` rounds in which every configuration of a
runtime family (ONNX Runtime, TensorRT, PyTorch) runs in turn for about ``seconds`` each, so slow
drifts of the host (up to 1.7x on our shared CPUs) hit all of them alike: compare ratios within one
run. Families run one after another (PyTorch's and ONNX Runtime's thread pools disturb each other).
``preprocess=True`` times camera-sized frames (``source_size``) through ``Runner.prepare`` as well.
A configuration that fails (loading, or its warm-up) gives rows with ``error`` set; :func:`nothing_ran`
says when no row has figures. :func:`report` has None for the missing figures (strict JSON: never NaN).
Torch-free, Python 3.8 (runs on the line computer).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pydantic import BaseModel

from lineguard import LineguardError

from ..console import finite
from .formats import BACKENDS, FORMATS
from .runners import Runner, RunnerError, load_runner

__all__ = ["BenchReport", "BenchRow", "bench", "machine", "nothing_ran", "recommend", "report"]

_FAMILY = {f.backend: f.family for f in FORMATS}  # backend -> runtime family, from the format table


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
    """One row per (model, backend, batch). A runner that cannot load or fails its warm-up gives rows with
    ``error`` set (the others still run). ``options[backend]`` go to that backend's runner. An unknown
    backend or a batch size < 1 is a :class:`RunnerError` before anything runs."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise RunnerError(f"unknown backend '{unknown[0]}' (backends: {', '.join(BACKENDS)})")
    bad = [n for n in batches if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad or not batches:
        raise RunnerError(f"batch sizes must be positive integers, got {list(batches)}")
    rows: List[BenchRow] = []
    for family in dict.fromkeys(_FAMILY[b] for b in backends):
        loaded: List[Tuple[str, str, Runner]] = []
        for m in models:
            for b in (b for b in backends if _FAMILY[b] == family):
                try:
                    loaded.append((str(m), b, load_runner(m, backend=b, **(options or {}).get(b, {}))))
                except LineguardError as e:
                    rows += [BenchRow(str(m), b, n, preprocess, error=str(e)) for n in batches]
        try:
            rows += _measure(loaded, batches, preprocess, source_size, rounds, seconds, warmup)
        finally:
            for _, _, r in loaded:
                r.close()
    return rows


def _measure(loaded: Sequence[Tuple[str, str, Runner]], batches: Sequence[int], preprocess: bool,
             source_size: Tuple[int, int], rounds: int, seconds: float, warmup: int) -> List[BenchRow]:
    """Warm up every runner (error rows for one that fails), then the interleaved rounds."""
    rows: List[BenchRow] = []
    configs: List[Tuple[str, str, Runner, int, np.ndarray]] = []
    for m, b, r in loaded:
        try:
            mine = [(m, b, r, n, _frames(r, n, preprocess, source_size)) for n in batches]
            for *_, x in mine:
                for _ in range(max(warmup, 1)):
                    _call(r, x, preprocess)
        except LineguardError as e:
            rows += [BenchRow(m, b, n, preprocess, error=str(e)) for n in batches]
            continue
        configs += mine
    times: Dict[int, List[float]] = {i: [] for i in range(len(configs))}
    for _ in range(rounds):
        for i, (_, _, r, _, x) in enumerate(configs):
            end = time.perf_counter() + seconds
            while True:
                times[i].append(_call(r, x, preprocess))
                if time.perf_counter() >= end and len(times[i]) >= 3:
                    break
    for i, (m, b, r, n, _) in enumerate(configs):
        t = np.asarray(times[i]) * 1000
        if not len(t):  # rounds=0
            rows.append(BenchRow(m, b, n, preprocess, error="not measured (rounds=0)", runner=r.describe()))
            continue
        rows.append(BenchRow(m, b, n, preprocess, p50_ms=float(np.percentile(t, 50)),
                             p90_ms=float(np.percentile(t, 90)), p99_ms=float(np.percentile(t, 99)),
                             images_per_s=float(n * 1000 / t.mean()), calls=len(t), runner=r.describe()))
    return rows


def recommend(rows: Sequence[BenchRow]) -> Dict[str, Dict[str, str]]:
    """Per model and runtime family, the backend with the lowest batch-1 median (e.g. ort vs ort-int8):
    INT8 is not assumed to win."""
    best: Dict[str, Dict[str, Tuple[float, str]]] = {}
    smallest = min((r.batch for r in rows), default=1)
    for r in rows:
        if r.error is None and r.batch == smallest:
            fam = best.setdefault(r.model, {})
            cur = fam.get(_FAMILY[r.backend])
            if cur is None or r.p50_ms < cur[0]:
                fam[_FAMILY[r.backend]] = (r.p50_ms, r.backend)
    return {m: {f: b for f, (_, b) in fams.items()} for m, fams in best.items()}


class BenchReport(BaseModel):
    """``lineguard bench``'s result: the machine, one row per configuration (None for the figures a failed
    row lacks), and per model and runtime family the faster backend."""

    machine: Dict[str, Any]
    rows: List[Dict[str, Any]]
    recommended: Dict[str, Dict[str, str]]


def report(rows: Sequence[BenchRow]) -> BenchReport:
    """The report of ``rows`` (strict JSON: NaN figures are None)."""
    return BenchReport(machine=machine(), rows=finite([asdict(r) for r in rows]), recommended=recommend(rows))


def nothing_ran(rows: Sequence[BenchRow]) -> Optional[str]:
    """None if some row has figures, else one line saying so (with the first error)."""
    if any(r.error is None for r in rows):
        return None
    first = next((r.error for r in rows if r.error), "no configurations")
    return f"nothing was measured: all {len(rows)} configuration(s) failed; first: {first}"
