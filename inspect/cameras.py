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
* :class:`StreamSource`: RTSP (OpenCV's FFmpeg backend) or a USB camera. A daemon reader thread grabs frames
  into a small queue, so ``read(timeout)`` never blocks longer than asked; a lost stream is RECONNECTING and is
  re-opened with exponential backoff (``reconnects`` counts the successes). An RTSP open gets
  ``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp|fflags;nobuffer`` unless the variable is set (then it holds
  for every open); opens take turns, so a connect that hangs holds other opens of this process for ``timeout_s``.
  ``nobuffer`` keeps the latency low but drops the packets FFmpeg probes when it opens (about 1.2 s of a 25 fps
  H.264 stream in the RTSP test, counted in ``skipped``); ``rtsp_transport;tcp`` alone delivers them late, in a
  burst, instead.
* :class:`GenicamSource`: a GenICam camera through ``harvesters`` (``pip install harvesters``), hardware
  trigger on Line1 by default.

Frame accounting of a stream (``StreamSource.lost`` = ``dropped + skipped + outage``; every capture's ``meta``
holds ``connection``, ``pos_msec`` and ``pos_frames`` as OpenCV reports them):

* ``dropped`` (exact): frames the reader thread discarded because the hand-over queue was full (the oldest go).
* ``skipped`` (from the stream's timestamps, exact for a constant frame rate): gaps of ``pos_msec`` between two
  frames of one connection larger than one frame interval (frames the decoder never produced), and for RTSP the
  frames between a connection's first packet and its first decoded frame (``pos_msec`` of that frame: OpenCV
  counts from the first packet; FFmpeg's ``fflags;nobuffer`` discards the packets it probes when it opens, and
  a decoder waits for a key frame).
* ``outage`` (an estimate from the wall clock, not the stream): after a reconnect the stream's timestamps start
  again, so the frames between the last frame before the loss and the new connection's first packet are
  ``round((first packet - last frame) * fps) - 1``, where the first packet came ``pos_msec`` before the new
  connection's first frame arrived and the last frame is placed by its ``pos_msec`` at the pace the old connection
  kept (a decoder flushing its last frames at once would otherwise make the gap look longer). It assumes a camera that
  kept running through the outage, frames that arrive at the stream's pace (true with ``nobuffer``; a stream
  buffered at connect over-counts, never under-counts) and the same latency before and after; it includes the
  frames in flight when the connection broke. Against a camera's burned-in frame numbers
  (tests/integration/test_rtsp.py) it was exact or one frame over.

Not accounted: frames sent before the first connection, and any of the above when the frame rate is unknown
(neither ``StreamSourceConfig.fps`` nor the stream's ``CAP_PROP_FPS`` is plausible); a USB camera's ``skipped``
uses its driver's timestamps (OpenCV's V4L2 ``pos_msec``) within a connection only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Literal, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
from pydantic import Field, model_validator

from lineguard.config import StrictModel
from lineguard.data.imaging import MAX_FILE_BYTES, ImageFileError, decode_image, to_uint8
from lineguard.edge.verdict import Frame
from lineguard.files import FileError, printable, read_regular

from .base import Capture, EndOfSource, InspectError, Source, SourceState, empty_image

__all__ = ["CameraConfig", "FolderSource", "FolderSourceConfig", "GenicamSource", "GenicamSourceConfig",
           "StreamSource", "StreamSourceConfig", "VideoSource", "VideoSourceConfig", "open_camera"]

log = logging.getLogger("lineguard.inspect")

FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer"  # set for RTSP unless the user set the variable
_PARTIAL = (".tmp", ".part", "~")  # names of files still being written (a writer renames them when done)
_JOIN_S = 0.5  # how long stop() waits for a reader thread before leaving it (a daemon) to finish by itself


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


