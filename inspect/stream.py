"""A live stream on the line: an RTSP camera (OpenCV's FFmpeg backend) or a USB camera. Torch-free, Python 3.8.

    src = StreamSource(StreamSourceConfig(kind="rtsp", url="rtsp://10.0.0.5:554/stream1"), "camera-1")
    src.start(); cap = src.read(timeout=0.5); src.stop()

RTSP (OpenCV's FFmpeg backend) or a USB camera. A daemon reader thread grabs frames into a small queue, so
``read(timeout)`` never blocks longer than asked; a lost stream is RECONNECTING and is re-opened with exponential
backoff (``reconnects`` counts the successes). An RTSP open gets
``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp|fflags;nobuffer`` unless the variable is set (then it holds for
every open); opens take turns, so a connect that hangs holds other opens of this process for ``timeout_s``.
``nobuffer`` keeps the latency low but drops the packets FFmpeg probes when it opens (about 1.2 s of a 25 fps H.264
stream in the RTSP test, counted in ``skipped``); ``rtsp_transport;tcp`` alone delivers them late, in a burst,
instead.

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
import logging
import os
import queue
import threading
import time
from typing import Any, Dict, List, Literal, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
from pydantic import Field, model_validator

from lineguard.config import StrictModel

from .base import Capture, InspectError, Source, SourceState

__all__ = ["FFMPEG_OPTIONS", "RTSP_OPTIONS", "StreamSource", "StreamSourceConfig", "rgb", "video_capture"]

log = logging.getLogger("lineguard.inspect")

FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer"  # set for RTSP unless the user set the variable
_JOIN_S = 0.5  # how long stop() waits for a reader thread before leaving it (a daemon) to finish by itself


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


def rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR frame as lineguard's RGB (gray stays gray)."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 and image.shape[2] == 3 else image


_OPEN_LOCK = threading.Lock()  # OpenCV reads the FFmpeg options from the environment when it opens


def video_capture(*args: Any, options: Optional[str] = None) -> Any:
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
        return self.capture(image, meta, timestamp=arrived)

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
                cap = video_capture(self.cfg.url, cv2.CAP_FFMPEG, params, options=RTSP_OPTIONS)
            else:
                url = self.cfg.url
                cap = video_capture(int(url) if isinstance(url, str) and url.isdigit() else url)
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
            self._hand_over(frames, (rgb(image), arrived, meta))
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


