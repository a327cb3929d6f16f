"""Which discriminator gives better samples per CPU hour? Issue 16's build point 2, measured.

    python bench/gan_disc.py --data runs/bench/synth_gain/f025/fold0/data \\
        --surface runs/bench/synth_gain/surface/fold0 \\
        --classifier runs/bench/synth_gain/f025/fold0/train/real/seed0 \\
        --work runs/bench/gan_disc --out runs/bench/gan_disc.json

The defect blocks of the two-stage StyleGAN are fitted on the training defects of ``--data`` over the frozen
surface ``--surface``, once per discriminator: ``pixel`` (the ``cpu`` preset) and ``projected`` (frozen ImageNet
Lite0 features, the ``cpu-projected`` preset), in steps of ``--step-kimg`` until ``--minutes`` of fitting (or
``--max-kimg``). After each step ``--n`` images are generated (pasted on the OK training images) and scored against
the real training defects in the feature space of ``--classifier``, a model trained on that real data (``lineguard
synth score``: FD, KID, precision / recall, C2ST AUC, near-copy rate, overall and per class), with the mask-shape
distances and the texture figures (``synth.texture``) of the step's last ``shapes.jsonl`` and ``texture.jsonl``
rows. The discriminators are compared at equal fitting time: each one's last step within the shorter run's minutes.
Out: the JSON (every curve and the comparison), a PNG of the curves beside it, and per discriminator a
real-vs-generated grid under --work (it holds real crops). Every step is kept; a second run resumes where the first
stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Dict, List

from _synth import last_row, sample_grid

from lineguard import LineguardError
from lineguard.console import log_to_console
from lineguard.data.modelspec import ModelSpec
from lineguard.files import atomic_write
from lineguard.synth.gan.config import GAN_YAML, GanFile, preset_config
from lineguard.synth.gan.source import GanSource
from lineguard.synth.gan.train import fit
from lineguard.synth.generate import SourceFactory, generate
from lineguard.training.synth_score import score

DISCRIMINATORS = {"pixel": "cpu", "projected": "cpu-projected"}  # the preset of each
LOSS = {"fd": float, "kid_mean": float, "c2st_auc": lambda v: abs(v - 0.5), "precision": lambda v: -v,
        "recall": lambda v: -v}  # per figure: lower is better
PLOTTED = {"fd": "FD (lower is better)", "kid_mean": "KID (lower is better)",
           "c2st_auc": "C2ST AUC (0.5 = not told apart)", "recall": "recall (coverage of the real defects)"}


def curve(args: argparse.Namespace, name: str) -> List[Dict]:
    """The scored steps of discriminator ``name`` (``work/NAME/curve.jsonl``), fitted on until the budget is spent."""
    root = args.work / name
    gan, rows_path = root / "gan", root / "curve.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    while True:
        kimg = round(args.step_kimg * (len(rows) + 1), 3)  # the next step
        if rows and (rows[-1]["seconds"] >= args.minutes * 60 or kimg > args.max_kimg + 1e-9):
            break
        cfg = preset_config(DISCRIMINATORS[name], args.gan_config, surface=str(args.surface), kimg=kimg)
        fit(args.data, gan, cfg, resume=(gan / "checkpoint.pt").exists(), progress=False)
        seconds = last_row(gan / "log.jsonl")["seconds"]
        syn = root / f"set-kimg{kimg:g}"
        generate(SourceFactory(GanSource.load, (str(gan),)), args.data, args.n, syn, progress=False)
        rep = score(args.data, syn, args.classifier, progress=False)
        rows.append({"kimg": kimg, "seconds": seconds, "overall": rep["overall"], "per_class": rep["per_class"],
                     "shapes": last_row(gan / "shapes.jsonl")["shapes"],
                     "texture": last_row(gan / "texture.jsonl")["texture"]})
        with rows_path.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        shutil.rmtree(syn)  # scored; the curve row is what is kept
        print(f"{name}: {kimg:g} kimg, {seconds / 60:.1f} min, FD {rep['overall']['fd']:.1f}, "
              f"C2ST AUC {rep['overall']['c2st_auc']:.3f}, hf_ratio {rows[-1]['texture']['hf_ratio']:.2f}", flush=True)
    sample_grid(args.data, gan, args.work / f"real-vs-{name}.png")
    return rows


def at_equal_time(curves: Dict[str, List[Dict]]) -> Dict:
    """Each discriminator's last step within the shorter run's fitting time, and which is better per figure."""
    horizon = min(rows[-1]["seconds"] for rows in curves.values())
    rows = {n: ([r for r in c if r["seconds"] <= horizon] or c[:1])[-1] for n, c in curves.items()}
    better = {k: min(rows, key=lambda n, k=k, f=f: f(rows[n]["overall"][k])) for k, f in LOSS.items()}
    return {"minutes": horizon / 60, "better": better,
            "steps": {n: {"kimg": r["kimg"], "minutes": r["seconds"] / 60, **r["overall"],
                          "hf_ratio": r["texture"]["hf_ratio"]} for n, r in rows.items()}}


def plot(curves: Dict[str, List[Dict]], out: Path) -> None:
    """The overall figures of every step against fitting minutes, a line per discriminator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, PLOTTED.items()):
        for name, rows in curves.items():
            ax.plot([r["seconds"] / 60 for r in rows], [r["overall"][key] for r in rows], "o-", label=name)
        ax.set_title(title)
        ax.set_xlabel("fitting minutes (this machine)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(title="discriminator")
    fig.suptitle("Stage-2 StyleGAN samples against the real training defects, per discriminator")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a lineguard data set with a train split")
    ap.add_argument("--surface", type=Path, required=True, help="a stage-1 GAN_DIR (synth fit --target surface)")
    ap.add_argument("--classifier", type=Path, required=True, help="a model folder trained on --data")
    ap.add_argument("--discriminators", nargs="+", choices=list(DISCRIMINATORS), default=list(DISCRIMINATORS))
    ap.add_argument("--minutes", type=float, default=20.0, help="fitting minutes per discriminator")
    ap.add_argument("--step-kimg", type=float, default=4.0)
    ap.add_argument("--max-kimg", type=float, default=200.0)
    ap.add_argument("--n", type=int, default=400, help="generated images scored per step")
    ap.add_argument("--gan-config", type=Path, help="GanConfig YAML over both presets (e.g. smaller networks)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/gan_disc"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench/gan_disc.json"))
    args = ap.parse_args()
    log_to_console(False)
    try:
        ModelSpec.load(args.classifier)  # before any fitting
        GanFile.load(args.surface / GAN_YAML)
        curves = {name: curve(args, name) for name in args.discriminators}
    except LineguardError as e:
        raise SystemExit(f"error: {e}") from None
    result = {"benchmark": "gan_disc", "data": str(args.data), "surface": str(args.surface),
              "classifier": str(args.classifier), "step_kimg": args.step_kimg, "n": args.n,
              "sec_per_kimg": {n: rows[-1]["seconds"] / rows[-1]["kimg"] for n, rows in curves.items()},
              "at_equal_minutes": at_equal_time(curves), "curves": curves}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(result, indent=1))
    plot(curves, args.out.with_suffix(".png"))
    print(json.dumps(result["at_equal_minutes"], indent=1))


if __name__ == "__main__":
    main()
