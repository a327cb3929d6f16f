"""``lineguard train`` and ``lineguard eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..console import console

if TYPE_CHECKING:
    from .synth_score import ScoreReport


def train(
    data: Path = typer.Option(..., "--data", "-d", help="Data set folder (split with `lineguard data split`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TrainConfig YAML."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Architecture (config: model)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="auto | none | imagenet-lite0 | PATH."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    img_size: Optional[int] = typer.Option(None, "--img-size"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | bf16 | fp32"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget; LR fitted to it."),
    target_escape: Optional[float] = typer.Option(None, "--target-escape", help="Pick the threshold on val."),
    synthetic: Optional[Path] = typer.Option(None, "--synthetic", help="Synthetic data set to train beside --data."),
    synthetic_ratio: Optional[float] = typer.Option(None, "--synthetic-ratio",
                                                    help="Share of each class's draws from --synthetic (0.3)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a model; under `torchrun --nproc-per-node N -m lineguard train ...` with DDP."""
    from ..config import load_config
    from .config import TrainConfig
    from .engine import train as run

    cfg = load_config(TrainConfig, config, {
        "model": model, "weights": weights, "epochs": epochs, "batch_size": batch_size, "img_size": img_size,
        "precision": precision, "seed": seed, "max_minutes": max_minutes, "target_escape": target_escape,
        "synthetic": str(synthetic) if synthetic else None, "synthetic_ratio": synthetic_ratio})
    summary = run(cfg, data, out, resume=resume, progress=not quiet)
    if not summary:  # ranks other than 0
        return
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    shown = summary.get("test", summary["val"])
    console.print(f"{out}: {summary['model']}, best epoch {summary['best_epoch']}/{summary['epochs_run']}, "
                  f"{summary['train_minutes']:.1f} min; accuracy {shown['accuracy']:.4f}, "
                  f"macro-F1 {shown['macro_f1']:.4f}, AUROC {shown['ok_ng_auroc']}")


def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory."),
    data: Path = typer.Option(..., "--data", "-d", help="Data set folder."),
    split: str = typer.Option("test", "--split"),
    target_escape: Optional[float] = typer.Option(None, "--target-escape",
                                                  help="Pick the threshold on val for this escape rate."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Accuracy, macro-F1, per-class P/R, OK/NG AUROC, escape and false-reject rates, heatmap IoU, latency."""
    from .evaluate import evaluate_model_dir

    m = evaluate_model_dir(model, data, split=split, target_escape=target_escape, progress=not quiet)
    if as_json:
        print(json.dumps(m), flush=True)
        return
    console.print(f"{split}: {m['images']} images, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, "
                  f"AUROC {m['ok_ng_auroc']}, threshold {m['threshold']:.4f}: escape {m['escape_rate']:.4f}, "
                  f"false reject {m['false_reject_rate']:.4f}; heatmap IoU {m['heatmap_iou']}; "
                  f"latency {m['latency']['p50_ms']:.1f} ms")


def synth_score(
    real: Path = typer.Option(..., "--real", help="Real data set (split with `lineguard data split`)."),
    synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic data set (`lineguard synth generate`)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model directory trained on the real set."),
    split: str = typer.Option("train", "--split", help="Real split to compare with."),
    max_images: int = typer.Option(2000, "--max-images", min=4, help="Cap per side (seeded sample)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Frechet distance, KID, precision/recall, real-vs-synthetic classifier AUC and near-copy rate of a
    synthetic set, in the features of a model trained on the real set."""
    from ..console import emit
    from .synth_score import ScoreReport, score

    rep = ScoreReport.model_validate(score(real, synthetic, model, split=split, max_images=max_images,
                                           progress=not quiet))
    emit(rep, as_json, _show)


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
