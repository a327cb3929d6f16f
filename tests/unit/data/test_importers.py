"""The VOC, YOLO, image-folder and MVTec importers on small generated layouts, good and broken."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pytest

from lineguard.data.format import Dataset, DatasetError
from lineguard.data.imaging import read_image, read_mask
from lineguard.data.importers import IMPORTERS, detect_format, import_dataset
from lineguard.data.importers.base import Importer
from lineguard.data.importers.candidates import Candidate, Scan

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- fixture builders

def _noise(h: int = 64, w: int = 64) -> np.ndarray:
    """A colour image nobody else has (random bytes: no accidental duplicates)."""
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _image(path: Path, h: int = 64, w: int = 64) -> Path:
    return _write(path, _noise(h, w))


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _truncated_jpeg(path: Path) -> Path:
    _image(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _voc_xml(filename: str, objects: List[Tuple[str, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>"
            f"<size><width>64</width><height>64</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root: Path) -> Path:
    src = root / "voc"
    ann, img = src / "Annotations", src / "JPEGImages"
    _image(img / "d1.jpg")
    _text(ann / "d1.xml", _voc_xml("d1.jpg", [("scratch", 11, 11, 30, 30)]))  # 1-based: pixels 10..29
    _image(img / "d2.jpg")
    _text(ann / "d2.xml", _voc_xml("d2.jpg", [("dent", 41, 5, 60, 20), ("scratch", 2, 2, 6, 6)]))
    _image(img / "ok1.jpg")
    _text(ann / "ok1.xml", _voc_xml("ok1.jpg", []))
    _text(ann / "gone.xml", _voc_xml("gone.jpg", [("dent", 1, 1, 5, 5)]))  # its image is missing
    _image(img / "bad.jpg")
    _text(ann / "bad.xml", "<annotation><filename>bad.jpg</filename><object><name>dent")  # cut short
    _image(img / "orphan.jpg")  # no XML names it
    return src


def _yolo_yaml(src: Path, text: str) -> None:
    _text(src / "data.yaml", text)


def _yolo_item(src: Path, split: str, name: str, label: Optional[str] = None) -> Path:
    img = _image(src / "images" / split / name)
    if label is not None:
        _text(src / "labels" / split / f"{Path(name).stem}.txt", label)
    return img


def make_yolo_detect(root: Path) -> Path:
    src = root / "yolo"
    _yolo_yaml(src, "train: images/train\nval: images/val\nnames: [scratch, dent]\n")
    _yolo_item(src, "train", "a.jpg", "0 0.5 0.5 0.25 0.25\n")  # pixels 24..39
    _yolo_item(src, "train", "b.png", "")  # verified OK
    _yolo_item(src, "train", "c.png", "1 0.25 0.25 0.2 0.2\n0 0.8 0.8 0.1 0.1\n")  # dent covers more
    _yolo_item(src, "val", "a.png", "1 0.5 0.5 0.5 0.5\n")  # same stem as train/a
    _yolo_item(src, "val", "unknown.png", "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    _yolo_item(src, "val", "malformed.png", "0 0.5 0.5 0.1\n")
    _yolo_item(src, "val", "outside.png", "0 1.5 0.5 0.1 0.1\n")
    _yolo_item(src, "val", "nolabel.png")
    return src


def make_yolo_seg(root: Path) -> Path:
    src = root / "yolo-seg"
    _yolo_yaml(src, "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: crack\n  1: hole\n")
    _yolo_item(src, "train", "tri.png", "0 0.1 0.1 0.9 0.1 0.1 0.9\n")  # upper-left half of 6..58
    _yolo_item(src, "train", "empty.png", "\n")
    _yolo_item(src, "val", "quad.png", "1 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n")
    _yolo_item(src, "val", "odd.png", "0 0.1 0.1 0.9 0.1 0.1\n")  # 5 numbers: neither box nor polygon
    return src


def make_imagefolder(root: Path) -> Path:
    src = root / "folders"
    for i in range(3):
        _image(src / "scratch" / f"{i}.png")
    dent = [_image(src / "dent" / f"{i}.jpg") for i in range(2)]
    for i in range(3):
        _image(src / "good" / f"{i}.png")
    (src / "empty").mkdir()
    _truncated_jpeg(src / "good" / "trunc.jpg")
    _text(src / "good" / "fake.png", "this is not a PNG")
    (src / "scratch" / "copy.jpg").write_bytes(dent[0].read_bytes())  # same bytes, other name
    _text(src / "dent" / "notes.txt", "ignored: not an image suffix")
    _image(src / "stray.png")  # beside the class folders: no class
    return src


def make_mvtec(root: Path) -> Path:
    src = root / "bottle"
    for i in range(2):
        _image(src / "train" / "good" / f"{i:03d}.png", 48, 48)
    _image(src / "test" / "good" / "000.png", 48, 48)
    for i in range(3):
        _image(src / "test" / "crack" / f"{i:03d}.png", 48, 48)
    _image(src / "test" / "hole" / "000.png", 48, 48)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:20, 10:30] = 255
    _write(src / "ground_truth" / "crack" / "000_mask.png", mask)
    _write(src / "ground_truth" / "crack" / "001_mask.png", np.full((16, 16), 255, np.uint8))  # wrong size
    # crack/002 has no mask file
    _write(src / "ground_truth" / "hole" / "000_mask.png", mask)
    return src


BUILDERS: Dict[str, Callable[[Path], Path]] = {
    "voc": make_voc,
    "yolo": make_yolo_detect,
    "imagefolder": make_imagefolder,
    "mvtec": make_mvtec,
}


def _reasons(rep) -> Dict[str, str]:
    return {r.path: r.reason for r in rep.rejects}


def _mask_of(ds: Dataset, rec_id: str) -> np.ndarray:
    rec = next(r for r in ds.records if r.id == rec_id)
    assert rec.mask is not None, rec_id
    mask = read_mask(ds.path(rec.mask))
    assert mask.shape == (rec.height, rec.width)
    return mask


# --------------------------------------------------------------------------- detection

@pytest.mark.parametrize("fmt", [*BUILDERS, "yolo-seg"])
def test_each_layout_detected_by_exactly_one_importer(tmp_path: Path, fmt: str) -> None:
    src = make_yolo_seg(tmp_path) if fmt == "yolo-seg" else BUILDERS[fmt](tmp_path)
    want = "yolo" if fmt == "yolo-seg" else fmt
    assert [n for n, imp in IMPORTERS.items() if imp.detect(src)] == [want]
    assert detect_format(src) == want


def test_unknown_layout_not_detected(tmp_path: Path) -> None:
    _text(tmp_path / "src" / "readme.txt", "no images here")
    with pytest.raises(DatasetError, match="no known layout"):
        detect_format(tmp_path / "src")


# --------------------------------------------------------------------------- VOC

def test_voc_import(tmp_path: Path) -> None:
    src = make_voc(tmp_path)
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.format == "voc"
    assert rep.classes == {"dent": 1, "scratch": 1, "ok": 1}
    assert list(rep.classes) == ["dent", "scratch", "ok"]
    assert rep.ok_class == "ok"
    ds = Dataset.load(tmp_path / "out")
    assert sorted(r.id for r in ds.records) == ["d1", "d2", "ok1"]
    labels = {r.id: r.label for r in ds.records}
    assert labels == {"d1": "scratch", "d2": "dent", "ok1": "ok"}  # d2: the larger box wins

    d1 = next(r for r in ds.records if r.id == "d1")
    assert d1.boxes is not None and len(d1.boxes) == 1
    b = d1.boxes[0]
    assert (b.x0, b.y0, b.x1, b.y1) == (10, 10, 30, 30)  # 1-based inclusive -> 0-based, end exclusive
    mask = _mask_of(ds, "d1")
    assert mask[10, 10] and mask[29, 29] and mask[20, 15]
    assert not mask[9, 9] and not mask[30, 30] and not mask[10, 30] and not mask[50, 50]
    assert mask.sum() == 20 * 20
    m2 = _mask_of(ds, "d2")
    assert m2[10, 50] and m2[3, 3] and not m2[30, 30]
    assert next(r for r in ds.records if r.id == "ok1").mask is None

    reasons = _reasons(rep)
    assert "does not parse" in reasons[str(src / "Annotations" / "bad.xml")]
    assert "image file missing" in reasons[str(src / "Annotations" / "gone.xml")]
    assert "no annotation" in reasons[str(src / "JPEGImages" / "orphan.jpg")]
    assert rep.rejected == 3
    assert [r.path for r in ds.rejects] == [r.path for r in rep.rejects]


def test_voc_ok_class_named_like_an_object_class_is_refused(tmp_path: Path) -> None:
    src = make_voc(tmp_path)
    with pytest.raises(DatasetError, match="--ok-class"):
        import_dataset(src, tmp_path / "out", ok_class="dent", progress=False)
    rep = import_dataset(src, tmp_path / "out", ok_class="clean", progress=False)
    assert rep.ok_class == "clean" and rep.classes["clean"] == 1


def test_ok_class_none_makes_a_defect_type_set(tmp_path: Path) -> None:
    """--ok-class none: no OK class; a VOC image without objects has no label then and is rejected, saying why;
    the same for YOLO; an image folder's classes are all defect classes."""
    rep = import_dataset(make_voc(tmp_path), tmp_path / "voc-set", ok_class="none", progress=False)
    assert rep.ok_class is None and rep.classes == {"dent": 1, "scratch": 1}
    assert "a defect-type set (--ok-class none) has no OK class" in " ".join(_reasons(rep).values())
    ds = Dataset.load(tmp_path / "voc-set")
    assert ds.classes.ok_class is None and ds.classes.ok_index is None and sorted(r.id for r in ds.records) == [
        "d1", "d2"]
    rep = import_dataset(make_yolo_detect(tmp_path), tmp_path / "yolo-set", ok_class="none", progress=False)
    assert rep.ok_class is None and rep.classes == {"scratch": 1, "dent": 2}


