"""The image archive: which parts are kept, the files and the heatmap overlay, retention (OK deleted before
UNCERTAIN before NG) and disk problems, a real full tmpfs included, that never raise."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from lineguard.inspect.archive import Archive, ArchiveConfig

T0 = 1714564800.0  # 2024-05-01T12:00:00Z
DAY = 86400.0


def image(h: int = 40, w: int = 60, seed: int = 0, channels: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def archive(root: Path, **kw: Any) -> Archive:
    return Archive(ArchiveConfig(path=root, **{"keep_free_bytes": 0, "resume_free_bytes": 1, **kw}))


def files(root: Path) -> List[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_config_checks_its_values(tmp_path: Path) -> None:
    cfg = ArchiveConfig(path=tmp_path)
    assert (cfg.ok_sample_rate, cfg.keep_free_bytes, cfg.format) == (0.01, 2 << 30, "png")
    for bad in ({"ok_sample_rate": 1.5}, {"ok_sample_rate": -0.1}, {"keep_free_bytes": 10, "resume_free_bytes": 10},
                {"format": "bmp"}, {"pth": "x"}):
        with pytest.raises(ValidationError):
            ArchiveConfig(path=tmp_path, **bad)


def test_ng_and_uncertain_always_ok_by_sample(tmp_path: Path) -> None:
    never = archive(tmp_path / "a", ok_sample_rate=0.0)
    assert never.save("NG", "n", image(), None, sample_draw=0.999, when=T0) == "2024-05-01/NG/n.png"
    assert never.save("UNCERTAIN", "u", image(), None, sample_draw=0.999, when=T0) == "2024-05-01/UNCERTAIN/u.png"
    assert never.save("OK", "o", image(), None, sample_draw=0.0, when=T0) is None
    always = archive(tmp_path / "b", ok_sample_rate=1.0)
    assert always.save("OK", "o", image(), None, sample_draw=0.999, when=T0) == "2024-05-01/OK/o.png"
    half = archive(tmp_path / "c", ok_sample_rate=0.5)
    assert half.save("OK", "kept", image(), None, sample_draw=0.3, when=T0) is not None
    assert half.save("OK", "dropped", image(), None, sample_draw=0.7, when=T0) is None
    assert files(tmp_path / "a") == ["2024-05-01/NG/n.png", "2024-05-01/UNCERTAIN/u.png"]
    assert (never.saved, never.failures, half.saved) == (2, 0, 1)


def test_image_and_heatmap_overlay(tmp_path: Path) -> None:
    a = archive(tmp_path, ok_sample_rate=1.0)
    img = image()
    heat = np.zeros((5, 8), np.float32)
    heat[1:3, 2:4] = 1.0
    assert a.save("NG", "run1/cam 1:7", img, heat, 0.5, when=T0) == "2024-05-01/NG/run1_cam_1_7.png"
    assert np.array_equal(cv2.imread(str(tmp_path / "2024-05-01/NG/run1_cam_1_7.png"), cv2.IMREAD_UNCHANGED), img)
    overlay = cv2.imread(str(tmp_path / "2024-05-01/NG/run1_cam_1_7-heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (40, 60, 3)
    hot, cold = overlay[15, 22].astype(int), overlay[35, 55].astype(int)  # JET red where 1; the part where 0
    assert hot[2] > hot[0] and (cold == img[35, 55]).all()
    a.save("UNCERTAIN", "u", image(channels=3), heat, 0.5, when=T0)
    a.save("OK", "o", image(channels=4), heat, 0.5, when=T0)  # OK: no heatmap
    assert files(tmp_path) == ["2024-05-01/NG/run1_cam_1_7-heatmap.png", "2024-05-01/NG/run1_cam_1_7.png",
                               "2024-05-01/OK/o.png", "2024-05-01/UNCERTAIN/u-heatmap.png",
                               "2024-05-01/UNCERTAIN/u.png"]
    jpg = archive(tmp_path / "jpg", format="jpg")
    assert jpg.save("NG", "j", img, heat, 0.5, when=T0) == "2024-05-01/NG/j.jpg"
    assert files(tmp_path / "jpg") == ["2024-05-01/NG/j-heatmap.jpg", "2024-05-01/NG/j.jpg"]
    assert a.failures == jpg.failures == 0


def test_bad_images_and_folders_are_counted_not_raised(tmp_path: Path) -> None:
    a = archive(tmp_path / "a")
    assert a.save("NG", "empty", np.zeros((0, 0), np.uint8), None, 0.5) is None
    assert a.save("NG", "two-channel", image(channels=2), None, 0.5) is None
    assert a.save("NG", "bad-heat", image(), np.zeros((1, 5, 8)), 0.5, when=T0) == "2024-05-01/NG/bad-heat.png"
    assert a.failures_by_reason == {"bad-image": 2, "bad-heatmap": 1} and a.failures == 3
    (tmp_path / "file").write_text("x")
    b = archive(tmp_path / "file" / "archive")  # a file where a folder should be
    assert b.save("NG", "k", image(), None, 0.5) is None
    assert b.failures == 1 and b.failures_by_reason == {"ENOTDIR": 1} and b.last_error


def test_retention_deletes_ok_then_uncertain_then_ng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = archive(tmp_path, ok_sample_rate=1.0, keep_free_bytes=1000, resume_free_bytes=2500)
    heat = np.ones((2, 2), np.float32)
    monkeypatch.setattr(a, "free_bytes", lambda: 10 ** 9)
    a.save("NG", "ng-old", image(), heat, 0.5, when=T0)  # oldest of all, but NG
    a.save("UNCERTAIN", "unc-old", image(), None, 0.5, when=T0)
    for day in (3, 1, 2):  # written out of order: the day folder comes first
        a.save("OK", f"ok-{day}", image(), None, 0.5, when=T0 + day * DAY)
    scans = []
    scan = a._scan
    monkeypatch.setattr(a, "_scan", lambda: scans.append(1) or scan())
    start = [a.deleted]
    monkeypatch.setattr(a, "free_bytes", lambda: 999 + 1000 * (a.deleted - start[0]))  # a file frees 1000 bytes
    a.save("NG", "ng-new", image(), None, 0.5, when=T0 + 4 * DAY)
    assert a.deleted == 2  # 999 -> 2999 >= 2500: the two oldest OK
    assert files(tmp_path) == ["2024-05-01/NG/ng-old-heatmap.png", "2024-05-01/NG/ng-old.png",
                               "2024-05-01/UNCERTAIN/unc-old.png", "2024-05-04/OK/ok-3.png",
                               "2024-05-05/NG/ng-new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2024-05-01", "2024-05-04", "2024-05-05"]  # emptied
    start[0] = a.deleted
    a.save("NG", "ng-next", image(), None, 0.5, when=T0 + 4 * DAY)
    assert a.deleted == 4  # the last OK, then the UNCERTAIN; NG kept longest
    assert files(tmp_path) == ["2024-05-01/NG/ng-old-heatmap.png", "2024-05-01/NG/ng-old.png",
                               "2024-05-05/NG/ng-new.png", "2024-05-05/NG/ng-next.png"]
    monkeypatch.setattr(a, "free_bytes", lambda: 0)  # never enough: everything deletable goes, NG last
    assert a.save("NG", "ng-last", image(), None, 0.5, when=T0 + 5 * DAY) == "2024-05-06/NG/ng-last.png"
    assert files(tmp_path) == ["2024-05-06/NG/ng-last.png"]
    a.save("NG", "ng-after", image(), None, 0.5, when=T0 + 5 * DAY)  # the listing knows what was written since
    assert files(tmp_path) == ["2024-05-06/NG/ng-after.png"]
    assert len(scans) == 1 and a.deleted == 9 and a.failures == 0


def test_a_real_full_disk_is_counted_and_leaves_no_file(small_tmpfs) -> None:
    tmpfs = small_tmpfs("2m")
    a = archive(tmpfs / "archive")
    heat = np.ones((4, 4), np.float32)
    assert a.save("NG", "before", image(200, 200), heat, 0.5, when=T0) is not None
    filler = small_tmpfs.fill(tmpfs)
    assert a.save("NG", "full", image(200, 200, seed=1), heat, 0.5, when=T0) is None
    assert a.failures == 1 and a.failures_by_reason == {"ENOSPC": 1} and "No space left" in str(a.last_error)
    assert files(tmpfs / "archive") == ["2024-05-01/NG/before-heatmap.png", "2024-05-01/NG/before.png"]
    filler.unlink()
    assert a.save("NG", "after", image(200, 200, seed=2), heat, 0.5, when=T0) == "2024-05-01/NG/after.png"
    assert a.saved == 2 and a.failures == 1
