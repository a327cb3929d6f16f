"""The line's image archive: every NG and UNCERTAIN part (with a heatmap overlay) and a sample of OK parts,
within a free-space budget. Torch-free, Python 3.8 (the line computer).

    archive = Archive(ArchiveConfig(path="archive", ok_sample_rate=0.01))
    rel = archive.save("NG", "run1-camera-1-000042", image, heatmap, sample_draw=random.random(), when=ts)
    # rel: '2024-05-01/NG/run1-camera-1-000042.png' (and ...-heatmap.png beside it), or None: not kept

Layout: ``<path>/<YYYY-MM-DD (UTC)>/<decision>/<key>.<format>``. Every file is written atomically
(``lineguard.files.atomic_write``): a crash or a full disk leaves no partial file.

Never raises for disk problems: an unwritable folder, a full disk or any other ``OSError`` (and an image that
cannot be encoded) is counted in ``failures`` / ``failures_by_reason`` (the errno name, ``bad-image``,
``bad-heatmap``) and the save returns None, so the part's result is never affected.

Retention: when the free space falls under ``keep_free_bytes``, the oldest files are deleted, all OK ones
first, then UNCERTAIN, then NG (kept longest), until it is back over ``resume_free_bytes`` or nothing is left
to delete. The archive is listed once, at the first time space runs low, and that listing is kept up to date
with what this archive writes and deletes afterwards, so a save never rescans the tree.

One thread: the daemon's archive worker calls :meth:`Archive.save`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Deque, Dict, List, Literal, Optional, Tuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from lineguard.config import StrictModel
from lineguard.edge.verdict import Decision
from lineguard.files import atomic_write

__all__ = ["RETENTION_ORDER", "Archive", "ArchiveConfig", "overlay"]

GiB = 1 << 30
RETENTION_ORDER = (Decision.OK, Decision.UNCERTAIN, Decision.NG)  # deleted first .. kept longest
HEATMAP_ALPHA = 0.4  # weight of the colour map in the overlay
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ArchiveConfig(StrictModel):
    """Where images go, which OK parts are kept, and the free space to keep on the disk."""

    path: Path
    ok_sample_rate: float = Field(0.01, ge=0.0, le=1.0, description="share of OK parts kept (NG, UNCERTAIN: all)")
    keep_free_bytes: int = Field(2 * GiB, ge=0, description="below this free space, delete the oldest images")
    resume_free_bytes: int = Field(3 * GiB, ge=0, description="... until this much is free again")
    format: Literal["png", "jpg"] = "png"

    @model_validator(mode="after")
    def _watermarks(self) -> ArchiveConfig:
        if self.resume_free_bytes <= self.keep_free_bytes:
            raise ValueError(f"resume_free_bytes ({self.resume_free_bytes}) must be more than keep_free_bytes "
                             f"({self.keep_free_bytes})")
        return self


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``image`` (uint8 gray, BGR or BGRA) in BGR with ``heatmap`` ((h, w) in 0..1, resized to the image)
    blended over it in colour (JET: blue 0 .. red 1), each pixel weighted by its heat (at most ``HEATMAP_ALPHA``)."""
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"a heatmap must be (h, w), got shape {heat.shape}")
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels not in (1, 3, 4):
        raise ValueError(f"an image must be gray, BGR or BGRA, got shape {image.shape}")
    bgr = image if channels == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if channels == 1 else cv2.COLOR_BGRA2BGR)
    heat = cv2.resize(np.clip(heat, 0.0, 1.0), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).round().astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (HEATMAP_ALPHA * heat)[..., None]  # the colour where the model sees a defect, the part elsewhere
    return (bgr * (1.0 - alpha) + colour * alpha).round().astype(np.uint8)


