"""The procedural line simulator: determinism, masks, class balance, config, data set output."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from lineguard.config import load_config
from lineguard.data.format import CLASSES_FILE, MANIFEST_FILE, Dataset, DatasetError
from lineguard.data.imaging import read_image, read_mask
from lineguard.synth.simulator import (
    CLASSES,
    SIMULATOR_VERSION,
    SimulatorConfig,
    render,
    render_with_reference,
    simulate_dataset,
)


def test_render_is_deterministic_by_seed_and_index() -> None:
    cfg = SimulatorConfig(size=96, ok_fraction=0.0)
    img, mask, label = render(cfg, 3, 5)
    img2, mask2, label2 = render(cfg, 3, 5)
    assert label == label2
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    assert not np.array_equal(render(cfg, 4, 5)[0], img)  # another seed
    assert not np.array_equal(render(cfg, 3, 6)[0], img)  # another index
    # the reference render is the same part: same image, mask and label
    ref = render_with_reference(cfg, 3, 5)
    assert np.array_equal(ref[0], img) and np.array_equal(ref[1], mask) and ref[2] == label


@pytest.mark.parametrize("channels", [1, 3])
def test_gray_and_rgb_shapes(channels: int) -> None:
    cfg = SimulatorConfig(size=80, channels=channels, ok_fraction=0.0)
    img, mask, _ = render(cfg, 0, 0)
    assert img.dtype == np.uint8 and mask.dtype == np.uint8
    assert img.shape == ((80, 80) if channels == 1 else (80, 80, 3))
    assert mask.shape == (80, 80)
    assert set(np.unique(mask)) <= {0, 255}
    if channels == 3:  # really colour: the channels are not all equal
        assert not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


@pytest.mark.parametrize("channels", [1, 3])
def test_defect_masks_cover_a_visible_change(channels: int) -> None:
    cfg = SimulatorConfig(size=128, channels=channels, ok_fraction=0.0)
    seen = Counter()
    for i in range(45):
        img, mask, label, clean = render_with_reference(cfg, 11, i)
        seen[label] += 1
        m = mask > 0
        assert m.any(), f"image {i} ({label}): empty mask"
        assert m.mean() < 0.15, f"image {i} ({label}): defect covers {m.mean():.0%} of the image"
        diff = np.abs(img.astype(np.int16) - clean.astype(np.int16))
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        # the defect is visible where the mask says, and nowhere else
        assert diff[m].max() >= 5, f"image {i} ({label}): peak change {diff[m].max()}"
        assert diff[m].mean() > 1.5, f"image {i} ({label}): mean change {diff[m].mean():.2f}"
        assert not diff[~m].any(), f"image {i} ({label}): changed pixels outside the mask"
    assert set(seen) == {"dent", "scratch", "stain"}


def test_ok_parts_have_empty_masks() -> None:
    cfg = SimulatorConfig(size=96, ok_fraction=1.0)
    for i in range(12):
        img, mask, label, clean = render_with_reference(cfg, 2, i)
        assert label == "ok"
        assert not mask.any()
        assert np.array_equal(img, clean)


@pytest.mark.parametrize("ok_fraction", [0.5, 0.2])
def test_class_frequencies_follow_ok_fraction(ok_fraction: float) -> None:
    cfg = SimulatorConfig(size=64, ok_fraction=ok_fraction)
    n = 240
    counts = Counter(render(cfg, 7, i)[2] for i in range(n))
    assert set(counts) <= set(CLASSES)
    # binomial standard deviation is <= 0.033 at n=240: allow ~3 of them
    assert abs(counts["ok"] / n - ok_fraction) < 0.1, counts
    for c in ("dent", "scratch", "stain"):
        assert abs(counts[c] / n - (1 - ok_fraction) / 3) < 0.1, counts


def test_defect_subset_and_surfaces() -> None:
    cfg = SimulatorConfig(size=64, ok_fraction=0.25, defects=["scratch"], surfaces=["glass"])
    labels = {render(cfg, 0, i)[2] for i in range(30)}
    assert labels == {"scratch", "ok"}


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="unknown defect"):
        SimulatorConfig(defects=["scratch", "crack"])
    with pytest.raises(ValidationError, match="unknown surface"):
        SimulatorConfig(surfaces=["wood"])
    with pytest.raises(ValidationError, match="non-empty"):
        SimulatorConfig(defects=[])
    with pytest.raises(ValidationError):
        SimulatorConfig(colour=3)  # unknown key
    with pytest.raises(ValidationError):
        SimulatorConfig(channels=2)
    with pytest.raises(ValidationError):
        SimulatorConfig(size=32)
    with pytest.raises(ValidationError):
        SimulatorConfig(ok_fraction=1.5)


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
    assert back.classes.classes == CLASSES and back.classes.ok_class == "ok"
    assert [r.model_dump() for r in back.records] == [r.model_dump() for r in ds.records]
    assert len(back) == 20 and sum(back.counts().values()) == 20
    assert back.rejects == []
    assert yaml.safe_load((out / CLASSES_FILE).read_text())["classes"] == CLASSES
    for i, r in enumerate(back.records):
        assert r.id == f"sim-{i:06d}"
        assert (r.image, r.mask) == (f"images/{r.id}.png", f"masks/{r.id}.png")
        assert r.source == "simulated" and (r.width, r.height) == (64, 64)
        assert (r.origin.kind, r.origin.name, r.origin.version, r.origin.seed) == (
            "generator", "line-simulator", SIMULATOR_VERSION, 9)
        pixels, sha = read_image(back.path(r.image))
        assert sha == r.sha256
        img, mask, label = render(cfg, 9, i)  # any image can be re-rendered alone
        assert label == r.label
        assert np.array_equal(pixels, img)
        assert np.array_equal(read_mask(back.path(r.mask)), mask > 0)
        assert mask.any() == (r.label != "ok")


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


@pytest.mark.slow
def test_speed(tmp_path: Path) -> None:
    simulate_dataset(tmp_path / "warm", n=8, workers=2, progress=False)  # start the worker server
    t = time.perf_counter()
    simulate_dataset(tmp_path / "ds", n=200, seed=0, cfg=SimulatorConfig(size=256), workers=2, progress=False)
    rate = 200 / (time.perf_counter() - t)
    assert rate > 100, f"{rate:.0f} images/s"
