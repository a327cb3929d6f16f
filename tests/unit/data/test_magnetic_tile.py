"""The magnetic-tile importer on the real data set, and on a small copy with broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lineguard.data.format import Dataset
from lineguard.data.imaging import read_image, read_mask, write_png
from lineguard.data.importers import import_dataset

pytestmark = pytest.mark.real_data

EXPECTED = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103, "Free": 952}


def test_real_import_counts(real_dataset) -> None:
    out, rep = real_dataset
    assert rep.format == "magnetic-tile"
    assert rep.images == 1344
    assert rep.classes == EXPECTED
    assert list(rep.classes) == list(EXPECTED)  # defect classes sorted, OK class last
    assert rep.ok_class == "Free"
    assert rep.rejected == 0
    ds = Dataset.load(out)
    assert len(ds) == 1344 and ds.classes.ok_class == "Free"
    assert all(r.source == "real" and r.origin.name == "magnetic-tile" for r in ds.records)
    # four Uneven masks are all black: kept as images, reported, their masks not used
    empty = [w for w in rep.warnings if "empty" in w.reason]
    assert len(empty) == 4
    assert sum(r.mask is None for r in ds.records) == 4


def test_real_masks_align(real_dataset) -> None:
    out, _ = real_dataset
    ds = Dataset.load(out)
    rng = np.random.default_rng(0)
    defects = [r for r in ds.records if r.label != "Free" and r.mask]
    for i in rng.permutation(len(defects))[:40]:
        r = defects[int(i)]
        img, sha = read_image(ds.path(r.image))
        mask = read_mask(ds.path(r.mask))
        assert sha == r.sha256
        assert img.shape == mask.shape == (r.height, r.width)
        assert mask.any(), r.id
        assert Path(r.mask).stem == Path(r.image).stem
    ok = [r for r in ds.records if r.label == "Free"]
    assert not read_mask(ds.path(ok[0].mask)).any()


def _small_copy(real_data: Path, root: Path) -> Path:
    for cls in ("Crack", "Free"):
        d = root / f"MT_{cls}" / "Imgs"
        d.mkdir(parents=True)
        for jpg in sorted((real_data / f"MT_{cls}" / "Imgs").glob("*.jpg"))[:3]:
            shutil.copy(jpg, d / jpg.name)
            shutil.copy(jpg.with_suffix(".png"), d / jpg.with_suffix(".png").name)
    return root


def test_broken_files_rejected_with_reasons(real_data: Path, tmp_path: Path) -> None:
    src = _small_copy(real_data, tmp_path / "src")
    crack = sorted((src / "MT_Crack" / "Imgs").glob("*.jpg"))
    data = crack[0].read_bytes()
    crack[0].write_bytes(data[: len(data) // 2])  # truncated JPEG
    mask = read_mask(crack[1].with_suffix(".png"))  # a mask of the wrong size

    write_png(crack[1].with_suffix(".png"), (mask[:-5] * 255).astype(np.uint8))
    dup = src / "MT_Free" / "Imgs" / "copy.jpg"
    shutil.copy(sorted((src / "MT_Free" / "Imgs").glob("*.jpg"))[0], dup)
    (src / "MT_Fray" / "Imgs").mkdir(parents=True)  # an empty class folder

    rep = import_dataset(src, tmp_path / "out", progress=False)
    reasons = {Path(r.path).name: r.reason for r in rep.rejects}
    assert "truncated" in reasons[crack[0].name]
    assert "mask is" in reasons[crack[1].with_suffix(".png").name]
    assert sum("duplicate of" in reason for reason in reasons.values()) == 1
    assert "empty class folder" in reasons["MT_Fray"]
    assert rep.rejected == 4
    assert rep.images == 6 - 2 + 0  # 3 Crack + 3 Free + copy, minus truncated, wrong mask, duplicate
    stored = [r.path for r in Dataset.load(tmp_path / "out").rejects]
    assert stored == [r.path for r in rep.rejects]