class Archive:
    """Saves part images by the rules of ``cfg`` (see the module docstring). Counters: ``saved`` (images),
    ``deleted`` (files removed for space), ``failures`` and ``failures_by_reason``; ``last_error``."""

    def __init__(self, cfg: ArchiveConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.path)
        self.saved = 0
        self.deleted = 0
        self.failures = 0
        self.failures_by_reason: Dict[str, int] = {}
        self.last_error: Optional[str] = None
        self._ext = "." + cfg.format
        self._listing: Optional[Dict[Decision, Deque[Path]]] = None  # deletable files, oldest first

    def _fail(self, reason: str, detail: str) -> None:
        self.failures += 1
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        self.last_error = f"{reason}: {detail}"

    def free_bytes(self) -> int:
        """Free bytes on the archive's file system (of its nearest existing folder)."""
        folder = self.root.absolute()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return shutil.disk_usage(str(folder)).free

    def keeps(self, decision: Decision, sample_draw: float) -> bool:
        """Whether a part is archived: NG and UNCERTAIN always, OK when ``sample_draw`` (uniform in [0, 1))
        is under ``ok_sample_rate``."""
        return decision is not Decision.OK or sample_draw < self.cfg.ok_sample_rate

    def save(self, decision: str, key: str, image: np.ndarray, heatmap: Optional[np.ndarray],
             sample_draw: float, when: Optional[float] = None) -> Optional[str]:
        """Archive one part's ``image`` (uint8 gray, RGB as lineguard's frames, or BGRA) if :meth:`keeps` says so,
        with the ``heatmap`` overlay for NG and UNCERTAIN; ``key`` names the files (characters other than letters,
        digits, ``_.-`` become ``_``), ``when`` (epoch seconds, default now) picks the day folder. The path
        written, relative to the archive, or None (not kept, or failed: see ``failures_by_reason``)."""
        verdict = Decision(decision)
        if not self.keeps(verdict, sample_draw):
            return None
        if image is None or image.size == 0:
            self._fail("bad-image", f"{key}: empty image")
            return None
        try:
            if image.ndim == 3 and image.shape[2] == 3:  # lineguard's frames are RGB, OpenCV writes BGR
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            ok, encoded = cv2.imencode(self._ext, image)
            if not ok:
                raise ValueError("not encodable")
        except (cv2.error, ValueError) as e:
            self._fail("bad-image", f"{key}: {type(e).__name__}")
            return None
        files: List[Tuple[Path, bytes]] = []
        day = datetime.fromtimestamp(when, timezone.utc) if when is not None else datetime.now(timezone.utc)
        stem = Path(day.strftime("%Y-%m-%d"), verdict.value, _UNSAFE.sub("_", key).lstrip(".") or "_")
        files.append((stem.with_name(stem.name + self._ext), encoded.tobytes()))
        if heatmap is not None and verdict is not Decision.OK:
            try:
                ok, heat = cv2.imencode(self._ext, overlay(image, heatmap))
                if not ok:
                    raise ValueError("not encodable")
                files.append((stem.with_name(stem.name + "-heatmap" + self._ext), heat.tobytes()))
            except (cv2.error, ValueError) as e:
                self._fail("bad-heatmap", f"{key}: {type(e).__name__}: {e}")
        self._make_room()
        written: Optional[str] = None
        for rel, data in files:
            try:
                atomic_write(self.root / rel, data)
            except OSError as e:
                self._fail(errno.errorcode.get(e.errno or 0, "OSError"), f"{self.root / rel}: {e.strerror or e}")
                break
            if self._listing is not None:
                self._listing[verdict].append(self.root / rel)
            if written is None:
                written = rel.as_posix()
                self.saved += 1
        return written

    def _scan(self) -> Dict[Decision, Deque[Path]]:
        """The archived files per decision, oldest first (by day folder, then modification time)."""
        found: Dict[Decision, List[Tuple[str, int, str, Path]]] = {d: [] for d in RETENTION_ORDER}
        try:
            days = [e for e in os.scandir(str(self.root)) if _DAY.fullmatch(e.name) and e.is_dir()]
        except OSError:
            days = []
        for day in days:
            for d in RETENTION_ORDER:
                try:
                    entries = list(os.scandir(os.path.join(day.path, d.value)))
                except OSError:
                    continue
                for e in entries:
                    try:
                        if not e.name.startswith(".") and e.is_file():
                            found[d].append((day.name, e.stat().st_mtime_ns, e.name, Path(e.path)))
                    except OSError:
                        continue
        return {d: deque(f[3] for f in sorted(files)) for d, files in found.items()}

    def _make_room(self) -> None:
        """Delete the oldest files, OK first and NG last, while free space is under the low watermark and
        until it is over the high one."""
        try:
            if self.free_bytes() >= self.cfg.keep_free_bytes:
                return
            if self._listing is None:
                self._listing = self._scan()
            for d in RETENTION_ORDER:
                queue = self._listing[d]
                while queue and self.free_bytes() < self.cfg.resume_free_bytes:
                    path = queue.popleft()
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        self._fail("retention-" + errno.errorcode.get(e.errno or 0, "OSError"), f"{path}: {e}")
                        continue
                    self.deleted += 1
                    for folder in (path.parent, path.parent.parent):  # the decision, then the day folder
                        try:
                            folder.rmdir()
                        except OSError:
                            break  # not empty
                if self.free_bytes() >= self.cfg.resume_free_bytes:
                    return
        except OSError as e:  # free space unreadable
            self._fail("retention-" + errno.errorcode.get(e.errno or 0, "OSError"), str(e))
