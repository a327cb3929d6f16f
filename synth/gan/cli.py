"""``lineguard synth fit``: train the defect GAN into a GAN_DIR (mounted by the top-level CLI).

Settings are layered: the preset (``--preset cpu|gpu``, else :class:`GanConfig`'s defaults), then the
keys set in ``--config``, then the flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from lineguard.console import console

PRESETS = ("cpu", "gpu")


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over``'s keys set, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def fit(
    data: Path = typer.Option(..., "--data", "-d", help="Data set folder (its train split, else all records)."),
    out: Path = typer.Option(..., "--out", "-o", help="GAN_DIR to write (generator.safetensors + gan.yaml)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="GanConfig YAML, over the preset."),
    preset: Optional[str] = typer.Option(None, "--preset", help="cpu | gpu: the settings to start from."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    kimg: Optional[float] = typer.Option(None, "--kimg", help="Thousands of real images to show D (config: kimg)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Patch side in px (config: resolution)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train the class-conditional defect GAN (image + mask) on the real defects of a data set."""
    from lineguard.config import load_config

    from .config import GanConfig, cpu_preset, gpu_preset
    from .train import fit as run

    if preset is not None and preset not in PRESETS:
        raise typer.BadParameter(f"'{preset}' is not one of {', '.join(PRESETS)}", param_hint="--preset")
    base = {"cpu": cpu_preset, "gpu": gpu_preset}[preset]().model_dump(mode="json") if preset else {}
    if config is not None:
        base = _merge(base, load_config(GanConfig, config).model_dump(mode="json", exclude_unset=True))
    cfg = load_config(GanConfig, None, {**base, "kimg": kimg, "resolution": resolution})
    summary = run(data, out, cfg, resume=resume, progress=not quiet)
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    console.print(f"{out}: {summary['kimg']} kimg in {summary['seconds'] / 60:.1f} min on {summary['device']} "
                  f"({summary['sec_per_kimg']:.1f} s/kimg); crops per class {summary['crops']}, "
                  f"{summary['skipped']} images skipped; augment p {summary['augment_p']:.2f}; "
                  f"weights {summary['sha256'][:16]}")
