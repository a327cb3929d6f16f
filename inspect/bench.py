"""``lineguard inspect bench``: the whole loop (virtual camera -> queue -> inference -> results DB + archive)
against the bare runner, in one process and one run, so the ratio is this machine's.

    rep = run_bench("runs/demo/model", parts=2000)        # max rate: the camera waits for the line
    rep = run_bench("runs/demo/model", parts=3000, rate=30)
    rep.fps, rep.p99_ms, rep.runner_fps, rep.ratio

Torch-free, Python 3.8.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from pydantic import BaseModel

from lineguard.edge.runners import Runner
from lineguard.sim import SimulatorConfig

from .archive import ArchiveConfig
from .config import DeadlineConfig, LineConfig, MetricsConfig, ModelConfig, PolicyConfig, SimSourceConfig
from .daemon import Line
from .models import load_live
from .store import ResultStore

__all__ = ["InspectBenchReport", "rss_mb", "run_bench", "runner_best"]

POOL = 256  # distinct simulated parts cycled through (the simulator is not what is measured)


class InspectBenchReport(BaseModel):
    model: str
    backend: str
    parts: int
    offered_rate: float  # parts/s; 0: as fast as the line takes them
    decided: int  # by the model (the rest: failsafe)
    fps: float  # parts decided by the model per second, first capture to last decision
    p50_ms: float  # capture -> decision
    p99_ms: float
    max_ms: float
    failsafe: Dict[str, int]  # reason -> parts rejected without a model decision
    deadline_misses: int
    deadline_ms: float
    dropped: int
    rss_mb: Dict[str, float]  # start, after 10% of the parts, end
    runner_fps: float  # the bare runner's best images/s over its batch range (same process, same run)
    runner_batch: int
    ratio: float  # fps / runner_fps
    db: str


def rss_mb() -> float:
    """This process's resident memory in MB (Linux: /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def runner_best(runner: Runner, batches: List[int], seconds: float = 2.0) -> Tuple[float, int]:
    """(best images/s, its batch) of ``runner.predict`` on prepared frames, each batch timed for ``seconds``."""
    best = (0.0, batches[0])
    for b in batches:
        x = np.random.default_rng(0).integers(0, 256, (b, *runner.input_shape), dtype=np.uint8)
        runner.predict(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            runner.predict(x)
            n += b
        best = max(best, (n / (time.perf_counter() - t0), b))
    return best


def run_bench(model: Path, parts: int, rate: float = 0.0, backend: str = "auto", batch: int = 8,
              deadline_ms: float = 200.0, threads: Optional[int] = None, out: Optional[Path] = None,
              progress: bool = False) -> InspectBenchReport:
    """Run ``parts`` simulated parts through the loop and measure it against the bare runner."""
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="lineguard-inspect-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    rss = {"start": rss_mb()}
    model_cfg = ModelConfig(path=model, backend=backend, threads=threads, watch_s=0)
    with load_live(model_cfg, PolicyConfig()).runner as runner:  # the model the loop will load
        lo, hi = runner.batch_range
        sizes = sorted({lo, min(hi, batch)} | {b for b in (2, 4, 8) if lo <= b <= min(hi, batch)})
        runner_fps, runner_batch = runner_best(runner, sizes)
        h = runner.input_shape[0]
        channels = runner.input_shape[2]
    cfg = LineConfig(
        source=SimSourceConfig(rate=rate, parts=parts, pool=min(POOL, parts),
                               sim=SimulatorConfig(size=max(64, h), channels=channels)),
        model=model_cfg, batch=batch,
        deadline=DeadlineConfig(ms=deadline_ms), outputs=[], db=out / "results.db",
        archive=ArchiveConfig(path=out / "archive", ok_sample_rate=0.01), metrics=MetricsConfig(port=0))
    line = Line(cfg)
    done = threading.Event()
    watch = threading.Thread(target=_watch, args=(line, parts, rss, done, progress), daemon=True)
    watch.start()
    counts = line.run(install_signals=False)
    done.set()
    watch.join()
    rss["end"] = rss_mb()
    with ResultStore(cfg.db) as store:
        rows = [(r.t_capture, r.t_decided) for r in store.rows(run_id=line.run_id)
                if r.t_decided is not None and r.reason is None]  # decided by the model
        totals = store.totals(run_id=line.run_id)
    lat = np.array([d - c for c, d in rows]) * 1000 if rows else np.zeros(1)
    span = max(d for _, d in rows) - min(c for c, _ in rows) if rows else 0.0
    fps = len(rows) / span if span > 0 else 0.0
    return InspectBenchReport(
        model=str(model), backend=line.live.runner.backend if line.live else backend, parts=parts,
        offered_rate=rate, decided=len(rows), fps=fps,
        p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)), max_ms=float(lat.max()),
        failsafe=dict(totals.by_reason), deadline_misses=int(totals.by_reason.get("deadline", 0)),
        deadline_ms=deadline_ms, dropped=counts["dropped"], rss_mb={k: round(v, 1) for k, v in rss.items()},
        runner_fps=runner_fps, runner_batch=runner_batch, ratio=fps / runner_fps if runner_fps else 0.0,
        db=str(cfg.db))


def _watch(line: Line, parts: int, rss: Dict[str, float], done: threading.Event, progress: bool) -> None:
    """RSS after 10% of the parts; a line per 10% with ``progress``."""
    tenth = max(1, parts // 10)
    mark = tenth
    while not done.wait(0.25):
        n = line.counts["decided"]
        if "after_10pct" not in rss and n >= tenth:
            rss["after_10pct"] = rss_mb()
        if progress and n >= mark:
            print(f"{n}/{parts} parts decided", flush=True)
            mark = (n // tenth + 1) * tenth
