"""A real RTSP stream on 127.0.0.1 through :class:`StreamSource`: frames, a server that dies mid-run (RECONNECTING,
reads that keep their timeout), the server's return (one reconnect, frames again), and the frame accounting.

The server is GStreamer's RTSP server (Debian: ``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly``), run by the system Python that has ``gi``. It plays a
free-running camera: frame ``n = int((now - t0) * fps)`` carries ``n`` burned in as 16 black/white bands, and a
restarted server goes on counting from the same ``t0``, so the frames missed across the outage are known here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from lineguard.inspect.base import Capture, SourceState
from lineguard.inspect.stream import StreamSource, StreamSourceConfig

pytestmark = pytest.mark.slow

FPS, BITS, WIDTH = 25, 16, 320
PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-ugly")
CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "assert all(Gst.ElementFactory.find(e) for e in ('appsrc', 'videoconvert', 'x264enc', 'rtph264pay'))")
SERVER = r'''
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

port, t0, fps, bits, width = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
height = 240
Gst.init(None)


def image(n):  # n in `bits` vertical bands, most significant left, white = 1
    return b"".join((b"\xff" if (n >> (bits - 1 - i)) & 1 else b"\x00") * (width // bits) for i in range(bits)) * height


class Camera:  # pushes frame n = int((now - t0) * fps) when it is due; timestamps follow n
    def __init__(self, src):
        self.src, self.first, self.last = src, None, None
        GLib.timeout_add(5, self.tick)

    def tick(self):
        n = int((time.time() - t0) * fps)
        if self.first is None:
            self.first = self.last = n - 1
        while self.last < n:
            self.last += 1
            buf = Gst.Buffer.new_wrapped(image(self.last))
            buf.pts, buf.duration = (self.last - self.first) * Gst.SECOND // fps, Gst.SECOND // fps
            if self.src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return False
            print("sent", self.last, flush=True)
        return True


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(port))
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( appsrc name=src is-live=true format=time caps=video/x-raw,format=GRAY8,width={width},height={height},"
    f"framerate={fps}/1 ! videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency speed-preset=ultrafast "
    f"key-int-max={fps // 2} ! rtph264pay name=pay0 pt=96 config-interval=1 )")
factory.set_shared(True)
factory.connect("media-configure", lambda f, media: Camera(media.get_element().get_by_name("src")))
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit("cannot listen on port %d" % port)
print("ready", flush=True)
GLib.MainLoop().run()
'''


def _gst_python() -> Optional[str]:
    """A Python that can run the server (Debian's, with python3-gi), or None."""
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(exe).is_file():
            try:
                if subprocess.run([exe, "-c", CHECK], capture_output=True, timeout=30).returncode == 0:
                    return exe
            except subprocess.TimeoutExpired:
                continue
    return None


def _gst_python_or_skip() -> str:
    """The Python that runs the server; skips without it, fails under CI (``.ci/run`` installs it)."""
    python = _gst_python()
    if python is None:
        why = f"needs GStreamer's RTSP server for the system python3: apt-get install {PACKAGES}"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/run installs it)")
        pytest.skip(why)
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


