"""bench/gan_disc.py at toy scale: the defect blocks fitted over one surface with the pixel and the projected
discriminator, scored after every step, compared at equal fitting time; a second run with a larger budget fits
only the new steps."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from lineguard.synth.gan.config import GanFile, preset_config
from lineguard.synth.gan.train import fit

TINY_GAN = {"resolution": 32, "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 16,
            "batch_size": 4, "crop_views": 1, "defect_channels": 8, "projected_width": 8, "tick_kimg": 0.004,
            "snapshot_kimg": 0.5, "sample_kimg": 0.5, "device": "cpu"}


def test_gan_disc_scores_both_discriminators_per_step_and_resumes(bench_script, split_sim, random_model_dir,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_script("gan_disc")
    data = split_sim(48, 64, 0, 0.2, 0.2)
    (tmp_path / "gan.yaml").write_text(yaml.safe_dump(TINY_GAN))
    surface = tmp_path / "surface"
    fit(data, surface, preset_config("cpu", None, **TINY_GAN, target="surface", kimg=0.004), progress=False)
    clf = random_model_dir(tmp_path / "clf", data, "cnn_resnet18", 32)
    work, out = tmp_path / "work", tmp_path / "out.json"

    def run(max_kimg: float) -> dict:
        monkeypatch.setattr(sys, "argv", [
            "gan_disc.py", "--data", str(data), "--surface", str(surface), "--classifier", str(clf),
            "--work", str(work), "--out", str(out), "--gan-config", str(tmp_path / "gan.yaml"), "--step-kimg", "0.008",
            "--max-kimg", str(max_kimg), "--minutes", "60", "--n", "12"])
        bench.main()
        return json.loads(out.read_text())

    first = run(0.008)
    assert [r["kimg"] for c in first["curves"].values() for r in c] == [0.008, 0.008]
    second = run(0.016)
    curves = second["curves"]
    assert set(curves) == {"pixel", "projected"}
    for name, rows in curves.items():
        assert rows[0] == first["curves"][name][0]  # the first step is read, not refitted
        assert [r["kimg"] for r in rows] == [0.008, 0.016] and rows[0]["seconds"] < rows[1]["seconds"]
        for r in rows:
            assert all(math.isfinite(r["overall"][k]) for k in ("fd", "kid_mean", "precision", "recall", "c2st_auc"))
            assert r["per_class"] and 0 <= r["overall"]["c2st_auc"] <= 1
            assert r["texture"]["hf_ratio"] > 0 and r["texture"]["noise_strength"]
        gan = GanFile.load(work / name / "gan" / "gan.yaml")
        assert gan.kimg >= 0.016 and gan.surface.sha256 == GanFile.load(surface / "gan.yaml").sha256
        assert gan.config.discriminator == name
        assert (work / f"real-vs-{name}.png").is_file() and not list((work / name).glob("set-*"))
    eq = second["at_equal_minutes"]
    assert eq["minutes"] == pytest.approx(min(c[-1]["seconds"] for c in curves.values()) / 60)
    shorter = min(curves, key=lambda n: curves[n][-1]["seconds"])
    assert eq["steps"][shorter]["kimg"] == 0.016
    assert all(s["minutes"] <= eq["minutes"] + 1e-9 or s["kimg"] == 0.008 for s in eq["steps"].values())
    assert set(eq["better"]) == {"fd", "kid_mean", "c2st_auc", "precision", "recall"}
    assert set(eq["better"].values()) <= {"pixel", "projected"}
    assert all(s["hf_ratio"] > 0 for s in eq["steps"].values())
    assert out.with_suffix(".png").stat().st_size > 10_000
