"""``lineguard data ...``: import, validate, split, stats, preview (``simulate`` is ``lineguard.sim.cli``).

The data verbs take the data set folder as their argument (``lineguard data split DIR``); options come from
the one vocabulary in ``lineguard.options``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..console import console, emit, shown
from ..options import JSON, QUIET
from .imaging import MAX_PIXELS

MAX_PIXELS_OPTION = typer.Option(MAX_PIXELS, "--max-pixels", min=1,
                                 help="Images with more pixels are refused without decoding.")


def _class_table(title: str, rows: dict, ok_class: Optional[str]) -> Table:
    t = Table(title=title)
    t.add_column("class")
    t.add_column("images", justify="right")
    for name, n in rows.items():
        t.add_row(f"{shown(name)} (OK)" if name == ok_class else shown(name), str(n))
    return t


def _problems(title: str, rows: list, limit: int = 20) -> None:
    if rows:
        console.print(f"[bold]{title}[/] ({len(rows)}):")
        for r in rows[:limit]:
            console.print(f"  {shown(r.path)}: {shown(r.reason)}", highlight=False)
        if len(rows) > limit:
            console.print(f"  ... {len(rows) - limit} more")


def import_(
    src: Path = typer.Argument(..., help="Folder in one of the known layouts."),
    out: Path = typer.Option(..., "--out", "-o", help="Data set folder to write."),
    fmt: str = typer.Option("auto", "--format", "-f",
                            help="auto|magnetic-tile|voc|yolo|imagefolder|mvtec"),
    ok_class: Optional[str] = typer.Option(
        None, "--ok-class", help="Name of the defect-free class; none: a defect-type set (every image defective)."),
    copy: bool = typer.Option(False, "--copy", help="Copy images into the data set instead of referencing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a data set already in --out."),
    allow_outside: bool = typer.Option(False, "--allow-outside",
                                       help="Read files that annotations or symlinks place outside SRC."),
    max_pixels: int = MAX_PIXELS_OPTION,
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Import a data set; unusable files are listed with reasons in DIR/rejects.jsonl."""
    from .importers import import_dataset

    rep = import_dataset(src, out, fmt=fmt, ok_class=ok_class, copy=copy, overwrite=overwrite,
                         progress=not quiet, allow_outside=allow_outside, max_pixels=max_pixels)

    def human(r) -> None:
        console.print(_class_table(f"{shown(r.out)} ({r.format}): {r.images} images, {r.masks} with masks",
                                   r.classes, r.ok_class))
        _problems("rejected", r.rejects)
        _problems("warnings", r.warnings)
        console.print(f"{r.images} imported, {r.rejected} rejected, {len(r.warnings)} warnings")

    emit(rep, as_json, human, quiet)


def validate(root: Path = typer.Argument(..., help="Data set folder."), max_pixels: int = MAX_PIXELS_OPTION,
             as_json: bool = JSON, quiet: bool = QUIET) -> None:
    """Decode every image and mask and check them against the manifest (exit 1 if invalid)."""
    from .validate import validate_dataset

    rep = validate_dataset(root, progress=not quiet, max_pixels=max_pixels)

    def human(r) -> None:
        _problems("errors", r.errors)
        _problems("warnings", r.warnings)
        verdict = "[green]valid[/]" if r.valid else "[red]INVALID[/]"
        console.print(f"{shown(r.root)}: {r.images} images, {r.masks} masks: {verdict}")

    emit(rep, as_json, human, quiet)
    if not rep.valid:
        raise typer.Exit(1)


def split(
    root: Path = typer.Argument(..., help="Data set folder."),
    val: float = typer.Option(0.1, "--val", help="Share of images for validation."),
    test: float = typer.Option(0.2, "--test", help="Share of images for test."),
    seed: int = typer.Option(0, "--seed"),
    folds: Optional[int] = typer.Option(None, "--folds", help="Also deal non-test images into K folds."),
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Stratified, seeded split; identical images always share a split."""
    from .format import Dataset
    from .split import split_dataset

    rep = split_dataset(Dataset.load(root), val=val, test=test, seed=seed, folds=folds)

    def human(r) -> None:
        t = Table(title=f"split of {shown(root)} (seed {r.seed})")
        t.add_column("class")
        for s in r.counts:
            t.add_column(s, justify="right")
        for cls in next(iter(r.counts.values())):
            t.add_row(shown(cls), *(str(r.counts[s][cls]) for s in r.counts))
        console.print(t)
        for w in r.warnings:
            console.print(f"[yellow]warning:[/] {shown(w)}", highlight=False)

    emit(rep, as_json, human, quiet)


def stats(root: Path = typer.Argument(..., help="Data set folder."),
          sample: int = typer.Option(200, "--sample", help="Images sampled for pixel statistics."),
          as_json: bool = JSON, quiet: bool = QUIET) -> None:
    """Counts by class, split and source; image sizes; pixel mean and std."""
    from .stats import dataset_stats

    rep = dataset_stats(root, sample=sample)

    def human(r) -> None:
        t = Table(title=f"{shown(r.root)}: {r.images} images ({r.rejects} rejected at import)")
        t.add_column("class")
        t.add_column("images", justify="right")
        t.add_column("masks", justify="right")
        for s in r.splits:
            t.add_column(s, justify="right")
        for cls, n in r.classes.items():
            name = f"{shown(cls)} (OK)" if cls == r.ok_class else shown(cls)
            t.add_row(name, str(n), str(r.masks[cls]), *(str(r.splits[s][cls]) for s in r.splits))
        console.print(t)
        console.print(f"sources {r.sources}; origins {shown(r.origins)}")
        console.print(f"width {r.width}, height {r.height}; pixel mean {r.pixel_mean:.3f} "
                      f"std {r.pixel_std:.3f} (over {r.sampled} images)")
        a = r.input
        thin = "" if a.defect_px is None else (f" (thinnest defects {a.defect_px['p5']:.1f} px, "
                                               f"{a.thinnest_at_size:.1f} px at that size)")
        console.print(f"input size: --img-size {a.size[0]}x{a.size[1]} --fit {a.fit}{thin}")
        if a.warning:
            console.print(f"[yellow]warning:[/] {shown(a.warning)}", highlight=False)

    emit(rep, as_json, human, quiet)


def preview(
    root: Path = typer.Argument(..., help="Data set folder."),
    out: Path = typer.Option(Path("grid.png"), "--out", "-o", help="Overview PNG; per-class sheets beside it."),
    per_class: int = typer.Option(8, "--per-class", help="Samples per class in the overview."),
    tile: int = typer.Option(128, "--tile", help="Tile side in pixels."),
    split_name: Optional[str] = typer.Option(None, "--split", help="Only this split."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Contact sheets per class with the defect masks drawn in red."""
    from .preview import PreviewReport, preview_dataset

    rep = PreviewReport(root=str(root), sheets=preview_dataset(root, out, per_class=per_class, tile=tile,
                                                               split=split_name, seed=seed))

    def human(r: PreviewReport) -> None:
        for name, path in r.sheets.items():
            console.print(f"{shown(name)}: {shown(path)}", highlight=False)

    emit(rep, as_json, human, quiet)
