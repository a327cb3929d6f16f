"""The camera sources: a folder read once and watched, a video file, a stream's stop from every state (a closed
port, a server that never answers), the GenICam source without harvesters. The real RTSP stream is
tests/integration/test_rtsp.py."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import pytest

from lineguard.files import printable
from lineguard.inspect.base import Capture, EndOfSource, InspectError, Source, SourceState
from lineguard.inspect.cameras import (
    FolderSource,
    FolderSourceConfig,
    GenicamSource,
    GenicamSourceConfig,
    VideoSource,
    VideoSourceConfig,
    open_camera,
)
from lineguard.inspect.stream import FFMPEG_OPTIONS, StreamSource, StreamSourceConfig


def _png(value: int, size=(20, 30)) -> bytes:
    """The bytes of a gray PNG filled with ``value``."""
    ok, data = cv2.imencode(".png", np.full(size, value, np.uint8))
    assert ok
    return data.tobytes()


def _drain(src: Source, timeout: float = 1.0) -> List[Capture]:
    caps = []
    with pytest.raises(EndOfSource):
        while True:
            cap = src.read(timeout)
            assert cap is not None
            caps.append(cap)
    return caps


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- folder, once -----------------------------------------------------------------------------------------------


def test_folder_once_hands_over_every_file_in_name_order_bad_ones_as_errors(tmp_path: Path) -> None:
    good = {"b.png": 20, "a.png": 10, "c d é.PNG": 30, "odd\nname.png": 40}
    for name, value in good.items():
        (tmp_path / name).write_bytes(_png(value))
    valid = _png(99, (64, 64))
    bad = {"corrupt.png": os.urandom(300), "empty.png": b"", "truncated.png": valid[: len(valid) // 2],
           "text.png": b"not an image at all\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / os.fsdecode(b"raw\xff.png")).write_bytes(_png(50))  # a name that is not UTF-8
    for ignored in (".hidden.png", "half.png.tmp", "notes.txt"):
        (tmp_path / ignored).write_bytes(_png(1))
    (tmp_path / "folder.png").mkdir()

    src = open_camera(FolderSourceConfig(path=tmp_path), "cam")
    assert isinstance(src, FolderSource)
    src.start()
    caps = _drain(src)
    assert src.state is SourceState.ENDED
    names = sorted([*good, *bad, os.fsdecode(b"raw\xff.png")])
    assert [c.meta["file"] for c in caps] == [printable(n) for n in names]
    assert [c.seq for c in caps] == [c.frame.frame_id for c in caps] == list(range(len(names)))
    for cap, name in zip(caps, names):
        assert cap.frame.source_id == "cam"
        if name in bad:
            assert cap.error is not None and cap.error.startswith(f"{name}: ")
            assert cap.frame.image.size == 0
        else:
            assert cap.error is None and cap.frame.image.dtype == np.uint8 and cap.frame.image.shape == (20, 30)
            assert cap.encoded == (tmp_path / name).read_bytes()
    assert "empty file" in caps[names.index("empty.png")].error
    assert caps[names.index("odd\nname.png")].meta["file"] == "odd\\nname.png"  # one printable line
    assert caps[names.index(os.fsdecode(b"raw\xff.png"))].meta["file"] == "raw\\xff.png"
    with pytest.raises(EndOfSource):
        src.read(0.1)
    src.stop()
    assert src.state is SourceState.STOPPED


def test_folder_patterns_and_a_missing_folder(tmp_path: Path) -> None:
    for name in ("a.png", "b.JPG", "c.bmp"):
        (tmp_path / name).write_bytes(_png(7))
    src = FolderSource(FolderSourceConfig(path=tmp_path, pattern=["*.png", "*.jpg"]), "cam")
    src.start()
    assert [c.meta["file"] for c in _drain(src)] == ["a.png", "b.JPG"]
    gone = FolderSource(FolderSourceConfig(path=tmp_path / "nope"), "cam")
    with pytest.raises(InspectError, match="not a folder"):
        gone.start()
    gone.stop()


# --- folder, watch ----------------------------------------------------------------------------------------------


def _slow_write(path: Path, data: bytes, pieces: int, pause: float) -> threading.Thread:
    def write() -> None:
        with open(path, "wb") as f:
            for i in range(pieces):
                f.write(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
                f.flush()
                time.sleep(pause)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_folder_watch_hands_over_new_files_once_and_complete(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(10))
    src = FolderSource(FolderSourceConfig(path=tmp_path, watch=True, poll_s=0.2), "cam")
    src.start()
    first = src.read(1.0)
    assert first is not None and first.meta["file"] == "a.png" and first.error is None
    assert src.read(0.3) is None, "the same file twice"

    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (256, 256), np.uint8))
    big = encoded.tobytes()
    writer = _slow_write(tmp_path / "b.png", big, pieces=10, pause=0.05)  # grows for 0.5 s, several polls
    cap = src.read(2.0)
    writer.join(2)
    assert ok and cap is not None and cap.meta["file"] == "b.png"
    assert cap.error is None and cap.encoded == big, "handed over half-written"
    assert [first.seq, cap.seq] == [0, 1] and src.state is SourceState.RUNNING
    src.stop()


def test_folder_watch_renamed_and_rewritten_files(tmp_path: Path) -> None:
    src = FolderSource(FolderSourceConfig(path=tmp_path, watch=True, poll_s=0.1), "cam")
    src.start()
    (tmp_path / "c.png.tmp").write_bytes(_png(30))  # the usual atomic hand-off: write, then rename
    assert src.read(0.3) is None
    os.replace(tmp_path / "c.png.tmp", tmp_path / "c.png")
    cap = src.read(1.0)
    assert cap is not None and cap.meta["file"] == "c.png" and int(cap.frame.image.max()) == 30
    assert src.read(0.3) is None
    (tmp_path / "c.png").write_bytes(_png(31))  # rewritten: a new file under an old name
    again = src.read(1.0)
    assert again is not None and again.meta["file"] == "c.png" and int(again.frame.image.max()) == 31
    assert [cap.seq, again.seq] == [0, 1]
    src.stop()


def test_folder_watch_stop_ends_a_blocked_read(tmp_path: Path) -> None:
    src = FolderSource(FolderSourceConfig(path=tmp_path, watch=True), "cam")
    src.start()
    got: List[Optional[Capture]] = []
    reader = threading.Thread(target=lambda: got.append(src.read(10.0)))
    reader.start()
    time.sleep(0.3)
    t = time.monotonic()
    src.stop()
    reader.join(2)
    assert not reader.is_alive() and got == [None] and time.monotonic() - t < 0.5
    with pytest.raises(EndOfSource):
        src.read(0.1)


# --- video file -------------------------------------------------------------------------------------------------


def test_video_file_frames_in_order_then_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FFMPEG_OPTIONS, raising=False)  # a user's "fflags;nobuffer" would drop the first frame
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(8):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 0] = 30 * i  # blue rises, red stays 0
        writer.write(bgr)
    writer.release()

    src = open_camera(VideoSourceConfig(path=path), "cam")
    assert isinstance(src, VideoSource)
    src.start()
    caps = _drain(src)
    assert [c.seq for c in caps] == list(range(8)) and src.state is SourceState.ENDED
    blue = [float(c.frame.image[..., 2].mean()) for c in caps]  # RGB: blue is the last channel
    assert all(c.frame.image.shape == (48, 64, 3) and c.frame.image[..., 0].mean() < 5 for c in caps)
    assert all(abs(b - 30 * i) < 6 for i, b in enumerate(blue)), blue
    assert caps[0].meta["file"] == "clip.avi"
    src.stop()


def test_video_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(InspectError, match="no such file"):
        VideoSource(VideoSourceConfig(path=tmp_path / "nope.mp4"), "cam").start()
    (tmp_path / "text.mp4").write_text("not a video")
    src = VideoSource(VideoSourceConfig(path=tmp_path / "text.mp4"), "cam")
    with pytest.raises(InspectError, match="cannot open"):
        src.start()
    src.stop()
    assert src.state is SourceState.STOPPED


# --- stop from every state --------------------------------------------------------------------------------------


def _stopped_quickly(src: Source) -> None:
    t = time.monotonic()
    src.stop()
    src.stop()  # idempotent
    assert time.monotonic() - t < 1.5
    assert src.state is SourceState.STOPPED
    with pytest.raises(EndOfSource):
        src.read(0.1)


def test_stop_before_start_and_after_the_end(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(1))
    configs = [FolderSourceConfig(path=tmp_path), VideoSourceConfig(path=tmp_path / "v.avi"),
               StreamSourceConfig(url="rtsp://127.0.0.1:1/x"), GenicamSourceConfig(cti=tmp_path / "x.cti")]
    for cfg in configs:
        src = open_camera(cfg, "cam")
        assert src.state is SourceState.NOT_STARTED
        _stopped_quickly(src)
    ended = open_camera(FolderSourceConfig(path=tmp_path), "cam")
    ended.start()
    assert ended.state is SourceState.RUNNING
    _drain(ended)
    assert ended.state is SourceState.ENDED
    _stopped_quickly(ended)


def test_stream_to_a_closed_port_keeps_trying_until_stopped() -> None:
    user_options = os.environ.get(FFMPEG_OPTIONS)
    port = _closed_port()
    src = StreamSource(StreamSourceConfig(url=f"rtsp://user:secret@127.0.0.1:{port}/cam", timeout_s=1.0,
                                          backoff_s=0.1, backoff_max_s=0.4), "cam")
    assert "secret" not in src.where
    t = time.monotonic()
    src.start()  # refused at once: RECONNECTING, not an exception
    assert time.monotonic() - t < 1.5
    assert src.state is SourceState.RECONNECTING
    for _ in range(3):
        t = time.monotonic()
        assert src.read(0.2) is None
        assert time.monotonic() - t < 0.4
    assert src.state is SourceState.RECONNECTING and src.connections == 0 and src.reconnects == 0
    assert FFMPEG_OPTIONS not in os.environ or os.environ[FFMPEG_OPTIONS] == user_options, "set for its opens only"
    thread = src._thread
    _stopped_quickly(src)
    assert thread is not None
    thread.join(1.5)
    assert not thread.is_alive()


def test_stop_while_a_connect_is_blocked() -> None:
    """A server that accepts and never answers: the connect blocks for timeout_s, stop() does not."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        src = StreamSource(StreamSourceConfig(url=f"rtsp://127.0.0.1:{port}/cam", timeout_s=3.0), "cam")
        starter = threading.Thread(target=src.start)
        starter.start()
        time.sleep(0.3)
        assert src.state is SourceState.CONNECTING
        _stopped_quickly(src)
        starter.join(1.0)
        assert not starter.is_alive(), "start() still waits for the connect"


# --- configs, GenICam -------------------------------------------------------------------------------------------


def test_configs() -> None:
    with pytest.raises(ValueError, match="rtsp:// URL"):
        StreamSourceConfig(url="http://cam/x")
    with pytest.raises(ValueError, match="backoff_max_s"):
        StreamSourceConfig(url="rtsp://cam/x", backoff_s=2, backoff_max_s=1)
    usb = StreamSourceConfig(kind="usb", url=0)
    assert isinstance(open_camera(usb, "cam"), StreamSource) and open_camera(usb, "cam").kind == "usb"
    assert isinstance(open_camera(GenicamSourceConfig(cti=Path("x.cti")), "cam"), GenicamSource)


def test_genicam_without_harvesters_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("harvesters", "harvesters.core", "genicam", "genicam.gentl"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when the package is missing
    src = GenicamSource(GenicamSourceConfig(cti=tmp_path / "producer.cti"), "cam")
    with pytest.raises(InspectError, match="pip install harvesters"):
        src.start()
    _stopped_quickly(src)
