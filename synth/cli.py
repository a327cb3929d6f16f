"""Synthesis verbs; ``simulate`` is mounted under ``lineguard data`` (it makes the default data set),
``generate`` under ``lineguard synth``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import typer
from pydantic import BaseModel

from ..console import console, emit


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
    out: Path = typer.Option(..., "--out", "-o", help="Data set folder to write."),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="SimulatorConfig YAML."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (config: size)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 = gray, 3 = RGB (config: channels)."),
    ok_fraction: Optional[float] = typer.Option(None, "--ok-fraction", help="Share of OK parts."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Rendering processes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render simulated line parts (OK, scratch, stain, dent) with masks: the embedded default data set."""
    from ..config import load_config
    from .simulator import SimulatorConfig, simulate_dataset

    cfg = load_config(SimulatorConfig, config, {"size": size, "channels": channels, "ok_fraction": ok_fraction})
    t0 = time.perf_counter()
    ds = simulate_dataset(out, n=n, seed=seed, cfg=cfg, workers=workers, progress=not quiet)
    dt = time.perf_counter() - t0
    rep = SimulateReport(out=str(out), images=len(ds), classes=ds.counts(), seed=seed, size=cfg.size,
                         channels=cfg.channels, workers=workers, seconds=round(dt, 3),
                         images_per_s=round(len(ds) / dt, 1))
    emit(rep, as_json, lambda r: console.print(
        f"{r.images} parts {r.classes} -> {r.out} in {r.seconds:.1f} s ({r.images_per_s:.0f} images/s)"))


class GenerateReport(BaseModel):
    out: str
    method: str
    version: str
    merged: bool  # manifest.jsonl written (every shard done)
    images: int  # in the merged set, or this shard's when not merged
    classes: Dict[str, int]
    rendered: int
    reused: int
    near_copy_rejected: int
    excluded_backgrounds: int
    shard: str
    workers: int
    seconds: float
    images_per_s: float  # rendered by this run


def _shard(text: str) -> Tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"'{text}': expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"'{text}': needs 0 <= i < N")
    return i, n


def generate(
    gan: Optional[Path] = typer.Option(None, "--gan", help="Generator directory (--method stylegan)."),
    base: Path = typer.Option(..., "--base", help="Real data set: OK train images = backgrounds, its classes."),
    n: int = typer.Option(100_000, "--n", min=1, help="Images in the whole set (all shards)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write; a partial run there is resumed."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Rendering processes."),
    shard: str = typer.Option("0/1", "--shard", help="i/N: render chunks i, i+N, ... (N machines, one set)."),
    method: str = typer.Option("stylegan", "--method", help="stylegan | copy-paste | perlin."),
    seed: int = typer.Option(0, "--seed", min=0),
    size: int = typer.Option(256, "--size", help="Output side in px (backgrounds squash-resized)."),
    patch_size: int = typer.Option(64, "--patch-size", help="copy-paste/perlin patch side in px."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="ComposeConfig YAML."),
    blend: Optional[str] = typer.Option(None, "--blend", help="alpha | poisson (config: blend)."),
    near_copy: Optional[bool] = typer.Option(None, "--near-copy/--no-near-copy",
                                             help="Reject patches close to real crops (default: on, off for "
                                                  "copy-paste)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Composite synthetic defect images (GAN, copy-paste or Perlin patches on OK images) into a data set."""
    from .. import LineguardError
    from ..config import load_config
    from ..data.format import Dataset
    from .compose import ComposeConfig
    from .generate import NearCopyConfig, SourceFactory
    from .generate import generate as run

    ident = _shard(shard)
    cfg = load_config(ComposeConfig, config, {"blend": blend})
    if method == "stylegan":
        if gan is None:
            raise typer.BadParameter("--gan GAN_DIR is needed with --method stylegan")
        from .gan.source import GanSource

        source = SourceFactory(GanSource.load, (str(gan),), {"device": "cpu"})
    elif method in ("copy-paste", "perlin"):
        if gan is not None:
            raise typer.BadParameter(f"--gan is only for --method stylegan, not {method}")
        from .baselines import CopyPasteSource, PerlinSource

        ds = Dataset.load(base)
        source = (CopyPasteSource.from_dataset(ds, size=patch_size) if method == "copy-paste"
                  else PerlinSource.from_dataset(ds, size=patch_size))
    else:
        raise LineguardError(f"--method {method}: expected stylegan, copy-paste or perlin")
    nc = NearCopyConfig(enabled=method != "copy-paste" if near_copy is None else near_copy)
    res = run(source, base, n=n, out=out, seed=seed, workers=workers, shard=ident, compose=cfg, near_copy=nc,
              size=size, progress=not quiet)
    s = res.dataset
    rep = GenerateReport(out=str(out), method=method, version=res.settings.version, merged=res.merged, images=len(s),
                         classes=s.counts(), rendered=res.rendered, reused=res.reused,
                         near_copy_rejected=res.near_copy_rejected,
                         excluded_backgrounds=len(res.excluded_backgrounds), shard=shard, workers=workers,
                         seconds=res.seconds, images_per_s=round(res.rendered / max(res.seconds, 1e-9), 1))
    emit(rep, as_json, lambda r: console.print(
        f"{r.method}: {r.images} images {r.classes} -> {r.out}{'' if r.merged else ' (shard ' + r.shard + ')'}; "
        f"{r.rendered} rendered, {r.reused} resumed, {r.near_copy_rejected} near copies redrawn, "
        f"{r.seconds:.1f} s ({r.images_per_s:.0f} images/s)"))
