"""Does synthesis help? Train the inspection model with 25% and 100% of the real defect training images,
each (a) real only, (b) + copy-paste and Perlin patches, (c) + StyleGAN patches; several seeds; one real
test split. Writes JSON (macro-F1, Fray/Crack recall, mean and std over seeds) and per-class sample
grids of real crops vs generated patches.

    LINEGUARD_REAL_DATA=../shared/datasets/magnetic-tile python bench/synth_gain.py \\
        --fractions 0.25 1.0 --seeds 0 1 2 --minutes 15 --gan-kimg 80 --out runs/bench/synth_gain.json

Every step resumes: data, GAN fits, generated sets and finished training runs are kept under --work.
Cost on our 2-core CPU: a GAN fit per fraction (cpu preset, ~2 h for 80 kimg) plus
len(fractions) x 3 x len(seeds) training runs of --minutes each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
from _magnetic_tile import prepared_split

from lineguard.config import load_config
from lineguard.data.format import Dataset
from lineguard.files import atomic_write
from lineguard.synth.baselines import CopyPasteSource, PerlinSource
from lineguard.synth.crops import defect_crops, group_by_class
from lineguard.synth.gan.config import cpu_preset
from lineguard.synth.gan.source import GanSource
from lineguard.synth.gan.train import fit
from lineguard.synth.generate import NearCopyConfig, SourceFactory, generate
from lineguard.training.config import TrainConfig
from lineguard.training.engine import train

VARIANTS = ("real", "baseline", "gan")
RECALL_OF = ("Fray", "Crack")


def subset(data: Path, out: Path, fraction: float, seed: int = 0) -> Path:
    """``data`` with ``fraction`` of each defect class's train images (val, test and OK train kept)."""
    if (out / "manifest.jsonl").exists():
        return out
    ds = Dataset.load(data)
    rng = np.random.default_rng(seed)
    keep = []
    for c in ds.classes.classes:
        recs = [r for r in ds.split("train") if r.label == c]
        if c != ds.classes.ok_class:
            n = max(1, round(len(recs) * fraction))
            recs = [recs[i] for i in sorted(rng.choice(len(recs), size=n, replace=False))]
        keep += recs
    rows = [r.model_copy(update={"image": str(ds.path(r.image).resolve()),
                                 "mask": str(ds.path(r.mask).resolve()) if r.mask else None})
            for r in keep + [r for r in ds.records if r.split in ("val", "test")]]
    Dataset(out, ds.classes, rows).save()
    return out


def merged(parts: List[Path], out: Path) -> Path:
    """One data set holding the records of ``parts`` (absolute paths; same class file)."""
    if (out / "manifest.jsonl").exists():
        return out
    sets = [Dataset.load(p) for p in parts]
    rows = [r.model_copy(update={"id": f"{i}-{r.id}", "image": str(d.path(r.image).resolve()),
                                 "mask": str(d.path(r.mask).resolve()) if r.mask else None})
            for i, d in enumerate(sets) for r in d.records]
    Dataset(out, sets[0].classes, rows).save()
    return out


def sample_grid(real: Path, gan_dir: Path, out: Path, per_class: int = 8, size: int = 64) -> None:
    """Rows per class: ``per_class`` real crops, then as many generated patches (image over mask)."""
    ds = Dataset.load(real)
    crops = group_by_class(defect_crops(ds, ds.split("train"), size=size, channels=1)[0])
    src = GanSource.load(gan_dir)
    rows = []
    for c in src.classes:
        reals = crops.get(c, [])[:per_class]
        fakes = src.sample(c, per_class, np.random.default_rng(0))
        cells = [np.vstack([x.image, x.mask]) for x in reals] + [np.vstack([p.image if p.image.ndim == 2 else
                                                                              cv2.cvtColor(p.image, cv2.COLOR_RGB2GRAY),
                                                                              p.mask]) for p in fakes]
        gap = np.full((2 * size, 8), 255, np.uint8)
        rows.append(np.hstack([*cells[:len(reals)], gap, *cells[len(reals):]]))
    width = max(r.shape[1] for r in rows)
    cv2.imwrite(str(out), np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1])), constant_values=255) for r in rows]))


