"""``lineguard cv``: k-fold cross-validation over the folds ``lineguard data split --folds K`` dealt.

    report = cross_validate("data/mt", "runs/cv", TrainConfig(), folds=5)      # CvReport; cv.json + cv.md

Fold ``k`` is held out and evaluated; fold ``k + 1`` (mod K) selects the best epoch (val); the other folds train.
Each fold is a data set of its own in ``out/fold-k/data`` (a manifest naming the original images, so nothing is
copied) and a model folder ``out/fold-k/model``; a fold whose model folder is complete is not trained again, and one
killed mid-training resumes from its checkpoint. Images outside the folds (the test split of ``data split``) are
the final hold-out: ``final=True`` trains one model on every fold (the last fold as val) and evaluates it there.

Every metric of the held-out folds is reported per fold and as mean and sample standard deviation
(``cv.json``, ``cv.md``). With ``data split DIR --val 0 --test 0 --folds K`` every image is in a fold, as
published k-fold figures are.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel

from ..data.format import Dataset, DatasetError, Record
from ..files import atomic_write
from .config import TrainConfig
from .engine import CHECKPOINT, train

__all__ = ["FIGURES", "CvReport", "cross_validate"]

log = logging.getLogger("lineguard.train")
# the held-out figures averaged over folds (those a model has: OK/NG ones are None for a defect-type set)
FIGURES = ("accuracy", "macro_f1", "ok_ng_auroc", "escape_rate", "false_reject_rate", "exact_match", "heatmap_iou")


class CvReport(BaseModel):
    out: str
    folds: int
    arch: str
    mean: Dict[str, Optional[float]]
    std: Dict[str, Optional[float]]  # sample standard deviation (n - 1) over the folds
    per_fold: List[Dict[str, Any]]  # fold, images held out, each figure, epochs, minutes, stop reason
    minutes: float  # training time over the folds (this run and earlier ones)
    final: Optional[Dict[str, Any]] = None  # the model on every fold: its folder and test-split figures


def fold_sets(ds: Dataset, folds: int) -> List[List[Record]]:
    """The records of each fold 0..K-1; a set without fold numbers, or dealt into another number of folds, is a
    :class:`DatasetError` saying how to deal them."""
    found = sorted({r.fold for r in ds.records if r.fold is not None})
    if found != list(range(folds)):
        how = f"run `lineguard data split {ds.root} --folds {folds}` (--val 0 --test 0 puts every image in a fold)"
        have = "no fold numbers" if not found else f"folds {found}"
        raise DatasetError(f"{ds.root}: {have}, cv needs 0..{folds - 1}: {how}")
    return [[r for r in ds.records if r.fold == k] for k in range(folds)]


def _fold_data(ds: Dataset, root: Path, train: List[Record], val: List[Record], test: List[Record]) -> Path:
    """A data set at ``root`` whose manifest names ``ds``'s image and mask files (absolute paths) with the splits."""
    rows = [ds.absolute(r, split=split) for split, recs in (("train", train), ("val", val), ("test", test))
            for r in recs]
    Dataset(root, ds.classes, rows).save()
    return root


def _run(cfg: TrainConfig, data: Path, model: Path, progress: bool) -> Dict[str, Any]:
    """The model folder's metrics: trained now (or resumed from its checkpoint), or read when already complete."""
    metrics = model / "metrics.json"
    if not metrics.is_file():
        train(cfg, data, model, resume=(model / CHECKPOINT).is_file(), progress=progress)
    return json.loads(metrics.read_text())


def _row(k: Any, m: Dict[str, Any], split: str) -> Dict[str, Any]:
    shown = m[split]
    return {"fold": k, "images": shown["images"], **{f: shown.get(f) for f in FIGURES},
            "epochs": m["epochs_run"], "minutes": m["train_minutes"], "stop_reason": m.get("stop_reason")}


def _spread(values: List[Optional[float]]) -> tuple:
    got = [v for v in values if v is not None]
    if not got:
        return None, None
    mean = sum(got) / len(got)
    std = math.sqrt(sum((v - mean) ** 2 for v in got) / (len(got) - 1)) if len(got) > 1 else 0.0
    return mean, std


def cross_validate(data: Union[str, Path], out: Union[str, Path], cfg: TrainConfig, folds: int = 5,
                   final: bool = False, progress: bool = True) -> CvReport:
    """Train and evaluate each fold of ``data`` into ``out`` (see the module docstring); resumable."""
    if folds < 2:
        raise DatasetError(f"--folds must be at least 2, got {folds}")
    ds = Dataset.load(data)
    sets = fold_sets(ds, folds)
    out = Path(out)
    rows = []
    for k in range(folds):
        log.info("fold %d/%d: %d images held out", k + 1, folds, len(sets[k]))
        val = (k + 1) % folds
        trained = [r for j, s in enumerate(sets) if j not in (k, val) for r in s]
        fold_data = _fold_data(ds, out / f"fold-{k}" / "data", trained, sets[val], sets[k])
        rows.append(_row(k, _run(cfg, fold_data, out / f"fold-{k}" / "model", progress), "test"))
    stats = {f: _spread([r[f] for r in rows]) for f in FIGURES}
    final_row = None
    if final:
        held = ds.split("test")
        if not held:
            raise DatasetError(f"{ds.root}: --final evaluates on the test split, and it is empty (data split --test)")
        data_all = _fold_data(ds, out / "final" / "data", [r for s in sets[:-1] for r in s], sets[-1], held)
        final_row = {"model": str(out / "final" / "model"),
                     **_row("final", _run(cfg, data_all, out / "final" / "model", progress), "test")}
    report = CvReport(out=str(out), folds=folds, arch=cfg.arch, mean={f: v[0] for f, v in stats.items()},
                      std={f: v[1] for f, v in stats.items()}, per_fold=rows,
                      minutes=sum(r["minutes"] for r in rows), final=final_row)
    atomic_write(out / "cv.json", report.model_dump_json(indent=1))
    atomic_write(out / "cv.md", markdown(report))
    return report


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}"


def markdown(r: CvReport) -> str:
    """The per-fold table and the mean +- std line, figures in percent."""
    shown = [f for f in FIGURES if r.mean[f] is not None]
    head = "| fold | images | " + " | ".join(shown) + " | epochs | minutes | stopped |"
    lines = [f"# {r.folds}-fold cross-validation: {r.arch}", "", head, "|" + "---|" * (len(shown) + 5)]
    for row in r.per_fold + ([r.final] if r.final else []):
        lines.append(f"| {row['fold']} | {row['images']} | " + " | ".join(_pct(row[f]) for f in shown)
                     + f" | {row['epochs']} | {row['minutes']:.1f} | {row['stop_reason']} |")
    lines += ["", "Mean +- sample std over the folds (percent): "
              + ", ".join(f"{f} {_pct(r.mean[f])} +- {_pct(r.std[f])}" for f in shown)
              + f"; {r.minutes:.1f} minutes of training.", ""]
    return "\n".join(lines)
