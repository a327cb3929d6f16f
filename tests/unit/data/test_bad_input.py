"""Bad input and interrupted work in the data layer: no silent damage, no traceback, nothing written
outside --out (one test per case of the hardening issue; the fuzz suite in tests/fuzz covers the space)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest
from PIL import Image

import lineguard.files
from lineguard.cli import main
from lineguard.data.format import CLASSES_FILE, ClassFile, Dataset, DatasetError
from lineguard.data.imaging import ImageFileError, decode_image, read_image
from lineguard.data.importers import detect_format, import_dataset
from lineguard.data.split import split_dataset
from lineguard.data.validate import validate_dataset
from lineguard.files import atomic_write

RNG = np.random.default_rng(7)


def _png(path: Path, h: int = 32, w: int = 32, arr=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (h, w), dtype=np.uint8) if arr is None else arr
    path.write_bytes(cv2.imencode(".png", arr)[1].tobytes())
    return path


def _tree(root: Path, skip: Optional[Path] = None) -> Dict[str, str]:
    """Every file below ``root`` (``skip`` excluded) with its content hash or symlink target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_symlink():
            out[str(p)] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _voc(root: Path, items: List[tuple], ann: str = "Annotations", imgs: str = "JPEGImages") -> Path:
    """A VOC layout; ``items``: (stem, filename in the XML, [(label, x0, y0, x1, y1), ...])."""
    for stem, filename, boxes in items:
        if not filename.startswith(("/", "..")):
            _png(root / imgs / filename)
        objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                       f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in boxes)
        (root / ann).mkdir(parents=True, exist_ok=True)
        (root / ann / f"{stem}.xml").write_text(f"<annotation><filename>{filename}</filename>{objs}</annotation>")
    return root


def _reasons(rep) -> Dict[str, str]:
    return {r.path: r.reason for r in [*rep.rejects, *rep.warnings]}


def _cli(args: List[str], capsys) -> tuple:
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


# ----------------------------------------------------------------- case 1: writes outside --out