def synthetic_sets(args: argparse.Namespace, tag: str, real: Path, timing: Dict[str, float]) -> Dict[str, Path]:
    """The synthetic sets of one fraction: {variant: data set} for "baseline" and "gan" (kept under --work)."""
    synthetic: Dict[str, Path] = {}
    work = args.work / tag
    if "baseline" in args.variants:
        ds = Dataset.load(real)
        half = args.synthetic_n // 2
        t0 = time.perf_counter()
        cp = generate(CopyPasteSource.from_dataset(ds, channels=1), real, half, work / "copy-paste",
                      near_copy=NearCopyConfig(enabled=False), progress=False)  # real crops by design
        pl = generate(PerlinSource.from_dataset(ds), real, args.synthetic_n - half, work / "perlin", seed=1,
                      progress=False)
        timing[f"{tag}/baseline-generate"] = time.perf_counter() - t0
        synthetic["baseline"] = merged([cp.dataset.root, pl.dataset.root], work / "baseline")
    if "gan" in args.variants:
        gan_dir = work / "gan"
        if not (gan_dir / "gan.yaml").exists():
            t0 = time.perf_counter()
            cfg = cpu_preset().model_copy(update={"kimg": args.gan_kimg})
            fit(real, gan_dir, cfg, resume=(gan_dir / "checkpoint.pt").exists(), progress=False)
            timing[f"{tag}/gan-fit"] = time.perf_counter() - t0
        sample_grid(real, gan_dir, args.work / f"{tag}-real-vs-gan.png")
        t0 = time.perf_counter()
        g = generate(SourceFactory(GanSource.load, (str(gan_dir),)), real, args.synthetic_n, work / "gan-set",
                     progress=False)
        timing[f"{tag}/gan-generate"] = time.perf_counter() - t0
        synthetic["gan"] = g.dataset.root
    return synthetic


def train_run(args: argparse.Namespace, real: Path, synthetic: Optional[Path], seed: int, out: Path) -> Dict:
    """The test figures of one training run (a finished run under ``out`` is read, not redone)."""
    cfg = TrainConfig(arch=args.arch, img_size=args.img_size, seed=seed, epochs=200, max_minutes=args.minutes,
                      patience=1000, synthetic=str(synthetic) if synthetic else None,
                      synthetic_extra=args.synthetic_extra)
    if (out / "metrics.json").exists():
        if load_config(TrainConfig, out / "train.yaml") != cfg:
            raise SystemExit(f"{out}: trained with other settings than these; remove it or use another --work")
        m = json.loads((out / "metrics.json").read_text())
    else:
        m = train(cfg, real, out, resume=(out / "checkpoint.pt").exists(), progress=False)
    t = m["test"]
    return {"macro_f1": t["macro_f1"], "accuracy": t["accuracy"], "auroc": t["ok_ng_auroc"],
            **{f"recall_{c}": t["per_class"][c]["recall"] for c in RECALL_OF}, "train_minutes": m["train_minutes"]}


def summary(args: argparse.Namespace, runs: Dict[str, Dict]) -> Dict[str, Dict]:
    """Mean and std over seeds per fraction and variant."""
    table = {}
    for f in args.fractions:
        for v in args.variants:
            rows = [r for r in runs.values() if r["fraction"] == f and r["variant"] == v]
            table[f"{f:g}/{v}"] = {k: {"mean": float(np.mean([r[k] for r in rows])),
                                       "std": float(np.std([r[k] for r in rows]))}
                                   for k in ("macro_f1", "accuracy", *[f"recall_{c}" for c in RECALL_OF])}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--arch", default="two_stream_lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per run")
    ap.add_argument("--synthetic-n", type=int, default=4000, help="generated images per synthetic set")
    ap.add_argument("--synthetic-extra", type=float, default=0.5, help="synthetic draws on top of each real draw")
    ap.add_argument("--gan-kimg", type=float, default=80.0)
    ap.add_argument("--work", type=Path, default=Path("runs/bench/synth_gain"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/synth_gain.json"))
    args = ap.parse_args()
    data = prepared_split(args.work)
    runs: Dict[str, Dict] = {}
    timing: Dict[str, float] = {}
    for f in args.fractions:
        tag = f"f{round(f * 100):03d}"
        real = subset(data, args.work / tag / "data", f)
        synthetic = synthetic_sets(args, tag, real, timing)
        for v in args.variants:
            for seed in args.seeds:
                name = f"{tag}/{v}/seed{seed}"
                figures = train_run(args, real, synthetic.get(v), seed, args.work / tag / "train" / v / f"seed{seed}")
                runs[name] = {"fraction": f, "variant": v, "seed": seed, **figures}
                print(json.dumps({"run": name, **runs[name]}), flush=True)
    table = summary(args, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps({"benchmark": "synth_gain", "arch": args.arch, "seeds": args.seeds,
                                    "img_size": args.img_size, "minutes_per_run": args.minutes,
                                    "synthetic_n": args.synthetic_n, "synthetic_extra": args.synthetic_extra,
                                    "gan_kimg": args.gan_kimg,
                                    "table": table, "runs": runs, "seconds": timing}, indent=1))
    for k, v in table.items():
        print(f"{k:18s} macro-F1 {v['macro_f1']['mean']:.4f} ± {v['macro_f1']['std']:.4f}  "
              + "  ".join(f"{c} recall {v[f'recall_{c}']['mean']:.3f}" for c in RECALL_OF))


if __name__ == "__main__":
    main()
