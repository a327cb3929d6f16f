"""``lineguard data simulate``: the embedded default data set (mounted by the top-level CLI)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import typer
from pydantic import BaseModel

from .. import options
from ..console import console, emit

__all__ = ["SimulateReport", "simulate"]


class SimulateReport(BaseModel):
    out: str
    images: int
    classes: Dict[str, int]
    seed: int
    size: int
    channels: int
    workers: int
    seconds: float
    images_per_s: float


def simulate(
    n: int = typer.Option(2000, "--n", min=1, help="Parts to render."),
    out: Path = options.out(help="Data set folder to write."),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SimulatorConfig YAML."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (config: size)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 = gray, 3 = RGB (config: channels)."),
    ok_fraction: Optional[float] = typer.Option(None, "--ok-fraction", help="Share of OK parts."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Rendering processes."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Render simulated line parts (OK and the configured defects) with masks: the embedded default data set."""
    from ..config import load_config
    from .config import SimulatorConfig
    from .dataset import simulate_dataset

    cfg = load_config(SimulatorConfig, config, {"size": size, "channels": channels, "ok_fraction": ok_fraction})
    t0 = time.perf_counter()
    ds = simulate_dataset(out, n=n, seed=seed, cfg=cfg, workers=workers, progress=not quiet)
    dt = time.perf_counter() - t0
    rep = SimulateReport(out=str(out), images=len(ds), classes=ds.counts(), seed=seed, size=cfg.size,
                         channels=cfg.channels, workers=workers, seconds=round(dt, 3),
                         images_per_s=round(len(ds) / dt, 1))
    emit(rep, as_json, lambda r: console.print(
        f"{r.images} parts {r.classes} -> {r.out} in {r.seconds:.1f} s ({r.images_per_s:.0f} images/s)"), quiet)