# --------------------------------------------------------------------------- YOLO

def test_yolo_detect_import(tmp_path: Path) -> None:
    src = make_yolo_detect(tmp_path)
    rep = import_dataset(src, tmp_path / "out", fmt="auto", progress=False)
    assert rep.format == "yolo"
    assert rep.classes == {"scratch": 1, "dent": 2, "ok": 1}
    assert list(rep.classes) == ["scratch", "dent", "ok"]  # YOLO id order, OK last
    assert rep.ok_class == "ok"
    ds = Dataset.load(tmp_path / "out")
    assert {r.id: r.label for r in ds.records} == {
        "train/a": "scratch", "train/b": "ok", "train/c": "dent", "val/a": "dent"}
    assert all(r.split is None for r in ds.records)  # the YOLO split is not imported

    mask = _mask_of(ds, "train/a")
    assert mask[32, 32] and mask[24, 24] and mask[39, 39]
    assert not mask[23, 23] and not mask[40, 40] and not mask[5, 5]
    assert mask.sum() == 16 * 16
    val_a = _mask_of(ds, "val/a")
    assert val_a[16, 16] and val_a[47, 47] and not val_a[15, 15] and not val_a[48, 48]
    assert next(r for r in ds.records if r.id == "train/b").mask is None

    labels = src / "labels" / "val"
    reasons = _reasons(rep)
    assert "line 2" in reasons[str(labels / "unknown.txt")]
    assert "unknown class id 7" in reasons[str(labels / "unknown.txt")]
    assert "line 1: malformed" in reasons[str(labels / "malformed.txt")]
    assert "outside 0..1" in reasons[str(labels / "outside.txt")]
    assert "no label file" in reasons[str(src / "images" / "val" / "nolabel.png")]
    assert rep.rejected == 4


