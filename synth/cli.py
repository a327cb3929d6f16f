"""Synthesis verbs: ``generate``, mounted under ``lineguard synth`` (``lineguard data simulate`` is
``lineguard.sim.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import typer
from pydantic import BaseModel

from .. import options
from ..console import console, emit


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
    data: Path = options.data(help="Real data set: its OK train images are the backgrounds, its classes the labels."),
    n: int = typer.Option(100_000, "--n", min=1, help="Images in the whole set (all shards)."),
    out: Path = options.out(help="Folder to write; a partial run there is resumed."),
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
    device: str = options.device(help="cpu | cuda[:N]: where the GAN samples (--method stylegan)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
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

        source = SourceFactory(GanSource.load, (str(gan),), {"device": device})
    elif method in ("copy-paste", "perlin"):
        if gan is not None:
            raise typer.BadParameter(f"--gan is only for --method stylegan, not {method}")
        if device != "cpu":
            raise typer.BadParameter(f"--device is only for --method stylegan ({method} patches are drawn on the CPU)")
        from .baselines import CopyPasteSource, PerlinSource

        ds = Dataset.load(data)
        source = (CopyPasteSource.from_dataset(ds, size=patch_size) if method == "copy-paste"
                  else PerlinSource.from_dataset(ds, size=patch_size))
    else:
        raise LineguardError(f"--method {method}: expected stylegan, copy-paste or perlin")
    nc = NearCopyConfig(enabled=method != "copy-paste" if near_copy is None else near_copy)
    res = run(source, data, n=n, out=out, seed=seed, workers=workers, shard=ident, compose=cfg, near_copy=nc,
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
        f"{r.seconds:.1f} s ({r.images_per_s:.0f} images/s)"), quiet)
