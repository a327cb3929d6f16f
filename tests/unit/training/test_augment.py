"""Training augmentation: image and mask stay aligned, a defect is never moved out, draws depend on their key
only, bad ranges are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.data.format import ClassFile, Dataset, Origin, Record
from lineguard.data.imaging import read_image, resize_mask, sha256_bytes, write_png
from lineguard.data.preprocess import Preprocess
from lineguard.training.augment import AugmentConfig, augment_item, build_transform
from lineguard.training.dataset import DefectDataset


def _square_dataset(root: Path, n: int = 6, size: int = 120) -> Dataset:
    """Bright squares (with texture) on a dark textured field; the mask is the square."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    recs = []
    origin = Origin(kind="generator", name="test", version="1")
    for i in range(n):
        img = rng.integers(20, 60, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        s = int(rng.integers(20, 40))
        y, x = (int(v) for v in rng.integers(10, size - s - 10, 2))
        img[y:y + s, x:x + s] = rng.integers(190, 230, (s, s), dtype=np.uint8)
        mask[y:y + s, x:x + s] = 255
        data = write_png(root / "images" / f"{i}.png", img)
        write_png(root / "masks" / f"{i}.png", mask)
        recs.append(Record(id=f"sq-{i}", image=f"images/{i}.png", mask=f"masks/{i}.png", label="defect",
                           source="synthetic", origin=origin, sha256=sha256_bytes(data), width=size, height=size))
    ds = Dataset(root, ClassFile(classes=["defect", "ok"], ok_class="ok"), recs)
    ds.save()
    return ds


def test_image_and_mask_stay_aligned(tmp_path: Path) -> None:
    ds = _square_dataset(tmp_path / "sq")
    strong = AugmentConfig(affine_p=1.0, rotate=30, shift=0.1, scale=(0.8, 1.2), crop_p=1.0, crop_scale=(0.7, 1.0),
                           rot90_p=0.5)
    pre = Preprocess(size=(96, 80), channels=1)
    data = DefectDataset(ds, ds.records, pre, strong, seed=0)
    ious = []
    for epoch in range(4):
        for i in range(len(data)):
            image, mask = data.pixels(i, epoch=epoch)
            bright, m = image > 120, mask > 0
            assert m.any()
            ious.append((bright & m).sum() / (bright | m).sum())
    assert min(ious) > 0.8, min(ious)
    # The same Compose brings full-size inputs to the input size itself, image and mask alike.
    img, _ = read_image(ds.path(ds.records[0].image))
    m = read_image(ds.path(ds.records[0].mask))[0] // 255
    out = build_transform(AugmentConfig(enabled=False), pre)(image=img, mask=m)
    assert np.array_equal(out["image"], pre.resize(img)) and np.array_equal(out["mask"], resize_mask(m, pre.size))


def test_defect_is_never_moved_out(tmp_path: Path) -> None:
    """A draw that loses the whole defect is redrawn (then left plain): a defect image keeps its defect."""
    root = tmp_path / "corner"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = np.full((64, 64), 40, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    img[1:4, 1:4], mask[1:4, 1:4] = 220, 255
    data = write_png(root / "images" / "0.png", img)
    write_png(root / "masks" / "0.png", mask)
    rec = Record(id="corner", image="images/0.png", mask="masks/0.png", label="defect", source="synthetic",
                 origin=Origin(kind="generator", name="test", version="1"), sha256=sha256_bytes(data),
                 width=64, height=64)
    ds = Dataset(root, ClassFile(classes=["defect", "ok"], ok_class="ok"), [rec])
    harsh = AugmentConfig(affine_p=1.0, shift=0.3, scale=(1.5, 2.0), crop_p=1.0, crop_scale=(0.2, 0.3))
    data_set = DefectDataset(ds, [rec], Preprocess(size=(64, 64)), harsh)
    assert all(data_set.pixels(0, epoch=e)[1].any() for e in range(30))


def test_draws_depend_on_their_key_only() -> None:
    pre = Preprocess(size=(48, 48))
    image = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[20:30, 20:30] = 1
    t, other = build_transform(AugmentConfig(), pre), build_transform(AugmentConfig(), pre)
    first = augment_item(t, image, mask, (1, 2, 3))
    augment_item(t, image, mask, (9, 9, 9))  # another item in between changes nothing
    again = augment_item(other, image, mask, (1, 2, 3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], augment_item(t, image, mask, (1, 3, 3))[0])
    img_only, no_mask = augment_item(t, image, None, (1, 2, 3))
    assert no_mask is None and img_only.shape == image.shape
    with pytest.raises(ValueError, match="must be >= 0"):
        augment_item(t, image, mask, (1, -1, 3))


@pytest.mark.parametrize("bad", [{"scale": (1.2, 0.9)}, {"gamma": (0.0, 1.0)}, {"crop_scale": (0.5, 1.5)},
                                 {"noise_std": (0.1, 0.6)}, {"hflip_p": 1.5}])
def test_bad_ranges_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**bad)