def test_yolo_seg_polygon_mask(tmp_path: Path) -> None:
    src = make_yolo_seg(tmp_path)
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.format == "yolo"
    assert rep.classes == {"crack": 1, "hole": 1, "ok": 1}
    ds = Dataset.load(tmp_path / "out")
    tri = _mask_of(ds, "train/tri")
    assert tri[12, 12] and tri[8, 50] and tri[50, 8]  # inside the triangle
    assert not tri[51, 51] and not tri[40, 40]  # inside its bounding box, in the empty corner
    assert not tri[2, 2] and not tri[62, 62]
    rec = next(r for r in ds.records if r.id == "train/tri")
    assert rec.label == "crack" and rec.boxes is not None
    assert (rec.boxes[0].x0, rec.boxes[0].x1) == pytest.approx((6.4, 57.6))
    quad = _mask_of(ds, "val/quad")
    assert quad[45, 45] and not quad[20, 20]
    assert next(r for r in ds.records if r.id == "train/empty").label == "ok"
    reason = _reasons(rep)[str(src / "labels" / "val" / "odd.txt")]
    assert "line 1" in reason and "malformed" in reason
    with pytest.raises(DatasetError, match="--ok-class"):  # a labelled class cannot be the OK class
        import_dataset(src, tmp_path / "out2", ok_class="hole", progress=False)


