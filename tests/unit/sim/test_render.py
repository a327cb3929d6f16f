"""The line simulator's parts: determinism, masks, class balance, config, the virtual-camera API."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from lineguard.sim import DEFECTS, OK, SURFACES, Part, SimulatorConfig, render_part, render_with_reference
from lineguard.sim.defects import MAKERS, ScratchShape
from lineguard.sim.maps import magnitude
from lineguard.sim.scene import MATERIALS


def test_render_is_deterministic_by_seed_and_index() -> None:
    cfg = SimulatorConfig(size=96, ok_fraction=0.0)
    part = render_part(cfg, 3, 5)
    again = render_part(cfg, 3, 5)
    assert isinstance(part, Part) and part.label == again.label
    assert np.array_equal(part.image, again.image) and np.array_equal(part.mask, again.mask)
    assert not np.array_equal(render_part(cfg, 4, 5).image, part.image)  # another seed
    assert not np.array_equal(render_part(cfg, 3, 6).image, part.image)  # another index
    # the reference render is the same part: same image, mask and label
    ref, _ = render_with_reference(cfg, 3, 5)
    assert np.array_equal(ref.image, part.image) and np.array_equal(ref.mask, part.mask) and ref.label == part.label


def test_render_does_not_depend_on_the_heap() -> None:
    """A part is a function of (config, seed, index) alone, whatever memory the process has handed out before
    (OpenCV's magnitude rounds differently with its output's alignment)."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-50, 50, (2, 64, 64)).astype(np.float32)
    junk, outs = [], []
    for size in range(16, 600, 16):  # kept alive: each array starts somewhere else
        junk.append(np.empty(size, np.uint8))
        outs.append(magnitude(x, y))
    assert len({o.tobytes() for o in outs}) == 1
    assert np.allclose(outs[0], np.hypot(x, y), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_gray_and_rgb_shapes(channels: int) -> None:
    part = render_part(SimulatorConfig(size=80, channels=channels, ok_fraction=0.0), 0, 0)
    assert part.image.dtype == np.uint8 and part.mask.dtype == np.uint8
    assert part.image.shape == ((80, 80) if channels == 1 else (80, 80, 3))
    assert part.mask.shape == (80, 80)
    assert set(np.unique(part.mask)) <= {0, 255}
    if channels == 3:  # really colour: the channels are not all equal
        img = part.image
        assert not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


@pytest.mark.parametrize("channels", [1, 3])
def test_defect_masks_cover_a_visible_change(channels: int) -> None:
    cfg = SimulatorConfig(size=128, channels=channels, ok_fraction=0.0)
    seen = Counter()
    for i in range(45):
        part, clean = render_with_reference(cfg, 11, i)
        seen[part.label] += 1
        m = part.mask > 0
        assert m.any(), f"image {i} ({part.label}): empty mask"
        assert m.mean() < 0.15, f"image {i} ({part.label}): defect covers {m.mean():.0%} of the image"
        diff = np.abs(part.image.astype(np.int16) - clean.astype(np.int16))
        if diff.ndim == 3:
            diff = diff.max(axis=2)
        # the defect is visible where the mask says, and nowhere else
        assert diff[m].max() >= 5, f"image {i} ({part.label}): peak change {diff[m].max()}"
        assert diff[m].mean() > 1.5, f"image {i} ({part.label}): mean change {diff[m].mean():.2f}"
        assert not diff[~m].any(), f"image {i} ({part.label}): changed pixels outside the mask"
    assert set(seen) == {"dent", "scratch", "stain"}


def test_ok_parts_have_empty_masks() -> None:
    cfg = SimulatorConfig(size=96, ok_fraction=1.0)
    for i in range(12):
        part, clean = render_with_reference(cfg, 2, i)
        assert part.label == OK
        assert not part.mask.any()
        assert np.array_equal(part.image, clean)


@pytest.mark.parametrize("ok_fraction", [0.5, 0.2])
def test_class_frequencies_follow_ok_fraction(ok_fraction: float) -> None:
    cfg = SimulatorConfig(size=64, ok_fraction=ok_fraction)
    n = 240
    counts = Counter(render_part(cfg, 7, i).label for i in range(n))
    assert set(counts) <= set(cfg.classes)
    # binomial standard deviation is <= 0.033 at n=240: allow ~3 of them
    assert abs(counts[OK] / n - ok_fraction) < 0.1, counts
    for c in ("dent", "scratch", "stain"):
        assert abs(counts[c] / n - (1 - ok_fraction) / 3) < 0.1, counts


def test_defect_subset_and_surfaces() -> None:
    cfg = SimulatorConfig(size=64, ok_fraction=0.25, defects=["scratch"], surfaces=["glass"])
    labels = {render_part(cfg, 0, i).label for i in range(30)}
    assert labels == {"scratch", OK}


def _extent(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_scratch_shape_sets_length_and_direction() -> None:
    """Long scratches kept within 10 degrees of horizontal run wide and flat; the default ones do not (the
    wide-part benchmark's set); the default draws are unchanged by the option's existence."""
    size, n = 192, 12
    long_flat = SimulatorConfig(size=size, ok_fraction=0.0, defects=["scratch"], surfaces=["anodized"],
                                scratch=ScratchShape(length=(0.6, 0.9), angle=10))
    default = SimulatorConfig(size=size, ok_fraction=0.0, defects=["scratch"], surfaces=["anodized"])
    wide = [_extent(render_part(long_flat, 0, i).mask) for i in range(n)]
    plain = [_extent(render_part(default, 0, i).mask) for i in range(n)]
    assert all(w > 3 * h for w, h in wide), wide  # tan(10 deg) ~ 0.18: flat wherever they run
    assert np.median([w for w, _ in wide]) > 0.35 * size, wide  # most keep most of their length on the face
    assert 1.5 * np.median([w for w, _ in plain]) < np.median([w for w, _ in wide]), plain
    assert sum(w <= 3 * h for w, h in plain) >= 2, plain  # any direction: some run steeply
    same = render_part(SimulatorConfig(size=size, ok_fraction=0.0, scratch=ScratchShape()), 0, 1)
    assert np.array_equal(same.image, render_part(SimulatorConfig(size=size, ok_fraction=0.0), 0, 1).image)


@pytest.mark.parametrize("bad", [{"length": (0.5, 0.2)}, {"length": (0.0, 0.3)}, {"angle": 120}])
def test_scratch_shape_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SimulatorConfig(scratch=bad)


def test_classes_are_the_configured_defects_and_ok() -> None:
    assert SimulatorConfig().classes == ["dent", "scratch", "stain", OK]
    assert SimulatorConfig(defects=["stain", "dent"]).classes == ["dent", "stain", OK]
    assert SimulatorConfig(defects=["scratch"]).classes == ["scratch", OK]


def test_the_config_vocabulary_is_the_registries() -> None:
    assert DEFECTS == tuple(MAKERS) == ("scratch", "stain", "dent")
    assert SURFACES == tuple(MATERIALS) == ("brushed", "anodized", "glass")


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
