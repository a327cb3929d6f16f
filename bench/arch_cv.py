"""Does the transformer stream earn its place? Two architectures cross-validated at equal epochs on the same folds,
compared paired per held-out image: delta accuracy, macro-F1 and escape rate (B - A) with bootstrap intervals
(images resampled within each fold), in percentage points. One run is one attempt; every attempt is appended to
``--out`` (JSON) and the table of them all written beside it (``.md``).

    lineguard data split DIR --val 0 --test 0 --folds 5
    python bench/arch_cv.py --data DIR --work runs/bench/arch_cv --epochs 14 \\
        --a cnn_lite0 --b two_stream_lite0 --note "default fusion" --out runs/bench/arch_cv.json
    python bench/arch_cv.py ... --b-option start_as_cnn=true --note "head starts without the class token"

Each network's folds are kept in ``work/NAME`` (NAME: the architecture and its options), so a later attempt that
changes only B trains only B.

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
import yaml

from lineguard.console import log_to_console
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


def options(pairs: List[str]) -> Dict[str, object]:
    """``["depth=2", "start_as_cnn=true"]`` -> ``{"depth": 2, "start_as_cnn": True}`` (values read as YAML)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"an architecture option is KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def name(arch: str, opts: Dict[str, object]) -> str:
    """The folder (and table) name of an architecture with options: ``two_stream_lite0+start_as_cnn=True``."""
    return "+".join([arch, *(f"{k}={v}" for k, v in sorted(opts.items()))])


def _pm(cv: Dict, key: str) -> str:
    mean, std = cv["mean"].get(key), cv["std"].get(key)
    return "n/a" if mean is None else f"{mean * 100:.2f} +- {std * 100:.2f}"


def _delta(d: Dict, key: str) -> str:
    if key not in d:
        return "n/a"
    est, lo, hi = (v * 100 for v in d[key])
    return f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def table(done: Dict) -> str:
    """Every attempt, one row: both networks' mean +- std over the folds and B - A with its 95% interval."""
    lines = ["| data | A | B | what B changed | epochs | A accuracy | B accuracy | A macro-F1 | B macro-F1 "
             "| d accuracy | d macro-F1 | d escape |", "|" + "---|" * 12]
    for t in done["attempts"]:
        a, b, d = t["cv"][t["a"]], t["cv"][t["b"]], t["delta_b_minus_a"]
        lines.append(f"| {Path(t['data']).name} ({t['images']} images, {t.get('img_size', '224')}) | {t['a']} | "
                     f"{t['b']} | {t['note']} | {t['epochs']} | {_pm(a, 'accuracy')} | {_pm(b, 'accuracy')} | "
                     f"{_pm(a, 'macro_f1')} | {_pm(b, 'macro_f1')} | {_delta(d, 'accuracy')} | "
                     f"{_delta(d, 'macro_f1')} | {_delta(d, 'escape_rate')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a data set dealt into folds (data split --folds K)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/arch_cv"))
    ap.add_argument("--a", default="cnn_lite0")
    ap.add_argument("--b", default="two_stream_lite0")
    ap.add_argument("--a-option", action="append", default=[], help="KEY=VALUE, an arch option of A (repeat)")
    ap.add_argument("--b-option", action="append", default=[], help="KEY=VALUE, an arch option of B (repeat)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--img-size", default="224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--note", default="", help="what this attempt changed")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/arch_cv.json"))
    args = ap.parse_args()
    log_to_console(False)  # the epoch lines
    t0 = time.perf_counter()
    found, reports = {}, {}
    nets = [(args.a, options(args.a_option)), (args.b, options(args.b_option))]
    for arch, opts in nets:
        cfg = TrainConfig(arch=arch, arch_options=opts, weights=args.weights, img_size=args.img_size,
                          epochs=args.epochs, batch_size=args.batch, patience=args.epochs, min_train_share=1.0)
        work = args.work / name(arch, opts)
        reports[name(arch, opts)] = cross_validate(args.data, work, cfg, folds=args.folds).model_dump()
        found[name(arch, opts)] = held_out(work, args.folds)
    a, b = (name(*net) for net in nets)
    classes = Dataset.load(args.data).classes
    cv = {net: {"mean": r["mean"], "std": r["std"], "minutes": r["minutes"],
                "epochs": [row["epochs"] for row in r["per_fold"]]} for net, r in reports.items()}
    attempt = {"a": a, "b": b, "note": args.note, "epochs": args.epochs, "folds": args.folds,
               "data": str(args.data), "img_size": args.img_size, "images": len(found[a]["labels"]),
               "delta_b_minus_a": compare(found[a], found[b], len(classes.classes), classes.ok_index, args.reps),
               "cv": cv, "seconds": time.perf_counter() - t0}
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"attempts": []}
    done["attempts"].append(attempt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(done, indent=1))
    atomic_write(args.out.with_suffix(".md"), table(done))
    print(json.dumps(attempt, indent=1))
    print(table(done))


if __name__ == "__main__":
    main()
