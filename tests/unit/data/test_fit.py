"""``Preprocess.fit``: stretch (the default) and pad (keep the aspect ratio): where the image, its mask and a model
map land, by hand-worked geometry."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.data.preprocess import Preprocess


def test_stretch_is_the_default_and_ignores_the_aspect_ratio() -> None:
    pre = Preprocess(size=(96, 224))
    assert pre.fit == "stretch" and pre.placement((250, 100)) == (0, 0, 96, 224)
    assert pre.resize(np.zeros((250, 100), np.uint8)).shape == (96, 224)


def test_pad_keeps_the_aspect_ratio_and_centres_the_image() -> None:
    pre = Preprocess(size=(96, 224), fit="pad", mean=[0.5], std=[0.25])
    # a wide part 100 x 250: scale min(96/100, 224/250) = 0.896 -> 90 x 224, 3 rows of padding above
    assert pre.placement((100, 250)) == (3, 0, 90, 224)
    # a tall part 250 x 100: scale min(96/250, 224/100) = 0.384 -> 96 x 38, 93 columns of padding left
    assert pre.placement((250, 100)) == (0, 93, 96, 38)
    img = np.full((250, 100), 200, np.uint8)
    out = pre.resize(img)
    assert out.shape == (96, 224) and pre.pad_value == [128]
    assert (out[:, 93:131] == 200).all() and (out[:, :93] == 128).all() and (out[:, 131:] == 128).all()
    assert np.abs(pre.normalize(out)[0, :, :93]).max() < 0.01  # the padding normalises to ~0
    rgb = Preprocess(size=(64, 64), channels=3, fit="pad", mean=[0.2, 0.4, 0.6], std=[0.2] * 3)
    assert rgb.resize(np.zeros((32, 64, 3), np.uint8))[0, 0].tolist() == [51, 102, 153]


def test_the_mask_goes_where_its_image_goes() -> None:
    pre = Preprocess(size=(96, 224), fit="pad")
    img = np.zeros((250, 100), np.uint8)
    mask = np.zeros((250, 100), bool)
    img[100:150, 20:40] = 255  # a defect and its mask, in the same place
    mask[100:150, 20:40] = True
    px, m = pre.resize(img) > 191, pre.resize_mask(mask)  # (the padding is the mean: 128)
    assert m.dtype == bool and m.shape == (96, 224) and m.sum() > 0
    assert (px & m).sum() / (px | m).sum() > 0.8
    assert not m[:, :93].any()  # nothing in the padding


def test_unfit_crops_a_model_map_to_the_image() -> None:
    pre = Preprocess(size=(96, 224), fit="pad")
    heat = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)  # a stride-32 map of the 96 x 224 input
    # the tall part covers columns 93..131 of 224: map columns 93*7//224 = 2 .. ceil(131*7/224) = 5
    assert np.array_equal(pre.unfit(heat, (250, 100)), heat[:, 2:5])
    assert pre.unfit(heat, (96, 224)) is heat  # an image of the input's shape: no padding
    assert Preprocess(size=(96, 224)).unfit(heat, (250, 100)) is heat  # stretch: the map covers the image


@pytest.mark.parametrize("fit", ["stretch", "pad"])
def test_an_image_of_the_input_size_is_unchanged(fit: str) -> None:
    img = np.random.default_rng(0).integers(0, 256, (96, 224), dtype=np.uint8)
    assert np.array_equal(Preprocess(size=(96, 224), fit=fit).resize(img), img)