class StreamSourceConfig(StrictModel):
    """A live stream: an RTSP URL (``rtsp``) or a USB camera's index or device path (``usb``)."""

    kind: Literal["rtsp", "usb"] = "rtsp"
    url: Union[int, str] = Field(..., description="rtsp://host:port/path, or a USB camera index / /dev/videoN")
    timeout_s: float = Field(2.0, gt=0.0, description="bound of one connect and one frame read")
    backoff_s: float = Field(0.5, gt=0.0, description="first wait between reconnect attempts, doubling")
    backoff_max_s: float = Field(10.0, gt=0.0, description="longest wait between reconnect attempts")
    fps: Optional[float] = Field(None, gt=0.0, description="frame rate for the loss accounting (default: the "
                                                           "stream's)")
    queue: int = Field(4, ge=1, description="frames held for read(); when full the oldest is dropped, counted lost")

    @model_validator(mode="after")
    def _usable(self) -> StreamSourceConfig:
        if self.kind == "rtsp" and not (isinstance(self.url, str) and self.url.lower().startswith(("rtsp://",
                                                                                                    "rtsps://"))):
            raise ValueError(f"an rtsp source needs an rtsp:// URL, got {self.url!r}")
        if self.kind == "usb" and isinstance(self.url, int) and self.url < 0:
            raise ValueError(f"a USB camera index is >= 0, got {self.url}")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_s ({self.backoff_s})")
        return self


class GenicamSourceConfig(StrictModel):
    """A GenICam (GigE Vision / USB3 Vision) camera through its GenTL producer (``cti``) and harvesters."""

    kind: Literal["genicam"] = "genicam"
    cti: Path = Field(..., description="the camera maker's GenTL producer (.cti)")
    serial: Optional[str] = Field(None, description="the camera's serial number (default: the first camera)")
    trigger: bool = Field(True, description="TriggerMode On, TriggerSource Line1 (one frame per part)")
    timeout_s: float = Field(1.0, gt=0.0, description="longest wait for one frame")


CameraConfig = Union[FolderSourceConfig, VideoSourceConfig, StreamSourceConfig, GenicamSourceConfig]


def _rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR frame as lineguard's RGB (gray stays gray)."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 and image.shape[2] == 3 else image


def _capture(source: Source, image: np.ndarray, meta: Dict[str, str], timestamp: Optional[float] = None,
             error: Optional[str] = None, encoded: Optional[bytes] = None) -> Capture:
    seq = source.next_seq()
    frame = Frame(image=image, frame_id=seq, timestamp=time.time() if timestamp is None else timestamp,
                  source_id=source.source_id)
    return Capture(frame=frame, seq=seq, error=error, encoded=encoded, meta=meta)


_OPEN_LOCK = threading.Lock()  # OpenCV reads the FFmpeg options from the environment when it opens


def _video_capture(*args: Any, options: Optional[str] = None) -> Any:
    """``cv2.VideoCapture(*args)`` with ``OPENCV_FFMPEG_CAPTURE_OPTIONS=options`` for this open only, unless the
    user set the variable (theirs holds for every open): the RTSP options would drop a video file's first frame."""
    with _OPEN_LOCK:
        ours = options is not None and FFMPEG_OPTIONS not in os.environ
        if ours:
            os.environ[FFMPEG_OPTIONS] = options
        try:
            return cv2.VideoCapture(*args)
        finally:
            if ours:
                del os.environ[FFMPEG_OPTIONS]


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
            return _capture(self, decode_image(data), {"file": shown}, encoded=data)
        except FileError as e:
            why = e.reason
        except ImageFileError as e:
            why = str(e)
        except Exception as e:  # a decoder's unforeseen failure is still a decided part, never a traceback
            why = f"cannot decode ({type(e).__name__}: {e})"
        return _capture(self, empty_image(), {"file": shown}, error=f"{shown}: {why}", encoded=data)


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
        cap = _video_capture(str(self.cfg.path))
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
        return _capture(self, _rgb(image), meta)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _close(self) -> None:
        with self._lock:
            self._release()


