"""bench/synth_gain.py at toy scale on a simulated set: every step of the protocol runs (folds, arm (a), the
two-stage GAN, copy-paste / Perlin, the filter, the Lite0 screen, arms (b) and (c), the paired intervals), nothing
of the held-out fold reaches the generators or the filter's classifier, and a second run resumes everything."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lineguard.data.format import Dataset
from lineguard.sim import SimulatorConfig, simulate_dataset
from lineguard.synth.gan.config import GanFile

TINY_GAN = """\
resolution: 16
z_dim: 16
w_dim: 16
mapping_layers: 2
channel_base: 128
channel_max: 16
batch_size: 4
crop_views: 1
defect_channels: 8
tick_kimg: 0.004
snapshot_kimg: 0.5
sample_kimg: 0.5
device: cpu
"""


def test_synth_gain_protocol_end_to_end_and_resumed(bench_script, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_script("synth_gain")
    sim = tmp_path / "sim"
    simulate_dataset(sim, n=48, seed=0, cfg=SimulatorConfig(size=64), workers=1, progress=False)
    (tmp_path / "gan.yaml").write_text(TINY_GAN)
    work, record, out = tmp_path / "work", tmp_path / "record", tmp_path / "out.json"
    argv = ["synth_gain.py", "--data", str(sim), "--work", str(work), "--record", str(record), "--out", str(out),
            "--folds", "2", "--seeds", "0",
            "--fractions", "0.5", "--img-size", "32", "--epochs", "1", "--batch", "8", "--synthetic-n", "12",
            "--shares", "0.5", "1.0", "--screen-seeds", "2", "--gan-config", str(tmp_path / "gan.yaml"),
            "--surface-kimg", "0.008", "--gan-kimg", "0.008", "--before-kimg", "0.008", "--band", "0", "1",
            "--report-classes", "dent", "scratch", "--reps", "20", "--arch", "cnn_resnet18"]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    result = json.loads(out.read_text())
    f = result["fractions"]["0.5"]
    assert set(f["arms"]) == {"real", "baseline", "gan"} and set(f["paired"]) == {"gan-real", "baseline-real",
                                                                                   "gan-baseline"}
    for d in f["paired"].values():
        assert set(d) == {"macro_f1", "accuracy", "f1_dent", "recall_dent", "f1_scratch", "recall_scratch"}
        assert all(lo <= est <= hi for est, lo, hi in d.values())
    assert len(f["arms"]["real"]["converged"]) == 2 and f["folds_done"] == [0, 1] and f["complete"]
    for k in range(2):  # each unit's filter and share, chosen on its own val
        rec = json.loads((record / f"f050-fold{k}.json").read_text())
        assert f["choice"][f"fold{k}"] == {"filter": rec["filter"], "share": rec["share"]}
        assert rec["share"] in (0.5, 1.0) and f"{'filtered' if rec['filter'] else 'unfiltered'}/{rec['share']:g}" in \
            rec["screen_means"]
        assert set(rec["screen_means"]) <= {f"{w}/{s}" for w in ("filtered", "unfiltered") for s in ("0.5", "1")}
    assert set(f["goals"]) == {"c-a >= +2 points, interval above 0", "c >= b"}
    assert "| 0.5 | gan-real |" in out.with_suffix(".md").read_text()
    assert result["one_stage_fold0"] == json.loads((record / "one-stage.json").read_text())
    assert result["one_stage_fold0"]["kimg"] == 0.008 and "shapes" in result["one_stage_fold0"]
    assert not GanFile.load(work / "f050" / "fold0" / "gan-one-stage" / "gan.yaml").surface
    # nothing of the held-out fold in the generators' or the classifier's data
    full = Dataset.load(work / "data")
    for k in range(2):
        fold = work / "f050" / f"fold{k}"
        data = Dataset.load(fold / "data")
        test = {r.image for r in data.split("test")}
        assert test == {str(full.path(r.image).resolve()) for r in full.records if r.fold == k}
        assert not test & {r.image for r in data.records if r.split != "test"}
        gan = GanFile.load(fold / "gan" / "gan.yaml")
        assert gan.data["data"] == str((fold / "data").resolve()) and gan.data["split"] == "train"
        assert gan.surface is not None
        surface = GanFile.load(work / "surface" / f"fold{k}" / "gan.yaml")
        assert surface.data["split"] == "train" and surface.sha256 == gan.surface.sha256
        texture = f["per_fold"][f"fold{k}"]["texture"]  # the surface's on the OK patches it was fitted on
        assert texture["surface"]["real"] == surface.data["ok_patches"] and texture["surface"]["hf_ratio"] > 0
        assert texture["gan"]["fake"] == 64 * len(gan.classes) and texture["gan"]["hf_ratio"] > 0
        assert json.loads((fold / "gan-kept" / "filter-report.json").read_text())["model"] == str(
            fold / "train" / "real" / "seed0")
        assert (fold / "real-vs-gan.png").is_file()
    # a set the filter left too small to score is reported, not a crash at the end of a long run
    fold0 = work / "f050" / "fold0"
    gen = Dataset.load(fold0 / "gan-set")
    Dataset(tmp_path / "few", gen.classes, [gen.absolute(r) for r in gen.records[:2]]).save()
    assert "(needs > 3" in bench.scored(fold0 / "data", tmp_path / "few", fold0 / "train" / "real" / "seed0")["error"]
    assert result["cpu_hours"] > 0 and set(result["gan_images_per_s"]) == {"0.5/fold0", "0.5/fold1"}
    seconds = [json.loads((record / f"f050-fold{k}.json").read_text())["seconds"] for k in range(2)]
    assert seconds[0]["fold0/surface-fit"] > 0 and seconds[1]["fold1/surface-fit"] > 0
    assert seconds[0]["f050/fold0/wall"] > seconds[0]["fold0/surface-fit"] + seconds[0]["f050/fold0/gan-fit"]
    one = result["one_stage_fold0"]["seconds"]
    assert one["f050/one-stage/fit"] > 0 and one["f050/one-stage/wall"] > one["f050/one-stage/fit"]
    assert abs(result["cpu_hours"] * 3600 - seconds[0]["f050/fold0/wall"] - seconds[1]["f050/fold1/wall"]
               - one["f050/one-stage/wall"]) < 1e-6
    # within a session, a unit whose record is lost resumes from --work: nothing is trained, fitted or generated again
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*")
              if p.name in ("held_out.npz", "generator.safetensors") or ("images" in p.parts and p.is_file())}
    # per fold: runs, surface + GAN, copy-paste, Perlin, GAN images; the one-stage GAN and its images on fold 0
    assert len(stamps) == 2 * (3 + 2 + 6 + 6 + 12) + 1 + 12
    for p in record.iterdir():
        p.unlink()
    bench.main()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads(out.read_text())["fractions"]["0.5"]["paired"] == f["paired"]
    # a new session (--work gone): the recorded units are the comparison, nothing runs
    (tmp_path / "moved").mkdir()
    work.rename(tmp_path / "moved" / "work")
    bench.main()
    assert json.loads(out.read_text())["fractions"]["0.5"]["paired"] == f["paired"] and not (work / "f050").exists()
    # a record made with other settings is refused; so is a GAN fitted with other network settings
    (tmp_path / "gan.yaml").write_text(TINY_GAN.replace("channel_base: 128", "channel_base: 256"))
    with pytest.raises(SystemExit, match=r"f050-fold0.json: recorded with other settings than these"):
        bench.main()
    for p in record.iterdir():
        p.unlink()
    shutil.rmtree(work)
    (tmp_path / "moved" / "work").rename(work)
    with pytest.raises(SystemExit, match=r"surface/fold0/gan.yaml: the run was started with other network settings "
                                         r"\(channel_base\).*remove it or use another --work"):
        bench.main()
