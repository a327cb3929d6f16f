"""The line's cameras: a folder of image files, a video file, an RTSP or USB stream, a GenICam camera.
Torch-free, Python 3.8 (the line computer).

    src = open_camera(StreamSourceConfig(kind="rtsp", url="rtsp://10.0.0.5:554/stream1"), "camera-1")
    src.start()                               # returns at once when the camera is down: it keeps trying
    cap = src.read(timeout=0.5)               # a Capture, None (nothing within 0.5 s), EndOfSource (folder, video)
    src.stop()                                # from every state, within about a second

* :class:`FolderSource` reads files with lineguard's decoder (:func:`lineguard.data.imaging.decode_image`): once,
  in name order, or watching the folder for new files. A file that cannot be decoded is still handed over, with
  ``error`` and an empty image (NG ``bad-frame``).
* :class:`VideoSource`: a video file's frames in order (OpenCV), then :class:`EndOfSource`.
* :class:`~lineguard.inspect.stream.StreamSource` (``stream.py``): RTSP or a USB camera, with reconnects and
  frame accounting.
* :class:`GenicamSource`: a GenICam camera through ``harvesters`` (``pip install harvesters``), hardware
  trigger on Line1 by default.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Literal, Optional, Tuple, Union

import cv2
import numpy as np
from pydantic import Field

from lineguard.config import StrictModel
from lineguard.data.imaging import MAX_FILE_BYTES, ImageFileError, decode_image, to_uint8
from lineguard.files import FileError, printable, read_regular

from .base import Capture, EndOfSource, InspectError, Source, SourceState, empty_image
from .stream import StreamSource, StreamSourceConfig, rgb, video_capture

__all__ = ["CameraConfig", "FolderSource", "FolderSourceConfig", "GenicamSource", "GenicamSourceConfig", "VideoSource",
           "VideoSourceConfig", "open_camera"]

log = logging.getLogger("lineguard.inspect")

_PARTIAL = (".tmp", ".part", "~")  # names of files still being written (a writer renames them when done)


class FolderSourceConfig(StrictModel):
    """Image files in a folder: once in name order, or (``watch``) each new file as it appears."""

    kind: Literal["folder"] = "folder"
    path: Path
    watch: bool = Field(False, description="hand over new files as they appear until stopped")
    pattern: Union[str, List[str]] = Field("*.png", description="file name pattern(s), case-insensitive")
    poll_s: float = Field(0.2, gt=0.0, description="watch: listing interval; a file is taken once its size and "
                                                   "time stayed the same this long")


class VideoSourceConfig(StrictModel):
    """A video file's frames in order, then the end."""

    kind: Literal["video"] = "video"
    path: Path


class GenicamSourceConfig(StrictModel):
    """A GenICam (GigE Vision / USB3 Vision) camera through its GenTL producer (``cti``) and harvesters."""

    kind: Literal["genicam"] = "genicam"
    cti: Path = Field(..., description="the camera maker's GenTL producer (.cti)")
    serial: Optional[str] = Field(None, description="the camera's serial number (default: the first camera)")
    trigger: bool = Field(True, description="TriggerMode On, TriggerSource Line1 (one frame per part)")
    timeout_s: float = Field(1.0, gt=0.0, description="longest wait for one frame")


CameraConfig = Union[FolderSourceConfig, VideoSourceConfig, StreamSourceConfig, GenicamSourceConfig]


