"""``lineguard train``, ``lineguard cv``, ``lineguard synth score`` and ``lineguard synth filter``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import typer
from pydantic import BaseModel

from .. import options
from ..console import console, emit, shown

if TYPE_CHECKING:
    from .synth_filter import FilterReport
    from .synth_score import ScoreReport


class TrainReport(BaseModel):
    """``lineguard train``'s result (rank 0): the model folder written and its figures (``metrics.json``
    without the per-epoch history)."""

    model: str  # the model folder
    arch: str
    best_epoch: int
    epochs_run: int
    stop_reason: Optional[str]  # why training ended (all epochs, time budget, early stop, max_steps)
    train_minutes: float
    train_images_per_s: float
    gmacs: float
    params_m: float
    precision: str
    latency: Dict[str, float]  # PyTorch batch-1 on this machine
    val: Dict[str, Any]
    test: Optional[Dict[str, Any]] = None
    data: Dict[str, Any]  # provenance: splits, classes, sources, synthetic set


def train(
    data: Path = options.data(help="Data set folder (split with `lineguard data split`)."),
    out: Path = options.out(help="Model folder to write."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TrainConfig YAML."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture (config: arch)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="auto | none | imagenet-lite0 | PATH."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per step and process (config: batch_size)."),
    img_size: Optional[str] = typer.Option(None, "--img-size", help="224, or HxW (96x224) for parts that are not "
                                                                    "square (config: img_size)."),
    fit: Optional[str] = typer.Option(None, "--fit", help="stretch | pad: keep the aspect ratio (config: fit)."),
    multi_label: Optional[bool] = typer.Option(
        None, "--multi-label/--single-label", help="Per-class sigmoid heads on every defect a part holds "
                                                   "(config: multi_label; default single-label)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | bf16 | fp32"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget; LR fitted to it."),
    target_escape: Optional[float] = typer.Option(None, "--target-escape", help="Pick the threshold on val."),
    synthetic: Optional[Path] = typer.Option(None, "--synthetic", help="Synthetic data set to train beside --data."),
    synthetic_extra: Optional[float] = typer.Option(
        None, "--synthetic-extra", help="Synthetic draws on top of each real draw of a class --synthetic holds "
                                        "(0.5; config: synthetic_extra, synthetic_real_epochs, synthetic_weight)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    device: Optional[str] = options.device(None, help="cpu | cuda[:N] (config: device, default cpu; under "
                                                        "torchrun each process takes cuda:LOCAL_RANK)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Train a model; under `torchrun --nproc-per-node N -m lineguard train ...` with DDP."""
    from ..config import load_config
    from ..console import log_to_console
    from .config import TrainConfig
    from .engine import train as run

    cfg = load_config(TrainConfig, config, {
        "arch": arch, "weights": weights, "epochs": epochs, "batch_size": batch, "img_size": img_size,
        "fit": fit, "multi_label": multi_label, "precision": precision, "seed": seed, "max_minutes": max_minutes,
        "target_escape": target_escape,
        "synthetic": str(synthetic) if synthetic else None, "synthetic_extra": synthetic_extra, "device": device})
    log_to_console(quiet)  # the epoch lines of the lineguard.train logger
    summary = run(cfg, data, out, resume=resume, progress=not quiet)
    if not summary:  # ranks other than 0
        return
    rep = TrainReport(model=str(out), arch=summary.pop("model"), **summary)
    emit(rep, as_json, _show_train, quiet)


def _show_train(r: TrainReport) -> None:
    figures = r.test or r.val
    console.print(f"{r.model}: {r.arch}, best epoch {r.best_epoch}/{r.epochs_run} ({r.stop_reason}), "
                  f"{r.train_minutes:.1f} min; accuracy {figures['accuracy']:.4f}, macro-F1 {figures['macro_f1']:.4f}, "
                  f"AUROC {figures['ok_ng_auroc']}")


