"""``lineguard synth fit``: train the defect GAN into a GAN_DIR (mounted by the top-level CLI).

Settings are layered: the preset (``--preset cpu|gpu``, else :class:`GanConfig`'s defaults), then the
keys set in ``--config``, then the flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import typer
from pydantic import BaseModel

from lineguard import options
from lineguard.console import console, emit


class FitReport(BaseModel):
    """``lineguard synth fit``'s result: the GAN_DIR written and how the run went."""

    out: str
    classes: List[str]
    crops: Dict[str, int]  # real defect crops per class
    skipped: int  # images that could not be used
    steps: int
    kimg: float
    seconds: float
    sec_per_kimg: float
    augment_p: float  # the adaptive augmentation probability reached
    rt: float  # its overfitting heuristic
    device: str
    sha256: str  # of generator.safetensors
    shapes: Dict[str, Dict[str, Optional[float]]]  # per class: generated masks against the crops (synth.shapes)


def fit(
    data: Path = options.data(help="Data set folder (its train split, else all records)."),
    out: Path = options.out(help="GAN_DIR to write (generator.safetensors + gan.yaml)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="GanConfig YAML, over the preset."),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="cpu | cpu-projected | gpu: the settings to start from."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    kimg: Optional[float] = typer.Option(None, "--kimg", help="Thousands of real images to show D (config: kimg)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Patch side in px (config: resolution)."),
    target: Optional[str] = typer.Option(
        None, "--target", help="defects | surface: surface is stage 1, OK patches (config: target)."),
    surface: Optional[Path] = typer.Option(
        None, "--surface", help="Stage 2: the surface GAN_DIR to freeze under defect blocks (config: surface)."),
    device: Optional[str] = options.device(None, help="auto | cpu | cuda[:N] (config: device, default auto)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Train the class-conditional defect GAN (image + mask) on the real defects of a data set; or in two
    stages: the surface on OK patches (--target surface), then defect blocks on it (--surface DIR)."""
    from .config import PRESETS, preset_config
    from .train import fit as run

    if preset is not None and preset not in PRESETS:
        raise typer.BadParameter(f"'{preset}' is not one of {', '.join(PRESETS)}", param_hint="--preset")
    cfg = preset_config(preset, config, kimg=kimg, resolution=resolution, device=device, target=target,
                        surface=None if surface is None else str(surface))
    rep = FitReport(**run(data, out, cfg, resume=resume, progress=not quiet))
    emit(rep, as_json, lambda r: console.print(
        f"{r.out}: {r.kimg} kimg in {r.seconds / 60:.1f} min on {r.device} ({r.sec_per_kimg:.1f} s/kimg); crops per "
        f"class {r.crops}, {r.skipped} images skipped; augment p {r.augment_p:.2f}; weights {r.sha256[:16]}; mask "
        "pair IoU generated/real (diversity: lower is more varied) "
        + ", ".join(f"{c} {_iou(v['iou_fake'])}/{_iou(v['iou_real'])}" for c, v in r.shapes.items())), quiet)


def _iou(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.2f}"
