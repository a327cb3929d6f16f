"""The compositor: exact masks under alpha and Poisson blending, placement in the product region, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lineguard.config import ConfigError, load_config
from lineguard.synth.compose import ComposeConfig, CompositeError, Compositor
from lineguard.synth.patches import Patch

SIZE = 96
STILL = {"augment": False, "rotate": 0.0, "patch_flip_p": 0.0}  # geometry of the paste only, no augmentation
NO_MOVE = {"hflip_p": 0.0, "vflip_p": 0.0, "affine_p": 0.0}  # augmentation without geometry


def _disc_patch(value: int = 255, label: str = "scratch", size: int = 32, around: int = -1) -> Patch:
    """A disc of ``value`` (mask: the disc) on ``around`` (default: the same value)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 4, 255, -1)
    image = np.full((size, size), value if around < 0 else around, np.uint8)
    image[mask > 0] = value
    return Patch(image, mask, label)


def _texture(seed: int = 0, shape: tuple = (SIZE, SIZE)) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 140, shape, dtype=np.uint8)


def test_alpha_without_feather_puts_the_patch_exactly_where_the_mask_is() -> None:
    comp = Compositor(ComposeConfig(blend="alpha", feather=0.0, **STILL))
    bg = comp.prepare(np.zeros((SIZE, SIZE), np.uint8))
    for i in range(20):
        out = comp.composite(bg, _disc_patch(), np.random.default_rng([0, i]))
        assert out.mask.dtype == np.uint8 and set(np.unique(out.mask)) == {0, 255}
        assert np.array_equal(out.image, out.mask), f"draw {i}: pixels changed outside the mask or kept inside"


def test_alpha_feather_only_touches_a_halo_around_the_mask() -> None:
    comp = Compositor(ComposeConfig(blend="alpha", feather=0.06, **STILL))
    tex = _texture()
    out = comp.composite(comp.prepare(tex), _disc_patch(), np.random.default_rng(1))
    m = out.mask > 0
    assert (out.image[m] == 255).all()  # the defect itself is the patch
    halo = cv2.dilate(out.mask, np.ones((15, 15), np.uint8)) > 0
    assert np.array_equal(out.image[~halo], tex[~halo])
    assert not np.array_equal(out.image[halo & ~m], tex[halo & ~m])  # feathered edge


@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_poisson_keeps_the_mask_of_the_geometry_and_changes_only_the_clone_region(mode: str) -> None:
    tex = _texture(2)
    alpha = Compositor(ComposeConfig(blend="alpha", **STILL))
    poisson = Compositor(ComposeConfig(blend="poisson", poisson_mode=mode, **STILL))
    for i in range(10):
        patch = _disc_patch(230, around=100)
        a = alpha.composite(alpha.prepare(tex), patch, np.random.default_rng([3, i]))
        p = poisson.composite(poisson.prepare(tex), patch, np.random.default_rng([3, i]))
        assert np.array_equal(a.mask, p.mask)  # the blend never moves the label
        m = p.mask > 0
        grow = max(1, round(0.15 * 0.3 * SIZE)) + 4 + 1  # the clone region, + 1 px of rounding
        far = cv2.dilate(p.mask, np.ones((2 * grow + 1,) * 2, np.uint8)) == 0
        assert np.array_equal(p.image[far], tex[far])
        if mode == "normal":  # the bright disc shows (a mixed clone keeps the stronger texture gradients)
            assert p.image[m].astype(float).mean() > tex[m].astype(float).mean() + 20


@pytest.mark.parametrize("blend", ["alpha", "poisson"])
def test_rgb_background_takes_a_gray_patch(blend: str) -> None:
    comp = Compositor(ComposeConfig(blend=blend))
    rgb = np.dstack([_texture(0), _texture(1), _texture(2)])
    out = comp.composite(comp.prepare(rgb), _disc_patch(), np.random.default_rng(0))
    assert out.image.shape == (SIZE, SIZE, 3) and out.mask.shape == (SIZE, SIZE) and out.mask.any()


def test_mask_is_never_empty_and_lies_inside_the_margin_region() -> None:
    comp = Compositor(ComposeConfig(margin=0.1, scale=(0.1, 0.5), **NO_MOVE))
    bg = comp.prepare(_texture())
    b = comp.border(bg.image.shape)
    assert b == round(0.1 * SIZE)
    for i in range(40):
        out = comp.composite(bg, _disc_patch(label="dent"), np.random.default_rng([9, i]))
        ys, xs = np.nonzero(out.mask)
        assert len(ys) and set(np.unique(out.mask)) == {0, 255}
        assert ys.min() >= b and xs.min() >= b and ys.max() < SIZE - b and xs.max() < SIZE - b


def test_otsu_region_keeps_defects_on_the_product() -> None:
    img = np.full((SIZE, SIZE), 20, np.uint8)
    img[10:80, 30:90] = 180  # a bright product on a dark belt
    comp = Compositor(ComposeConfig(region="otsu", margin=0.03, scale=(0.1, 0.25), **NO_MOVE))
    bg = comp.prepare(img)
    assert bg.region[40, 60] and not bg.region[40, 10] and not bg.region[90, 60]
    for i in range(30):
        out = comp.composite(bg, _disc_patch(60), np.random.default_rng([4, i]))
        assert out.mask.any() and bg.region[out.mask > 0].all()
    dark = Compositor(ComposeConfig(region="otsu", region_dark=True, min_region=0.6))
    with pytest.raises(CompositeError, match=r"covers .* under min_region"):
        dark.prepare(img)


def test_an_image_is_a_pure_function_of_its_seed() -> None:
    cfg = ComposeConfig(blend="poisson")
    patch = _disc_patch(200)
    runs = []
    for _ in range(2):
        comp = Compositor(cfg)  # a fresh compositor: no state carried between images
        bg = comp.prepare(_texture())
        runs.append([comp.composite(bg, patch, np.random.default_rng([7, i])) for i in range(4)])
    for a, b in zip(*runs):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(runs[0][0].image, runs[0][1].image)


def test_class_scale_sets_the_defect_size() -> None:
    cfg = ComposeConfig(scale=(0.1, 0.1), class_scale={"big": (0.5, 0.5)}, tries=40, **STILL)
    comp = Compositor(cfg)
    bg = comp.prepare(_texture())
    for label, want in (("small", 0.1 * SIZE), ("big", 0.5 * SIZE)):
        out = comp.composite(bg, _disc_patch(label=label), np.random.default_rng(0))
        ys, _ = np.nonzero(out.mask)
        assert abs((ys.max() - ys.min() + 1) - want) <= 2


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="did you mean 'blend'"):
        load_config(ComposeConfig, None, {"blnd": "alpha"})
    with pytest.raises(ConfigError, match="scale"):
        load_config(ComposeConfig, None, {"scale": (0.3, 0.1)})
    with pytest.raises(ConfigError, match="larger than the image"):
        load_config(ComposeConfig, None, {"class_scale": {"dent": (0.5, 1.5)}})


def test_a_defect_that_cannot_fit_is_an_error() -> None:
    comp = Compositor(ComposeConfig(region="otsu", min_region=0.01, scale=(1.0, 1.0), tries=2))
    img = np.full((SIZE, SIZE), 20, np.uint8)
    img[30:66, 30:66] = 200
    with pytest.raises(CompositeError, match="no placement of a 'scratch' defect"):
        comp.composite(comp.prepare(img), _disc_patch(), np.random.default_rng(0))