class FolderSource(Source):
    """The image files of a folder. Once: every matching file in name order, then :class:`EndOfSource`.
    Watch: each file whose size and modification time stayed the same for ``poll_s`` (so a file being written
    is not taken half-written), in name order per listing, each file once; a file that is later rewritten
    (its size, time or inode change) counts as a new file. Dot files and ``*.tmp``, ``*.part``, ``*~`` are
    ignored: a writer that pauses for longer than ``poll_s`` should write under such a name and rename."""

    kind = "folder"

    def __init__(self, cfg: FolderSourceConfig, source_id: str) -> None:
        super().__init__(source_id)
        self.cfg = cfg
        patterns = [cfg.pattern] if isinstance(cfg.pattern, str) else cfg.pattern
        self._patterns = [re.compile(fnmatch.translate(p), re.IGNORECASE) for p in patterns]
        self._ready: Deque[str] = deque()
        self._seen: Dict[str, Tuple[int, int, int]] = {}  # handed over: name -> (inode, size, mtime)
        self._pending: Dict[str, Tuple[Tuple[int, int, int], float]] = {}  # name -> (signature, since)
        self._next_poll = 0.0

    def _open(self) -> None:
        if not self.cfg.path.is_dir():
            raise InspectError(f"folder source {self.cfg.path}: not a folder")
        self._ready.clear()
        self._seen.clear()
        self._pending.clear()
        self._next_poll = 0.0
        if not self.cfg.watch:
            self._ready.extend(sorted(self._listing()))

    def _wanted(self, name: str) -> bool:
        return (not name.startswith(".") and not name.endswith(_PARTIAL)
                and any(p.fullmatch(name) for p in self._patterns))

    def _listing(self) -> Dict[str, Tuple[int, int, int]]:
        """Matching regular files: name -> (inode, size, mtime_ns)."""
        found = {}
        with os.scandir(self.cfg.path) as entries:
            for entry in entries:
                try:
                    if self._wanted(entry.name) and entry.is_file():
                        st = entry.stat()
                        found[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
                except OSError:  # removed while listed
                    continue
        return found

    def _poll(self) -> None:
        now = time.monotonic()
        try:
            listing = self._listing()
        except OSError as e:
            log.warning("folder source %s: cannot list %s (%s)", self.source_id, self.cfg.path, e)
            return
        self._seen = {n: s for n, s in self._seen.items() if n in listing}
        fresh = []
        for name, sig in listing.items():
            if self._seen.get(name) == sig:
                continue
            before = self._pending.get(name)
            if before is None or before[0] != sig:
                self._pending[name] = (sig, now)
            elif now - before[1] >= self.cfg.poll_s:
                fresh.append(name)
                self._seen[name] = sig
        self._pending = {n: v for n, v in self._pending.items() if n in listing and self._seen.get(n) != listing[n]}
        self._ready.extend(sorted(fresh))

    def _grab(self, timeout: float) -> Optional[Capture]:
        deadline = time.monotonic() + timeout
        while not self._ready:
            if not self.cfg.watch:
                self.state = SourceState.ENDED
                raise EndOfSource(self.source_id)
            now = time.monotonic()
            if now >= self._next_poll:
                self._poll()
                self._next_poll = now + self.cfg.poll_s / 2  # two looks per poll_s: stability is timed, not counted
                continue
            left = deadline - now
            if left <= 0 or self._stop.wait(min(self._next_poll - now, left)):
                return None
        return self._read(self._ready.popleft())

    def _read(self, name: str) -> Capture:
        shown = printable(name)
        data = None
        try:
            data = read_regular(self.cfg.path / name, MAX_FILE_BYTES)
            return self.capture(decode_image(data), {"file": shown}, encoded=data)
        except FileError as e:
            why = e.reason
        except ImageFileError as e:
            why = str(e)
        except Exception as e:  # a decoder's unforeseen failure is still a decided part, never a traceback
            why = f"cannot decode ({type(e).__name__}: {e})"
        return self.capture(empty_image(), {"file": shown}, error=f"{shown}: {why}", encoded=data)


class VideoSource(Source):
    """A video file's frames in order (OpenCV), then :class:`EndOfSource`; a frame that cannot be decoded ends
    it too (OpenCV cannot tell the two apart)."""

    kind = "video"

    def __init__(self, cfg: VideoSourceConfig, source_id: str) -> None:
        super().__init__(source_id)
        self.cfg = cfg
        self._cap: Optional[Any] = None
        self._lock = threading.Lock()  # stop() from another thread waits for a read in progress

    def _open(self) -> None:
        if not self.cfg.path.is_file():
            raise InspectError(f"video source {self.cfg.path}: no such file")
        cap = video_capture(str(self.cfg.path))
        if not cap.isOpened():
            cap.release()
            raise InspectError(f"video source {self.cfg.path}: OpenCV cannot open it (not a video, or a codec "
                               f"this OpenCV build lacks)")
        with self._lock:
            self._cap = cap

    def _grab(self, timeout: float) -> Optional[Capture]:
        with self._lock:
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if not ok or image is None:
                self.state = SourceState.ENDED
                self._release()
                raise EndOfSource(self.source_id)
            meta = {"file": printable(self.cfg.path.name), "pos_msec": f"{self._cap.get(cv2.CAP_PROP_POS_MSEC):.1f}",
                    "pos_frames": str(int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)))}
        return self.capture(rgb(image), meta)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _close(self) -> None:
        with self._lock:
            self._release()