class Server:
    """One run of the RTSP test camera; ``sent()`` are the frame numbers it pushed."""

    def __init__(self, python: str, script: Path, port: int, t0: float, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([python, str(script), str(port), repr(t0), str(FPS), str(BITS), str(WIDTH)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not _wait(lambda: b"ready" in log.read_bytes() or self.proc.poll() is not None, 20):
            self.kill()
            pytest.fail("the RTSP test server did not start in 20 s")
        assert self.proc.poll() is None, log.read_text()

    def sent(self) -> List[int]:
        return [int(line.split()[1]) for line in self.log.read_text().splitlines() if line.startswith("sent ")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _number(cap: Capture) -> int:
    row = cap.frame.image[cap.frame.image.shape[0] // 2, WIDTH // BITS // 2::WIDTH // BITS, 0].astype(int)
    assert row.size == BITS and np.all(np.abs(row - 128) > 64), f"frame {cap.seq}: unreadable bands {row}"
    return int("".join("1" if v > 128 else "0" for v in row), 2)


def _read_for(src: StreamSource, seconds: float, into: List[Capture], timeout: float = 0.2) -> List[float]:
    """Read for ``seconds``; the duration of every read that returned None."""
    empty = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        cap = src.read(timeout=timeout)
        if cap is None:
            empty.append(time.monotonic() - t)
        else:
            into.append(cap)
    return empty


def test_rtsp_stream_survives_a_server_restart(tmp_path: Path) -> None:
    python = _gst_python_or_skip()
    script = tmp_path / "rtsp_camera.py"
    script.write_text(SERVER)
    port, t0 = _free_port(), time.time()
    servers: List[Server] = []
    src = StreamSource(StreamSourceConfig(kind="rtsp", url=f"rtsp://127.0.0.1:{port}/cam", timeout_s=2.0,
                                          backoff_s=0.2, backoff_max_s=0.8), "cam-1")
    caps: List[Capture] = []
    try:
        servers.append(Server(python, script, port, t0, tmp_path / "server-1.log"))
        src.start()
        assert src.state is SourceState.RUNNING and src.connections == 1
        _read_for(src, 1.5, caps)
        assert len(caps) >= 10, "frames flow"
        time.sleep(0.6)  # a slow consumer: the reader's queue (4) overflows, the oldest are dropped and counted
        _read_for(src, 0.6, caps)
        assert src.dropped > 0
        servers[0].kill()
        t_kill = time.monotonic()
        assert _wait(lambda: src.state is SourceState.RECONNECTING, 5), src.state
        empty = _read_for(src, 2.0, caps)
        assert empty and max(empty) < 0.2 + 0.15, f"a read outlasted its timeout: {max(empty):.3f} s"
        assert src.state is SourceState.RECONNECTING and src.reconnects == 0
        n_before = len(caps)
        servers.append(Server(python, script, port, t0, tmp_path / "server-2.log"))
        t_back = time.monotonic()
        deadline = t_back + 15
        while time.monotonic() < deadline and not (len(caps) > n_before and caps[-1].meta["connection"] == "2"):
            _read_for(src, 0.1, caps)
        reconnect_s = time.monotonic() - t_back
        assert caps[-1].meta["connection"] == "2", "no frame after the server came back"
        _read_for(src, 1.0, caps)
        assert src.state is SourceState.RUNNING and src.reconnects == 1 and src.connections == 2
        t = time.monotonic()
        src.stop()
        assert time.monotonic() - t < 1.5
        print(f"\noutage {t_back - t_kill:.2f} s; first frame {reconnect_s:.2f} s after the server came back; "
              f"{src.describe()}")
    finally:
        src.stop()
        for server in servers:
            server.kill()

    # accounting: every camera frame from the first packet of connection 1 to the last frame handed over is a
    # capture or counted in lost (dropped + skipped exactly, the outage estimated from the wall clock)
    assert [c.seq for c in caps] == list(range(len(caps)))
    by_conn: Dict[str, List[Capture]] = {"1": [], "2": []}
    for c in caps:
        by_conn[c.meta["connection"]].append(c)
    numbers = {k: [_number(c) for c in v] for k, v in by_conn.items()}
    leads = {k: round(float(v[0].meta["pos_msec"]) * FPS / 1000) for k, v in by_conn.items()}
    inside = 0  # frames missing between two captures of one connection
    for ns in numbers.values():
        assert all(b > a for a, b in zip(ns, ns[1:])), "frames in order"
        inside += sum(b - a - 1 for a, b in zip(ns, ns[1:]))
    assert inside == src.dropped + src.skipped - leads["1"] - leads["2"]  # exact: queue drops and timestamp gaps
    gap = numbers["2"][0] - numbers["1"][-1] - 1  # camera frames between the last frame before and the first after
    assert abs(gap - (leads["2"] + src.outage)) <= 3, (gap, leads["2"], src.outage)
    for k, server in zip(("1", "2"), servers):  # the first packet a connection counts from was sent by the server
        assert numbers[k][0] - leads[k] >= server.sent()[0]
    span = numbers["2"][-1] - (numbers["1"][0] - leads["1"]) + 1
    assert abs(span - (len(caps) + src.lost)) <= 3
    print(f"camera frames {span}: handed over {len(caps)}, lost {src.lost} (dropped {src.dropped}, skipped "
          f"{src.skipped}, outage {src.outage}); outage gap {gap} vs accounted {leads['2'] + src.outage}")


def test_the_daemon_records_the_reconnect_and_the_lost_frames_and_the_report_shows_them(
        tmp_path: Path, split_sim, random_model_dir) -> None:
    """The line daemon on the RTSP camera while its server dies and comes back: every frame handed over is a part,
    the reconnect and the frames lost are events in the results database, equal to the source's own counts and
    the metrics, and the QA figures count them for the camera."""
    import sqlalchemy as sa

    from lineguard.edge.torch2onnx import torch2onnx
    from lineguard.inspect.config import LineConfig
    from lineguard.inspect.daemon import Line
    from lineguard.inspect.qa import qa_figures
    from lineguard.inspect.store import ResultStore

    python = _gst_python_or_skip()
    model = random_model_dir(tmp_path / "model", split_sim(24, 64, 0, 0.2, 0.2), "cnn_lite0", 64)
    torch2onnx(model)
    script = tmp_path / "rtsp_camera.py"
    script.write_text(SERVER)
    port, t0 = _free_port(), time.time()
    cfg = LineConfig.model_validate({
        "line": "line-7", "camera": "cam-rtsp", "db": str(tmp_path / "r.db"), "outputs": [], "metrics": {"port": 0},
        "model": {"path": str(model), "threads": 1}, "deadline": {"ms": 2000},
        "source": {"kind": "rtsp", "url": f"rtsp://127.0.0.1:{port}/cam", "timeout_s": 2.0, "backoff_s": 0.2,
                   "backoff_max_s": 0.8}})
    servers = [Server(python, script, port, t0, tmp_path / "server-1.log")]
    line = Line(cfg)
    runner = threading.Thread(target=line.run, kwargs={"install_signals": False})
    try:
        runner.start()
        assert _wait(lambda: line.counts["decided"] >= 10, 60), line.counts
        servers[0].kill()
        assert _wait(lambda: line.source is not None and line.source.state is SourceState.RECONNECTING, 10)
        time.sleep(1.0)
        servers.append(Server(python, script, port, t0, tmp_path / "server-2.log"))
        assert _wait(lambda: line.source.reconnects == 1, 20)
        decided = line.counts["decided"]
        assert _wait(lambda: line.counts["decided"] >= decided + 10, 30), "parts after the reconnect"
    finally:
        line.stop()
        runner.join(60)
        for server in servers:
            server.kill()
    src = line.source.describe()
    assert src["reconnects"] == 1 and src["lost"] > 0
    with ResultStore(cfg.db) as store:
        rows = store.rows()
    assert [r.source_seq for r in rows] == list(range(src["handed_over"])) and all(r.state == "final" for r in rows)
    engine = sa.create_engine(f"sqlite:///{cfg.db}")
    with engine.connect() as conn:
        events = conn.execute(sa.text("SELECT line, camera, kind, SUM(count) FROM events GROUP BY 1, 2, 3")).all()
    assert sorted(events) == [("line-7", "cam-rtsp", "frames-lost", src["lost"]),
                              ("line-7", "cam-rtsp", "reconnect", 1)]
    assert line.tel.reconnects._value.get() == 1 and line.tel.source_lost._value.get() == src["lost"]
    f = qa_figures(engine, t0 - 60, time.time() + 60, by="camera")
    assert [(c.camera, c.counts) for c in f.cameras] == [
        ("line-7/station-1/cam-rtsp", {"reconnect": 1, "frames-lost": src["lost"]})]
    assert f.parts == len(rows)
