"""Simulated data sets: the folder, its classes, worker-count independence, no overwrite; the CLI verb."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from lineguard.config import load_config
from lineguard.data.format import CLASSES_FILE, MANIFEST_FILE, Dataset, DatasetError
from lineguard.data.imaging import read_image, read_mask
from lineguard.sim import OK, SIMULATOR_VERSION, SimulatorConfig, render_part, simulate_dataset
from lineguard.sim.cli import simulate


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cfg = SimulatorConfig(size=64, channels=3, defects=["dent", "stain"], noise=0.5)
    simulate_dataset(out, n=2, seed=1, cfg=cfg, workers=1, progress=False)
    assert load_config(SimulatorConfig, out / "simulator.yaml") == cfg


def test_simulate_dataset_writes_a_loadable_data_set(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cfg = SimulatorConfig(size=64, ok_fraction=0.4)
    ds = simulate_dataset(out, n=20, seed=9, cfg=cfg, workers=1, progress=True)
    back = Dataset.load(out)
    assert back.classes.classes == ["dent", "scratch", "stain", OK] and back.classes.ok_class == OK
    assert [r.model_dump() for r in back.records] == [r.model_dump() for r in ds.records]
    assert len(back) == 20 and sum(back.counts().values()) == 20
    assert back.rejects == []
    for i, r in enumerate(back.records):
        assert r.id == f"sim-{i:06d}"
        assert (r.image, r.mask) == (f"images/{r.id}.png", f"masks/{r.id}.png")
        assert r.source == "simulated" and (r.width, r.height) == (64, 64)
        assert (r.origin.kind, r.origin.name, r.origin.version, r.origin.seed) == (
            "generator", "line-simulator", SIMULATOR_VERSION, 9)
        pixels, sha = read_image(back.path(r.image))
        assert sha == r.sha256
        part = render_part(cfg, 9, i)  # any image can be re-rendered alone
        assert part.label == r.label
        assert np.array_equal(pixels, part.image)
        assert np.array_equal(read_mask(back.path(r.mask)), part.mask > 0)
        assert part.mask.any() == (r.label != OK)


def test_classes_file_lists_only_the_configured_defects(tmp_path: Path) -> None:
    """A set of scratches has the classes scratch and OK: no class without a single image (training on the
    set would fail)."""
    out = tmp_path / "scratches"
    simulate_dataset(out, n=12, seed=0, cfg=SimulatorConfig(size=64, defects=["scratch"]), workers=1,
                     progress=False)
    assert yaml.safe_load((out / CLASSES_FILE).read_text())["classes"] == ["scratch", OK]
    ds = Dataset.load(out)
    assert set(ds.counts()) == {"scratch", OK} and all(ds.counts().values())


def test_worker_count_does_not_change_the_output(tmp_path: Path) -> None:
    cfg = SimulatorConfig(size=64, channels=3)
    simulate_dataset(tmp_path / "one", n=40, seed=5, cfg=cfg, workers=1, progress=False)
    simulate_dataset(tmp_path / "two", n=40, seed=5, cfg=cfg, workers=2, progress=False)
    one, two = (tmp_path / "one" / MANIFEST_FILE).read_bytes(), (tmp_path / "two" / MANIFEST_FILE).read_bytes()
    assert one == two
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (tmp_path / "one" / sub).iterdir())
        assert len(names) == 40
        assert names == sorted(p.name for p in (tmp_path / "two" / sub).iterdir())
        for name in names:
            assert (tmp_path / "one" / sub / name).read_bytes() == (tmp_path / "two" / sub / name).read_bytes()


def test_refuses_to_overwrite_a_data_set(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    simulate_dataset(out, n=2, seed=0, cfg=SimulatorConfig(size=64), workers=1, progress=False)
    before = (out / MANIFEST_FILE).read_bytes()
    with pytest.raises(DatasetError, match=str(out)):
        simulate_dataset(out, n=3, seed=1, cfg=SimulatorConfig(size=64), workers=1, progress=False)
    assert (out / MANIFEST_FILE).read_bytes() == before
    other = tmp_path / "manifest-only"
    other.mkdir()
    (other / MANIFEST_FILE).write_text("")
    with pytest.raises(DatasetError, match="manifest-only"):
        simulate_dataset(other, n=1, workers=1, progress=False)


def test_simulate_command(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(simulate)
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["--n", "6", "--out", str(out), "--size", "64", "--channels", "3",
                                   "--ok-fraction", "0.5", "--workers", "1", "--seed", "2", "--json", "-q"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output.strip().splitlines()[-1])
    assert rep["images"] == 6 and rep["size"] == 64 and rep["channels"] == 3 and rep["seed"] == 2
    assert sum(rep["classes"].values()) == 6 and Dataset.load(out).records[0].width == 64