class GenicamSource(Source):
    """A GenICam camera through harvesters: one buffer per ``read`` (``fetch`` with a timeout), Mono8..16 or
    RGB8/BGR8 pixels scaled to 8 bits by their bit depth (:func:`lineguard.data.imaging.to_uint8`)."""

    kind = "genicam"

    def __init__(self, cfg: GenicamSourceConfig, source_id: str) -> None:
        super().__init__(source_id)
        self.cfg = cfg
        self._harvester: Optional[Any] = None
        self._ia: Optional[Any] = None
        self._timeout: Any = ()  # harvesters' timeout exception, once imported
        self._lock = threading.Lock()  # stop() waits for a fetch in progress (at most timeout_s)

    def _open(self) -> None:
        try:
            from genicam.gentl import TimeoutException
            from harvesters.core import Harvester
        except ImportError:
            raise InspectError("the genicam source needs harvesters: pip install harvesters") from None
        if not self.cfg.cti.is_file():
            raise InspectError(f"genicam source: no GenTL producer at {self.cfg.cti}")
        harvester = Harvester()
        try:
            harvester.add_file(str(self.cfg.cti))
            harvester.update()
            ia = harvester.create({"serial_number": self.cfg.serial} if self.cfg.serial else 0)
            if self.cfg.trigger:
                nodes = ia.remote_device.node_map
                nodes.TriggerMode.value = "On"
                nodes.TriggerSource.value = "Line1"
            ia.start()
        except Exception as e:  # harvesters/GenTL raise their own types
            harvester.reset()
            raise InspectError(f"genicam camera {self.cfg.serial or '(first)'} through {self.cfg.cti}: {e}") from None
        with self._lock:
            self._harvester, self._ia, self._timeout = harvester, ia, TimeoutException

    def _grab(self, timeout: float) -> Optional[Capture]:
        with self._lock:
            if self._ia is None:
                return None
            try:
                with self._ia.fetch(timeout=min(timeout, self.cfg.timeout_s)) as buffer:
                    part = buffer.payload.components[0]
                    fmt, pixels = str(part.data_format), np.array(part.data).reshape(part.height, part.width, -1)
            except self._timeout:
                return None
        meta = {"pixel_format": fmt}
        m = re.fullmatch(r"(Mono|RGB|BGR)(8|10|12|14|16)", fmt)
        if m is None or (m.group(1) != "Mono" and m.group(2) != "8"):
            return self.capture(empty_image(), meta, error=f"pixel format {fmt}: lineguard reads Mono8..16, "
                                                              f"RGB8, BGR8")
        try:
            image = to_uint8(pixels[..., 0] if m.group(1) == "Mono" else pixels, int(m.group(2)))
        except ImageFileError as e:
            return self.capture(empty_image(), meta, error=f"{fmt} frame: {e}")
        return self.capture(np.ascontiguousarray(image[..., ::-1] if m.group(1) == "BGR" else image), meta)

    def _close(self) -> None:
        with self._lock:
            ia, harvester, self._ia, self._harvester = self._ia, self._harvester, None, None
        steps = [ia.stop, ia.destroy] if ia is not None else []
        if harvester is not None:
            steps.append(harvester.reset)
        for step in steps:
            try:
                step()
            except Exception as e:  # closing a camera that is gone: said, not raised
                log.warning("genicam %s: %s", self.source_id, e)


_SOURCES = {FolderSourceConfig: FolderSource, VideoSourceConfig: VideoSource, StreamSourceConfig: StreamSource,
            GenicamSourceConfig: GenicamSource}


def open_camera(cfg: CameraConfig, source_id: str) -> Source:
    """The source for ``cfg``, not started yet (call ``start()``)."""
    make = _SOURCES.get(type(cfg))
    if make is None:
        raise InspectError(f"no camera source for {type(cfg).__name__}")
    return make(cfg, source_id)