def _yolo_with_outside_list_entry(tmp_path: Path) -> Path:
    src = tmp_path / "a" / "src"
    (src / "data.yaml").parent.mkdir(parents=True)
    (src / "data.yaml").write_text("train: list.txt\nnames: [scratch]\n")
    for i in range(2):
        _png(src / "images" / f"in{i}.png")
        (src / "labels").mkdir(exist_ok=True)
        (src / "labels" / f"in{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    _png(tmp_path / "other" / "images" / "e.png")  # ../../other/images/e.png from src
    (tmp_path / "other" / "labels").mkdir(parents=True)
    (tmp_path / "other" / "labels" / "e.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (src / "list.txt").write_text("images/in0.png\nimages/in1.png\n../../other/images/e.png\n")
    return src


@pytest.mark.parametrize("copy", [False, True])
def test_yolo_list_entry_with_dotdot_writes_nothing_outside_out(tmp_path: Path, copy: bool) -> None:
    src = _yolo_with_outside_list_entry(tmp_path)
    out = tmp_path / "a" / "out"
    before = _tree(tmp_path, skip=out)
    rep = import_dataset(src, out, copy=copy, progress=False)
    assert _tree(tmp_path, skip=out) == before
    outside = str(tmp_path / "other" / "images" / "e.png")
    assert "outside the source folder" in _reasons(rep)[outside]
    assert rep.images == 2


def test_allow_outside_reads_it_and_still_writes_inside_out(tmp_path: Path) -> None:
    src = _yolo_with_outside_list_entry(tmp_path)
    out = tmp_path / "a" / "out"
    before = _tree(tmp_path, skip=out)
    rep = import_dataset(src, out, copy=True, allow_outside=True, progress=False)
    assert rep.images == 3 and _tree(tmp_path, skip=out) == before
    ds = Dataset.load(out)
    for r in ds.records:
        assert ".." not in r.id.split("/")
        for rel in (r.image, r.mask):
            assert lineguard.files.inside(ds.path(rel), out)


# ----------------------------------------------------------------- case 2: --overwrite that fails


def test_failed_overwrite_leaves_the_old_set_and_validate_catches_mask_drift(tmp_path: Path, monkeypatch) -> None:
    a = _voc(tmp_path / "a", [(f"i{k}", f"i{k}.png", [("dent", 2, 2, 10, 10)]) for k in range(4)])
    b = _voc(tmp_path / "b", [(f"i{k}", f"i{k}.png", [("dent", 12, 12, 30, 30)]) for k in range(4)])
    out = tmp_path / "out"
    import_dataset(a, out, progress=False)
    before = _tree(out)
    import lineguard.data.importers.candidates as base

    real, calls = base.read_image, []

    def dies_late(path, **kw):
        calls.append(path)
        if len(calls) > 3:  # two candidates fully written (masks included), then the process "dies"
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(base, "read_image", dies_late)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(b, out, overwrite=True, progress=False)
    monkeypatch.undo()
    assert _tree(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    assert validate_dataset(out, progress=False).valid
    rec = Dataset.load(out).records[0]
    assert rec.mask_sha256 is not None
    _png(out / rec.mask, arr=np.full((32, 32), 255, np.uint8))  # the mask drifts
    rep = validate_dataset(out, progress=False)
    assert not rep.valid and any("mask content changed" in e.reason for e in rep.errors)


def test_a_killed_imports_temporary_folder_is_removed_by_the_next_import(tmp_path: Path) -> None:
    src = _voc(tmp_path / "a", [(f"i{k}", f"i{k}.png", []) for k in range(2)])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".out.importing-{dead.pid}-abc"  # what a SIGKILLed import leaves
    (left / "masks").mkdir(parents=True)
    mine = tmp_path / f".out.importing-{os.getpid()}-xyz"  # a running import's: kept
    mine.mkdir()
    import_dataset(src, tmp_path / "out", progress=False)
    assert not left.exists() and mine.exists()


def test_full_disk_during_import_is_one_line_and_the_old_set_survives(tmp_path: Path, monkeypatch, capsys) -> None:
    a = _voc(tmp_path / "a", [(f"i{k}", f"i{k}.png", [("dent", 2, 2, 10, 10)]) for k in range(3)])
    out = tmp_path / "out"
    import_dataset(a, out, progress=False)
    before = _tree(tmp_path)

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(lineguard.files.os, "replace", full)
    code, _, err = _cli(["data", "import", str(a), "--out", str(out), "--overwrite", "-q"], capsys)
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert _tree(tmp_path) == before


# ----------------------------------------------------------------- case 3: 16-bit and float images


def _with_sbit(png: bytes, bits: int) -> bytes:
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]  # right after IHDR


def test_16_bit_frames_are_scaled_by_their_bit_depth_not_clipped() -> None:
    mono16 = np.array([[0, 257, 32896, 65535]], np.uint16).repeat(4, 0)
    got = decode_image(cv2.imencode(".png", mono16)[1].tobytes())
    assert got.dtype == np.uint8 and got[0].tolist() == [0, 1, 128, 255]
    tif = decode_image(cv2.imencode(".tiff", mono16)[1].tobytes())
    assert tif[0].tolist() == [0, 1, 128, 255]
    mono12 = np.array([[0, 2048, 4095]], np.uint16).repeat(4, 0)
    png12 = _with_sbit(cv2.imencode(".png", mono12)[1].tobytes(), 12)
    assert decode_image(png12)[0].tolist() == [0, 128, 255]
    over = _with_sbit(cv2.imencode(".png", np.full((4, 4), 5000, np.uint16))[1].tobytes(), 12)
    with pytest.raises(ImageFileError, match="above the 12-bit range"):
        decode_image(over)


def test_float_and_32_bit_images_are_scaled_or_refused() -> None:
    ok = decode_image(cv2.imencode(".tiff", np.array([[0.0, 0.5, 1.0]], np.float32).repeat(2, 0))[1].tobytes())
    assert ok[0].tolist() == [0, 128, 255]
    with pytest.raises(ImageFileError, match="values"):
        decode_image(cv2.imencode(".tiff", np.full((4, 4), 3.0, np.float32))[1].tobytes())
    with pytest.raises(ImageFileError, match="32-bit integer"):
        decode_image(cv2.imencode(".tiff", np.full((4, 4), 1 << 20, np.int32))[1].tobytes())


# ----------------------------------------------------------------- case 4: decompression bombs, pixel cap


def _bomb(path: Path, side: int) -> Path:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def test_decompression_bombs_are_rejects_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k in range(3):
        _png(src / "good" / f"ok{k}.png")
    big = _bomb(src / "good" / "bomb.png", 14000)  # 196 MP: Pillow's own DecompressionBombError
    mid = _bomb(src / "good" / "mid.png", 7500)  # 56 MP: over our 50 MP default
    assert big.stat().st_size < 300_000
    rep = import_dataset(src, tmp_path / "out", progress=False)
    reasons = _reasons(rep)
    assert rep.images == 3
    assert "more than the 50 MP" in reasons[str(big)] and "more than the 50 MP" in reasons[str(mid)]


def test_pixel_cap_is_configurable(tmp_path: Path) -> None:
    path = _png(tmp_path / "a.png", 20, 20)
    with pytest.raises(ImageFileError, match="20x20 pixels"):
        read_image(path, max_pixels=399)
    assert read_image(path, max_pixels=400)[0].shape == (20, 20)


# ----------------------------------------------------------------- case 5: VOC numbers


def test_voc_nan_inf_boxes_are_rejects_and_huge_boxes_warn(tmp_path: Path) -> None:
    src = _voc(tmp_path / "src", [("a", "a.png", [("dent", "nan", 1, 5, 5)]),
                                  ("b", "b.png", [("dent", 1, 1, "inf", 5)]),
                                  ("c", "c.png", [("dent", "-1e308", 2, "1e308", 9)]),
                                  ("d", "d.png", [])])
    rep = import_dataset(src, tmp_path / "out", progress=False)
    reasons = _reasons(rep)
    assert "not a finite number" in reasons[str(src / "Annotations" / "a.xml")]
    assert "not a finite number" in reasons[str(src / "Annotations" / "b.xml")]
    assert "clipped" in reasons[str(src / "JPEGImages" / "c.png")]
    assert rep.images == 2


# ----------------------------------------------------------------- case 7: manifests


def _small_set(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for k in range(3):
        _png(src / "good" / f"g{k}.png")
        _png(src / "bad" / f"b{k}.png")
    out = tmp_path / "ds"
    import_dataset(src, out, progress=False)
    return out


def test_manifest_with_a_non_utf8_byte_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    ds = _small_set(tmp_path)
    manifest = ds / "manifest.jsonl"
    lines = manifest.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"label"', b'"lab\xffel"')
    manifest.write_bytes(b"\n".join(lines))
    with pytest.raises(DatasetError, match=r"manifest.jsonl:2: not UTF-8"):
        Dataset.load(ds)
    code, _, err = _cli(["data", "validate", str(ds), "-q"], capsys)
    assert code == 2 and "manifest.jsonl:2" in err and "Traceback" not in err


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_manifest_naming_a_device_or_fifo_is_an_error_not_a_hang(tmp_path: Path, target: str) -> None:
    ds = _small_set(tmp_path)
    if target == "fifo":
        target = str(tmp_path / "pipe.png")
        os.mkfifo(target)
    d = Dataset.load(ds)
    d.records[0] = d.records[0].model_copy(update={"image": target})
    d.save()
    result = {}
    t = threading.Thread(target=lambda: result.update(rep=validate_dataset(ds, progress=False)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "validate hangs on a FIFO or device"
    rep = result["rep"]
    assert not rep.valid and any(e.path == target and "not a regular file" in e.reason for e in rep.errors)


# ----------------------------------------------------------------- case 10: --out inside the source


@pytest.mark.parametrize("copy", [False, True])
def test_out_inside_or_around_the_source_is_refused(tmp_path: Path, copy: bool) -> None:
    src = tmp_path / "src"
    for k in range(2):
        _png(src / "good" / f"g{k}.png")
    before = _tree(tmp_path)
    with pytest.raises(DatasetError, match="inside the source"):
        import_dataset(src, src / "out", copy=copy, progress=False)
    with pytest.raises(DatasetError, match="holds the source"):
        import_dataset(src, tmp_path, copy=copy, overwrite=True, progress=False)
    assert _tree(tmp_path) == before


# ----------------------------------------------------------------- case 13: symlinks, tiny images, names


def test_dangling_symlink_is_a_reject_and_a_1x1_image_warns(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k in range(2):
        _png(src / "good" / f"g{k}.png")
    (src / "good" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    tiny = _png(src / "good" / "tiny.png", 1, 1)
    rep = import_dataset(src, tmp_path / "out", progress=False)
    reasons = _reasons(rep)
    assert "dangling symlink" in reasons[str(src / "good" / "gone.png")]
    assert "only 1x1 pixels" in reasons[str(tiny)]
    assert rep.images == 3


def test_symlink_and_voc_filenames_pointing_outside_the_source_are_rejects(tmp_path: Path) -> None:
    secret = _png(tmp_path / "private" / "secret.png")
    src = _voc(tmp_path / "src", [("a", "a.png", []), ("b", "b.png", []),
                                  ("up", "../../private/secret.png", []), ("abs", "/etc/passwd", [])])
    (src / "JPEGImages" / "link.png").symlink_to(secret)
    (src / "Annotations" / "link.xml").write_text("<annotation><filename>link.png</filename></annotation>")
    rep = import_dataset(src, tmp_path / "out", progress=False)
    reasons = _reasons(rep)
    assert rep.images == 2
    for p in (src / "JPEGImages" / "../../private/secret.png", Path("/etc/passwd"), src / "JPEGImages" / "link.png"):
        assert "outside the source folder" in reasons[str(p)], reasons
    rep = import_dataset(src, tmp_path / "out2", allow_outside=True, progress=False)
    assert rep.images == 3  # the symlink and ../ now read (one image: the same bytes); /etc/passwd is no image


def test_yolo_class_names_must_be_text(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "images" / "a.png")
    (src / "data.yaml").write_text("names: {1: [1, 2]}\n")
    with pytest.raises(DatasetError, match="class names must be text"):
        import_dataset(src, tmp_path / "out", progress=False)


# ----------------------------------------------------------------- case 14: splits too small


def test_split_warns_per_small_class_and_refuses_an_empty_split(tmp_path: Path) -> None:
    ds_path = _small_set(tmp_path)
    two = Dataset.load(ds_path)
    two.records = [r for r in two.records if r.id != "bad/b2"]  # 'bad': 2 images, 1 test and no val
    rep = split_dataset(two, val=0.1, test=0.2)
    assert [w for w in rep.warnings if "none in val" in w] == ["class 'bad' has 2 distinct image(s): none in val"]
    assert rep.counts["val"] == {"bad": 0, "good": 1}
    tiny = Dataset.load(ds_path)
    tiny.records = [r for r in tiny.records if r.id.endswith("0")]  # 1 image a class: no val, no test
    before = _tree(ds_path)
    with pytest.raises(DatasetError, match="test and val would hold no image"):
        split_dataset(tiny, val=0.2, test=0.2)
    assert _tree(ds_path) == before


# ----------------------------------------------------------------- case 16: VOC folder names


def test_upper_case_voc_folders_are_detected_and_a_wrong_layout_is_named(tmp_path: Path, capsys) -> None:
    src = _voc(tmp_path / "src", [("a", "a.png", [("dent", 2, 2, 9, 9)]), ("b", "b.png", [])],
               ann="ANNOTATIONS", imgs="IMAGES")
    assert detect_format(src) == "voc"
    assert import_dataset(src, tmp_path / "out", progress=False).images == 2
    other = tmp_path / "other"
    _png(other / "pics" / "a.png")
    code, _, err = _cli(["data", "import", str(other), "--format", "voc", "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "Annotations/" in err and "JPEGImages/" in err and "Traceback" not in err


# ----------------------------------------------------------------- case 18: stray files


def test_validate_lists_stray_and_temporary_files(tmp_path: Path) -> None:
    ds = tmp_path / "sim"
    d = _small_set(tmp_path)
    os.replace(d, ds)
    Dataset.load(ds)
    _png(ds / "images" / "left-over.png")
    (ds / ".manifest.jsonl.abc.tmp").write_text("half")
    rep = validate_dataset(ds, progress=False)
    paths = {w.path: w.reason for w in rep.warnings}
    assert "stray file" in paths[str(ds / "images" / "left-over.png")]
    assert "temporary file" in paths[str(ds / ".manifest.jsonl.abc.tmp")]


# ----------------------------------------------------------------- case 19: atomic writes


def test_atomic_write_keeps_the_old_file_on_failure_and_syncs(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "classes.yaml"
    ClassFile(classes=["dent", "ok"], ok_class="ok").save(path)
    old = path.read_bytes()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(lineguard.files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(lineguard.files.os, "replace", full)
    with pytest.raises(OSError):
        ClassFile(classes=["scratch", "ok"], ok_class="ok").save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [CLASSES_FILE]
    assert synced, "no fsync before the rename"
    atomic_write(path, "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