def cv(
    data: Path = options.data(help="Data set dealt into folds (`lineguard data split --folds K`)."),
    out: Path = options.out(help="Folder for the folds' data sets and models, cv.json and cv.md."),
    folds: int = typer.Option(5, "--folds", min=2, help="Folds (as dealt by data split)."),
    final: bool = typer.Option(False, "--final", help="Also train on every fold and evaluate on the test split."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TrainConfig YAML (as for train)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture (config: arch)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="auto | none | imagenet-lite0 | PATH."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per step (config: batch_size)."),
    img_size: Optional[str] = typer.Option(None, "--img-size", help="224, or HxW (config: img_size)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget per fold."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = options.device(None, help="cpu | cuda[:N] (config: device)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """k-fold cross-validation: a model per fold, evaluated on its held-out fold; mean +- std of every figure."""
    from ..config import load_config
    from ..console import log_to_console
    from .config import TrainConfig
    from .cv import cross_validate

    cfg = load_config(TrainConfig, config, {
        "arch": arch, "weights": weights, "epochs": epochs, "batch_size": batch, "img_size": img_size,
        "max_minutes": max_minutes, "seed": seed, "device": device})
    log_to_console(quiet)
    rep = cross_validate(data, out, cfg, folds=folds, final=final, progress=not quiet)
    emit(rep, as_json, lambda r: console.print(
        f"{r.folds}-fold {r.arch}: " + ", ".join(
            f"{k} {r.mean[k]:.4f} +- {r.std[k]:.4f}" for k in ("accuracy", "macro_f1", "ok_ng_auroc")
            if r.mean[k] is not None) + f"; {r.minutes:.1f} min of training; table in {shown(r.out)}/cv.md"), quiet)


def synth_score(
    data: Path = options.data(help="Real data set (split with `lineguard data split`)."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic data set (`lineguard synth generate`)."),
    model: Path = options.model(help="Model folder trained on the real set."),
    split: str = typer.Option("train", "--split", help="Real split to compare with."),
    max_images: int = typer.Option(2000, "--max-images", min=4, help="Cap per side (seeded sample)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Frechet distance, KID, precision/recall, real-vs-synthetic classifier AUC and near-copy rate of a
    synthetic set, in the features of a model trained on the real set."""
    from .synth_score import ScoreReport, score

    rep = ScoreReport.model_validate(score(data, synthetic, model, split=split, max_images=max_images,
                                           progress=not quiet))
    emit(rep, as_json, _show, quiet)


def synth_filter(
    data: Path = options.data(help="Real data set the model was trained on."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic data set to filter."),
    model: Path = options.model(help="Model folder trained on the real training split."),
    out: Path = options.out(help="The filtered data set (new folder)."),
    band: Optional[Tuple[float, float]] = typer.Option(
        None, "--band", help="Keep p(intended class) in [LO, HI] (default 0.5 0.99)."),
    probe_max: Optional[float] = typer.Option(
        None, "--probe-max", help="Drop when the real-vs-synthetic probe's P(synthetic) reaches this (1: off)."),
    split: Optional[str] = typer.Option(None, "--split", help="Real split the model was trained on (train)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Keep the synthetic images that a model trained on the real split assigns to their class within a
    confidence band and that a real-vs-synthetic probe does not tell apart; the reasons in filter-report.json."""
    from ..config import load_config
    from .synth_filter import FilterConfig, filter_synthetic

    cfg = load_config(FilterConfig, None, {"band": band, "probe_max": probe_max, "split": split})
    emit(filter_synthetic(data, synthetic, model, out, cfg, progress=not quiet), as_json,
         lambda r: _show_filter(r, out), quiet)


def _show_filter(rep: FilterReport, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"{rep.synthetic} filtered by {rep.model}: {rep.kept} of {rep.images} kept into {shown(out)}")
    for col in ("class", "images", "kept", "off class", "too easy", "told apart", "median p(class)"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, r in rep.per_class.items():
        t.add_row(c, str(r.images), str(r.kept), *(str(r.reasons[k]) for k in ("off_class", "too_easy", "told_apart")),
                  f"{r.p_class_median:.3f}")
    console.print(t)
    for c, why in rep.not_probed.items():
        console.print(f"{c}: not probed ({why})")


def _show(rep: ScoreReport) -> None:
    from rich.table import Table

    t = Table(title=f"{rep.synthetic} vs {rep.real} ({rep.split}), features of {rep.model} (d={rep.feature_dim})")
    for col in ("", "real", "synth", "FD", "KID", "precision", "recall", "C2ST AUC", "near copies"):
        t.add_column(col, justify="left" if not col else "right")
    for name, m in [("overall", rep.overall), *rep.per_class.items()]:
        t.add_row(name, str(m.real), str(m.synthetic), f"{m.fd:.3g}", f"{m.kid_mean:.3g} ± {m.kid_std:.2g}",
                  f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.c2st_auc:.3f}", f"{m.near_copy_rate:.1%}")
    console.print(t)
    for name, why in rep.skipped.items():
        console.print(f"{name}: skipped ({why})")