def test_yolo_labels_beside_images_and_dict_path(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    _yolo_yaml(src, "path: sub\ntrain: train\nnames: {0: scratch}\n")
    _image(src / "sub" / "train" / "x.png")
    _text(src / "sub" / "train" / "x.txt", "0 0.5 0.5 0.5 0.5\n")
    _image(src / "sub" / "train" / "y.png")
    _text(src / "sub" / "train" / "y.txt", "")
    rep = import_dataset(src, tmp_path / "out", fmt="yolo", progress=False)
    assert rep.classes == {"scratch": 1, "ok": 1} and rep.rejected == 0
    ds = Dataset.load(tmp_path / "out")
    assert sorted(r.id for r in ds.records) == ["train/x", "train/y"]


def test_yolo_missing_split_folder_is_a_reject(tmp_path: Path) -> None:
    src = tmp_path / "y"
    _yolo_yaml(src, "train: images/train\nval: images/nowhere\nnames: [a]\n")
    _yolo_item(src, "train", "p.png", "0 0.5 0.5 0.2 0.2\n")
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.images == 1
    assert "images/nowhere not found" in _reasons(rep)[str(src / "data.yaml")]


# --------------------------------------------------------------------------- image folders

def test_imagefolder_import(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path)
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.format == "imagefolder"
    assert rep.classes == {"dent": 2, "scratch": 3, "good": 3}
    assert list(rep.classes) == ["dent", "scratch", "good"]  # defects sorted, OK last
    assert rep.ok_class == "good" and rep.masks == 0
    ds = Dataset.load(tmp_path / "out")
    assert len(ds) == 8 and ds.classes.ok_class == "good"
    assert "scratch/0" in {r.id for r in ds.records}
    rec = next(r for r in ds.records if r.id == "dent/1")
    pixels, sha = read_image(ds.path(rec.image))
    assert sha == rec.sha256 and pixels.shape[:2] == (rec.height, rec.width) == (64, 64)

    reasons = _reasons(rep)
    assert "empty class folder" in reasons[str(src / "empty")]
    assert "truncated" in reasons[str(src / "good" / "trunc.jpg")]
    assert "not an image" in reasons[str(src / "good" / "fake.png")]
    dup = reasons[str(src / "scratch" / "copy.jpg")]  # dent/ is read first: the copy is the duplicate
    assert "duplicate of" in dup and str(src / "dent" / "0.jpg") in dup
    assert "outside any class folder" in reasons[str(src / "stray.png")]
    assert rep.rejected == 5


def test_imagefolder_needs_ok_class_when_no_name_says_ok(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("nick", "fine"):
        _image(src / cls / "0.png")
    with pytest.raises(DatasetError, match="--ok-class"):
        import_dataset(src, tmp_path / "out", progress=False)
    rep = import_dataset(src, tmp_path / "out", ok_class="fine", progress=False)
    assert list(rep.classes) == ["nick", "fine"] and rep.ok_class == "fine"


def test_imagefolder_same_stem_two_suffixes_get_two_ids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _image(src / "OK" / "x.jpg")
    _image(src / "OK" / "x.png")
    _image(src / "bad" / "x.png")
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.ok_class == "OK" and rep.rejected == 0
    ids = sorted(r.id for r in Dataset.load(tmp_path / "out").records)
    assert ids == ["OK/x.jpg", "OK/x.png", "bad/x"]


def test_imagefolder_copy_puts_files_inside(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path)
    import_dataset(src, tmp_path / "out", copy=True, progress=False)
    ds = Dataset.load(tmp_path / "out")
    for r in ds.records:
        assert not Path(r.image).is_absolute() and r.image.startswith("images/")
        assert read_image(ds.path(r.image))[1] == r.sha256


# --------------------------------------------------------------------------- MVTec

def test_mvtec_import(tmp_path: Path) -> None:
    src = make_mvtec(tmp_path)
    rep = import_dataset(src, tmp_path / "out", progress=False)
    assert rep.format == "mvtec"
    assert rep.classes == {"crack": 2, "hole": 1, "good": 3}
    assert list(rep.classes) == ["crack", "hole", "good"]
    assert rep.ok_class == "good"
    ds = Dataset.load(tmp_path / "out")
    ids = {r.id for r in ds.records}
    assert ids == {"train/good/000", "train/good/001", "test/good/000", "test/crack/000", "test/crack/002",
                   "test/hole/000"}
    mask = _mask_of(ds, "test/crack/000")
    assert mask[10, 15] and mask[19, 29] and not mask[7, 15] and not mask[10, 30] and not mask[30, 30]
    assert Path(next(r for r in ds.records if r.id == "test/crack/000").mask).name == "000_mask.png"
    assert next(r for r in ds.records if r.id == "test/crack/002").mask is None
    assert all(r.mask is None for r in ds.records if r.label == "good")

    bad_mask = src / "ground_truth" / "crack" / "001_mask.png"
    assert "mask is 16x16" in _reasons(rep)[str(bad_mask)]
    assert rep.rejected == 1
    missing = [w for w in rep.warnings if "mask file missing" in w.reason]
    assert [w.path for w in missing] == [str(src / "ground_truth" / "crack" / "002_mask.png")]


# --------------------------------------------------------------------------- whole-import failures

def test_everything_corrupt_raises_nothing_usable(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _truncated_jpeg(src / "good" / "a.jpg")
    _text(src / "scratch" / "b.png", "not a png")
    with pytest.raises(DatasetError, match="nothing usable"):
        import_dataset(src, tmp_path / "out", progress=False)
    stored = Dataset.load(tmp_path / "out").rejects  # the reasons are still written down
    assert sorted(Path(r.path).name for r in stored) == ["a.jpg", "b.png"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    src = make_imagefolder(tmp_path)
    import_dataset(src, tmp_path / "out", progress=False)
    with pytest.raises(DatasetError, match="already holds a data set"):
        import_dataset(src, tmp_path / "out", progress=False)
    rep = import_dataset(src, tmp_path / "out", overwrite=True, progress=False)
    assert rep.images == 8 and len(Dataset.load(tmp_path / "out")) == 8


def test_two_candidates_with_one_id_are_not_both_kept(tmp_path: Path, monkeypatch) -> None:
    a, b = _image(tmp_path / "src" / "a.png"), _image(tmp_path / "src" / "b.png")

    def scan(src: Path, ok_class) -> Scan:
        return Scan(classes=["ok"], ok_class="ok",
                    candidates=[Candidate(id="same", image=a, label="ok"),
                                Candidate(id="same", image=b, label="ok")])

    monkeypatch.setitem(IMPORTERS, "test-same-id", Importer("test-same-id", "1", lambda p: False, scan, "any"))
    rep = import_dataset(tmp_path / "src", tmp_path / "out", fmt="test-same-id", progress=False)
    assert rep.images == 1
    assert "already used" in _reasons(rep)[str(b)]