def _redacted(url: Union[int, str]) -> str:
    """The URL without its password (for logs and capture details)."""
    if isinstance(url, int):
        return str(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class StreamSource(Source):
    """A live RTSP or USB stream, read by a daemon thread (see the module docstring for the accounting).
    :meth:`start` returns once the first connect succeeded or failed (at most ``timeout_s`` + 0.5 s); a failed
    one leaves the source RECONNECTING, trying again with backoff until :meth:`stop`."""

    def __init__(self, cfg: StreamSourceConfig, source_id: str) -> None:
        super().__init__(source_id)
        self.cfg = cfg
        self.kind = cfg.kind
        self.where = _redacted(cfg.url)
        self.connections = 0  # successful connects (the first, then one per reconnect)
        self.dropped = 0  # discarded by the full hand-over queue
        self.skipped = 0  # missing by the stream's timestamps
        self.outage = 0  # estimated from the wall clock across reconnects
        self._lock = threading.Lock()  # the reader thread's state changes vs stop()
        self._halt = threading.Event()  # this run's stop signal (a new run gets a new one)
        self._answered = threading.Event()  # the first connect of this run succeeded or failed
        self._queue: queue.Queue = queue.Queue(cfg.queue)
        self._thread: Optional[threading.Thread] = None

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "connections": self.connections, "dropped": self.dropped,
                "skipped": self.skipped, "outage": self.outage}

    def stop(self) -> None:
        with self._lock:  # after this no reader thread changes the state any more
            self._stop.set()
            self._halt.set()
            self._answered.set()
        super().stop()

    def _open(self) -> None:
        if self.cfg.kind == "rtsp":
            has_backend = getattr(getattr(cv2, "videoio_registry", None), "hasBackend", None)
            if has_backend is not None and not has_backend(cv2.CAP_FFMPEG):
                raise InspectError(f"rtsp source {self.where}: this OpenCV build has no FFmpeg backend "
                                   f"(pip install opencv-python-headless)")
        with self._lock:
            if self.stopping:  # stop() came first
                return
            self._halt, self._answered = threading.Event(), threading.Event()
            self._queue = queue.Queue(self.cfg.queue)
            self._thread = threading.Thread(target=self._run, args=(self._halt, self._queue, self._answered),
                                            name=f"camera-{self.source_id}", daemon=True)
            self._thread.start()
        self._answered.wait(self.cfg.timeout_s + 0.5)
        with self._lock:
            if self.state is SourceState.CONNECTING and not self._halt.is_set():  # a connect slower than asked
                self.state = SourceState.RECONNECTING

    def _grab(self, timeout: float) -> Optional[Capture]:
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is None:  # stop() woke us
            return None
        image, arrived, meta = item
        return _capture(self, image, meta, timestamp=arrived)

    def _close(self) -> None:
        self._halt.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wake a read() waiting on an empty queue
        if self._thread is not None:
            self._thread.join(_JOIN_S)  # a connect or grab still blocked ends by its own timeout, then releases
        self._thread = None

    def _set_state(self, halt: threading.Event, state: SourceState) -> None:
        with self._lock:
            if not halt.is_set():
                self.state = state

    def _connect(self) -> Optional[Any]:
        """An opened ``cv2.VideoCapture``, or None."""
        try:
            if self.cfg.kind == "rtsp":
                ms = int(self.cfg.timeout_s * 1000)
                params: List[int] = []
                for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
                    if hasattr(cv2, name):
                        params += [getattr(cv2, name), ms]
                cap = _video_capture(self.cfg.url, cv2.CAP_FFMPEG, params, options=RTSP_OPTIONS)
            else:
                url = self.cfg.url
                cap = _video_capture(int(url) if isinstance(url, str) and url.isdigit() else url)
        except cv2.error as e:
            log.debug("camera %s: connect to %s failed: %s", self.source_id, self.where, e)
            return None
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _run(self, halt: threading.Event, frames: queue.Queue, answered: threading.Event) -> None:
        backoff = self.cfg.backoff_s
        last: Optional[float] = None  # when the last frame before a loss arrived (at the stream's pace)
        failures = 0
        try:
            while not halt.is_set():
                cap, got = self._connect(), None
                if cap is not None:
                    self.connections += 1
                    if self.connections > 1:
                        self.reconnects += 1
                        log.info("camera %s: reconnected to %s", self.source_id, self.where)
                    self._set_state(halt, SourceState.RUNNING)
                    answered.set()
                    try:
                        got = self._pump(cap, halt, frames, last)
                    finally:
                        cap.release()
                if halt.is_set():
                    break
                self._set_state(halt, SourceState.RECONNECTING)
                answered.set()
                if got is not None:  # it ran, then broke: try again at once, with short waits after that
                    log.warning("camera %s: stream %s lost, reconnecting", self.source_id, self.where)
                    last, backoff, failures = got, self.cfg.backoff_s, 0
                    continue
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "camera %s: no stream from %s, retrying in %.1f s", self.source_id, self.where, backoff)
                if halt.wait(backoff):
                    break
                backoff = min(2 * backoff, self.cfg.backoff_max_s)
        finally:
            answered.set()

    def _pump(self, cap: Any, halt: threading.Event, frames: queue.Queue, last: Optional[float]) -> Optional[float]:
        """Read one connection's frames until it breaks or ``halt``. ``last`` and the result: when the last frame
        of a connection would have arrived at the connection's steady pace (None: no frame or no frame rate)."""
        fps = self.cfg.fps or cap.get(cv2.CAP_PROP_FPS)
        step = 1.0 / fps if 0.5 <= fps <= 1000 else None  # s per frame; None: no loss accounting
        pos = prev = arrived = offset = None  # offset: arrival - pos of the frames that came at the stream's pace
        while not halt.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                break
            before, arrived, pos = arrived, time.time(), cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
            if step is not None:
                if prev is None:  # a connection's first frame; RTSP: pos counts from the connection's first packet
                    lead = pos if self.cfg.kind == "rtsp" else 0.0
                    self._lose(skipped=max(0, round(lead / step)))
                    if last is not None:
                        self._lose(outage=max(0, round((arrived - lead - last) / step) - 1))
                else:
                    self._lose(skipped=max(0, round((pos - prev) / step) - 1))
                if before is None or arrived - before >= step / 2:  # not a burst (a decoder flushed at the end)
                    offset = arrived - pos if offset is None else min(offset, arrived - pos)
            prev = pos
            meta = {"url": self.where, "connection": str(self.connections), "pos_msec": f"{1000 * pos:.1f}",
                    "pos_frames": str(int(cap.get(cv2.CAP_PROP_POS_FRAMES)))}
            self._hand_over(frames, (_rgb(image), arrived, meta))
        return None if offset is None or pos is None else offset + pos

    def _lose(self, skipped: int = 0, outage: int = 0) -> None:
        self.skipped += skipped
        self.outage += outage
        self.lost += skipped + outage

    def _hand_over(self, frames: queue.Queue, item: Tuple[np.ndarray, float, Dict[str, str]]) -> None:
        while True:
            try:
                frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    frames.get_nowait()
                except queue.Empty:  # read() took one meanwhile
                    continue
                self.dropped += 1
                self.lost += 1


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
            return _capture(self, empty_image(), meta, error=f"pixel format {fmt}: lineguard reads Mono8..16, "
                                                              f"RGB8, BGR8")
        try:
            image = to_uint8(pixels[..., 0] if m.group(1) == "Mono" else pixels, int(m.group(2)))
        except ImageFileError as e:
            return _capture(self, empty_image(), meta, error=f"{fmt} frame: {e}")
        return _capture(self, np.ascontiguousarray(image[..., ::-1] if m.group(1) == "BGR" else image), meta)

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
