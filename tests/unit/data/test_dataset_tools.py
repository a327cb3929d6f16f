"""validate, stats and preview on a small hand-made data set, including broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.data.format import ClassFile, Dataset, DatasetError, Origin, Record
from lineguard.data.imaging import read_image, sha256_bytes, write_png
from lineguard.data.preview import preview_dataset
from lineguard.data.stats import dataset_stats
from lineguard.data.validate import validate_dataset

ORIGIN = Origin(kind="generator", name="test", version="1", seed=0)


@pytest.fixture()
def tiny(tmp_path: Path) -> Dataset:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        label = ["spot", "ok"][i % 2]
        img = rng.integers(60, 120, (40, 48), dtype=np.uint8)
        mask = np.zeros_like(img)
        if label == "spot":
            img[10:20, 10:20] = 250
            mask[10:20, 10:20] = 255
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        data = write_png(tmp_path / f"images/{i}.png", img)
        write_png(tmp_path / f"masks/{i}.png", mask)
        recs.append(Record(id=str(i), image=f"images/{i}.png", label=label, mask=f"masks/{i}.png",
                           source="synthetic", origin=ORIGIN, sha256=sha256_bytes(data), width=48, height=40))
    ds = Dataset(tmp_path, ClassFile(classes=["spot", "ok"], ok_class="ok"), recs)
    ds.save()
    return ds


def test_roundtrip(tiny: Dataset) -> None:
    back = Dataset.load(tiny.root)
    assert back.records == tiny.records and back.classes == tiny.classes
    assert back.counts() == {"spot": 6, "ok": 6}


def test_validate_clean_then_broken(tiny: Dataset) -> None:
    rep = validate_dataset(tiny.root, progress=False)
    assert rep.valid and rep.images == 12 and rep.masks == 12 and not rep.errors
    root = tiny.root
    (root / "images/0.png").write_bytes((root / "images/0.png").read_bytes()[:100])  # truncated
    (root / "images/2.png").unlink()  # missing
    write_png(root / "masks/4.png", np.zeros((5, 5), np.uint8))  # wrong size
    write_png(root / "images/6.png", np.zeros((40, 48), np.uint8))  # changed content
    rep = validate_dataset(root, progress=False)
    assert not rep.valid
    reasons = {Path(e.path).relative_to(root).as_posix(): e.reason for e in rep.errors}
    assert "truncated" in reasons["images/0.png"]
    assert "cannot read" in reasons["images/2.png"]
    assert "mask is 5x5" in reasons["masks/4.png"]
    assert "sha256" in reasons["images/6.png"]
    assert len(rep.errors) == 4


def test_manifest_errors_name_the_line(tiny: Dataset) -> None:
    path = tiny.root / "manifest.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"width":48', '"width":-1')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"manifest.jsonl:4: width"):
        Dataset.load(tiny.root)
    (tiny.root / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match="not a lineguard data set"):
        Dataset.load(tiny.root)


def test_class_file_rejects_unknown_ok_class() -> None:
    with pytest.raises(ValueError, match="ok_class 'good'"):
        ClassFile(classes=["a", "ok"], ok_class="good")


def test_stats(tiny: Dataset) -> None:
    st = dataset_stats(tiny.root, sample=12)
    assert st.images == 12 and st.classes == {"spot": 6, "ok": 6} and st.masks == {"spot": 6, "ok": 6}
    assert st.splits == {"none": {"spot": 6, "ok": 6}}
    assert st.sources == {"synthetic": 12} and st.width["max"] == 48 and st.height["min"] == 40
    pixels = np.stack([read_image(tiny.path(r.image))[0] for r in tiny.records]).astype(float) / 255
    assert st.pixel_mean == pytest.approx(pixels.mean(), abs=1e-4)
    assert st.pixel_std == pytest.approx(pixels.std(), abs=1e-4)


def test_preview_draws_masks(tiny: Dataset, tmp_path: Path) -> None:
    files = preview_dataset(tiny.root, tmp_path / "prev" / "grid.png", per_class=3, tile=48)
    assert set(files) == {"spot", "ok", "overview"}
    overview = read_image(files["overview"])[0]
    assert overview.shape[0] == 2 * (48 + 8)  # one band per class
    spot, ok = (read_image(files[c])[0] for c in ("spot", "ok"))
    red = lambda im: ((im[..., 0] > 200) & (im[..., 1] < 120)).sum()  # noqa: E731
    assert red(spot) > 50 and red(ok) == 0


def _tall_parts(root: Path, crack_px: int) -> Path:
    """6 tall parts, 1250 x 500, each with a vertical crack ``crack_px`` wide, as a defect-type set."""
    recs = []
    for i in range(6):
        img = np.full((1250, 500), 100, np.uint8)
        mask = np.zeros_like(img)
        mask[200 + 100 * i : 900, 240 : 240 + crack_px] = 255
        img[mask > 0] = 30
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        data = write_png(root / f"images/{i}.png", img)
        write_png(root / f"masks/{i}.png", mask)
        recs.append(Record(id=str(i), image=f"images/{i}.png", label="crack", mask=f"masks/{i}.png",
                           source="real", origin=ORIGIN, sha256=sha256_bytes(data), width=500, height=1250))
    Dataset(root, ClassFile(classes=["crack"]), recs).save()
    return root


def test_stats_suggest_an_input_that_keeps_thin_cracks_on_tall_parts(tmp_path: Path) -> None:
    """Tall parts with 6-px cracks (measured 5.5 px: the inscribed disc less half a pixel): the default 224 x 224
    makes them 1 px; the advice keeps the 1 : 2.5 aspect ratio, grows the input until they cover 3 px, and warns."""
    a = dataset_stats(_tall_parts(tmp_path / "six", 6)).input
    assert a.defects_measured == 6 and a.defect_px == {"min": 5.5, "p5": 5.5, "median": 5.5} and a.fit == "stretch"
    # 224 x 224 over 1250 x 500: 5.5 * min(224/1250, 224/500) = 0.99 px
    assert a.thinnest_at_default == pytest.approx(5.5 * 224 / 1250)
    # start at 224^2 pixels with the images' ratio: 224 * sqrt(2.5) = 354 -> 352, 224 / sqrt(2.5) = 142 -> 128;
    # there 5.5 * min(352/1250, 128/500) = 1.41 px, so grow 3 / 1.41 = 2.13x: 750 -> 736, 273 -> 288 (multiples of 32)
    assert a.size == (736, 288) and a.thinnest_at_size == pytest.approx(5.5 * 288 / 500)  # 3.17 px
    assert a.warning.endswith("train with --img-size 736x288 --fit stretch")
    # 2-px cracks (1.5 px) would need more than 1024 px: the advice stops there and says so
    b = dataset_stats(_tall_parts(tmp_path / "two", 2)).input
    assert b.size == (1024, 384) and b.thinnest_at_size == pytest.approx(1.5 * 384 / 500)
    assert "even there they are 1.2 px" in b.warning
