"""Does the transformer stream earn its place? Two architectures cross-validated at equal epochs on the same folds,
compared paired per held-out image: delta accuracy, macro-F1 and escape rate (B - A) with bootstrap intervals
(images resampled within each fold). One run is one attempt; every attempt is appended to the table.

    lineguard data split DIR --val 0 --test 0 --folds 5
    python bench/arch_cv.py --data DIR --work runs/bench/arch_cv --epochs 14 \\
        --a cnn_lite0 --b two_stream_lite0 --note "default fusion" --out runs/bench/arch_cv.json

Resumable: the folds are ``lineguard cv`` runs (a fold already trained is kept). No time budget and no early stop
before the last epoch: both networks see the same number of epochs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from lineguard.data.format import Dataset
from lineguard.files import atomic_write
from lineguard.metrics import bootstrap_ci, confusion, escape_rate, macro_f1, ng_scores
from lineguard.training.config import TrainConfig
from lineguard.training.cv import cross_validate
from lineguard.training.dataset import DefectDataset
from lineguard.training.evaluate import predict
from lineguard.training.model_dir import load_model_dir


def held_out(work: Path, folds: int) -> Dict[str, np.ndarray]:
    """Every held-out image of the folds run in ``work``: label, prediction, called NG, fold."""
    out: Dict[str, List[np.ndarray]] = {"labels": [], "pred": [], "called": [], "fold": []}
    for k in range(folds):
        loaded = load_model_dir(work / f"fold-{k}" / "model")
        spec, ds = loaded.spec, Dataset.load(work / f"fold-{k}" / "data")
        p = predict(loaded.model, DefectDataset(ds, ds.split("test"), spec.preprocess, None), spec.ok_index)
        out["labels"].append(p.labels)
        out["pred"].append(p.probs.argmax(1))
        out["called"].append(ng_scores(p.probs, spec.ok_index) >= spec.threshold)
        out["fold"].append(np.full(len(p.labels), k))
    return {key: np.concatenate(v) for key, v in out.items()}


def compare(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], k: int, ok: Optional[int],
            reps: int) -> Dict[str, List[float]]:
    """(B - A, low, high) of accuracy, macro-F1 and (with an OK class) escape rate, paired on the same images."""
    assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["fold"], b["fold"])
    y, n = a["labels"], len(a["labels"])
    stats = {
        "accuracy": lambda m, i: float((m["pred"][i] == y[i]).mean()),
        "macro_f1": lambda m, i: macro_f1(confusion(y[i], m["pred"][i], k)),
    }
    if ok is not None:
        stats["escape_rate"] = lambda m, i: escape_rate(y[i] != ok, m["called"][i])
    return {name: list(bootstrap_ci(lambda i, f=f: f(b, i) - f(a, i), n, groups=a["fold"], reps=reps))
            for name, f in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a data set dealt into folds (data split --folds K)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/arch_cv"))
    ap.add_argument("--a", default="cnn_lite0")
    ap.add_argument("--b", default="two_stream_lite0")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--img-size", default="224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--note", default="", help="what this attempt changed")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/arch_cv.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    found, reports = {}, {}
    for arch in (args.a, args.b):
        cfg = TrainConfig(arch=arch, weights=args.weights, img_size=args.img_size, epochs=args.epochs,
                          batch_size=args.batch, patience=args.epochs, min_train_share=1.0)
        work = args.work / arch
        reports[arch] = cross_validate(args.data, work, cfg, folds=args.folds).model_dump()
        found[arch] = held_out(work, args.folds)
    classes = Dataset.load(args.data).classes
    cv = {arch: {"mean": r["mean"], "std": r["std"], "minutes": r["minutes"]} for arch, r in reports.items()}
    attempt = {"a": args.a, "b": args.b, "note": args.note, "epochs": args.epochs, "folds": args.folds,
               "data": str(args.data), "images": len(found[args.a]["labels"]),
               "delta_b_minus_a": compare(found[args.a], found[args.b], len(classes.classes), classes.ok_index,
                                          args.reps),
               "cv": cv, "seconds": time.perf_counter() - t0}
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"attempts": []}
    done["attempts"].append(attempt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(done, indent=1))
    print(json.dumps(attempt, indent=1))


if __name__ == "__main__":
    main()
