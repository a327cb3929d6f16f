"""What the daemon tells the plant: Prometheus metrics, ``/healthz`` and ``/readyz``, and systemd's notify
protocol. Torch-free, Python 3.8.

    tel = Telemetry(line="line-1", camera="camera-1")
    server = serve(tel, host="127.0.0.1", port=9108, ready=lambda: [])   # /metrics /healthz /readyz
    tel.decisions.labels(decision="NG", cls="scratch").inc()
    notify = Notifier.from_env(); notify.ready(); notify.watchdog()       # from the frame loop only

Names follow Prometheus' rules: the ``lineguard_inspect_`` prefix, base units (seconds, bytes), ``_total`` on
counters, no unbounded labels (no serial numbers). ``..._judged_total{outcome}`` exists when the source knows
the truth (the simulator), so ``rate(..._judged_total{outcome="correct"}[5m]) / rate(..._judged_total[5m])``
is the line's accuracy (``deploy/alert-rules.yml``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

__all__ = ["Notifier", "Telemetry", "serve"]

log = logging.getLogger("lineguard.inspect")
P = "lineguard_inspect_"
LATENCY_BUCKETS = (.005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, 1.0, 2.0, 5.0)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))


class _Gpu:
    """GPU utilisation and memory through NVML (``pynvml``), where it is installed and a GPU is there."""

    def __init__(self) -> None:
        import pynvml  # optional: absent on most line computers; the Jetson has no NVML (tegrastats instead)

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        util = GaugeMetricFamily(P + "gpu_utilization_ratio", "GPU busy share", labels=["gpu"])
        mem = GaugeMetricFamily(P + "gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        for i, h in enumerate(self.handles):
            util.add_metric([str(i)], self.nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
            mem.add_metric([str(i)], float(self.nvml.nvmlDeviceGetMemoryInfo(h).used))
        return [util, mem]


class Telemetry:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self, line: str, camera: str) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        try:
            r.register(_Gpu())  # type: ignore[arg-type]
        except Exception as e:  # no pynvml, no driver, no GPU: no GPU metrics (said once)
            log.debug("no GPU metrics: %s", e)
        Info(P + "line", "Where this daemon inspects", registry=r).info({"line": line, "camera": camera})
        self.model = Info(P + "model", "The model deciding now", registry=r)
        self.frames = Counter(P + "frames", "Frames the source handed over", registry=r)
        self.decisions = Counter(P + "decisions", "Parts decided, by decision and class", ["decision", "cls"],
                                 registry=r)
        self.failsafe = Counter(P + "failsafe_rejects", "Parts rejected fail-safe (NG without a model decision)",
                                ["reason"], registry=r)
        self.dropped = Counter(P + "frames_dropped", "Frames not inspected (free-run: superseded)", ["reason"],
                               registry=r)
        self.deadline_misses = Counter(P + "deadline_misses", "Parts not decided before their deadline", registry=r)
        self.judged = Counter(P + "judged", "Decisions on parts whose true class is known", ["outcome"], registry=r)
        self.latency = Histogram(P + "capture_to_decision_seconds", "Capture to decision", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.inference = Histogram(P + "inference_duration_seconds", "One model call (a micro-batch)",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram(P + "batch_frames", "Frames per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
                               registry=r)
        self.ng_score = Histogram(P + "ng_score", "1 - p(OK) of decided parts, by decided class", ["cls"],
                                  buckets=SCORE_BUCKETS, registry=r)
        self.queue = Gauge(P + "queue_depth_frames", "Frames waiting for inference", registry=r)
        self.reconnects = Counter(P + "camera_reconnects", "Camera re-connections after a loss", registry=r)
        self.source_lost = Counter(P + "source_lost_frames", "Frames the camera reported lost", registry=r)
        self.signals = Counter(P + "reject_signals", "Reject-output writes acknowledged", ["output"], registry=r)
        self.signal_failures = Counter(P + "reject_signal_failures", "Reject-output writes that failed after retries",
                                       ["output"], registry=r)
        self.results_failures = Counter(P + "results_write_failures", "Results-database writes that failed",
                                        registry=r)
        self.archive_free = Gauge(P + "archive_free_bytes", "Free space where images are archived", registry=r)
        self.archive_failures = Counter(P + "archive_failures", "Images not archived", ["reason"], registry=r)
        self.model_swaps = Counter(P + "model_swaps", "Model reloads, by result (swapped, refused)", ["result"],
                                   registry=r)
        self.up = Gauge(P + "ready", "1 when the model is loaded, the source connected and the results writable",
                        registry=r)


def serve(tel: Telemetry, host: str, port: int, ready: Callable[[], List[str]]) -> ThreadingWSGIServer:
    """Serve ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (200 when ``ready()`` returns no
    reason, else 503 with the reasons as JSON) in a daemon thread; ``shutdown()`` stops it."""
    metrics = make_wsgi_app(tel.registry)

    def app(environ: Dict[str, Any], start: Callable[..., Any]) -> List[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            why = ready()
            start("503 Service Unavailable" if why else "200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"ready": not why, "reasons": why}).encode() + b"\n"]
        return metrics(environ, start)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # scrapes are not log lines
            pass

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class Notifier:
    """systemd's notify protocol (``Type=notify``): READY=1 after warm-up, WATCHDOG=1 at most every half of
    ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)), STOPPING=1 at shutdown. Without ``NOTIFY_SOCKET`` it does
    nothing."""

    def __init__(self, address: Optional[str], watchdog_s: Optional[float]) -> None:
        self.address = address
        self.interval = watchdog_s / 2 if watchdog_s else None
        self._last = 0.0
        self._sock: Optional[socket.socket] = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> Notifier:
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watchdog = int(usec) / 1e6 if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(address, watchdog)

    def send(self, message: str) -> None:
        if self._sock is None or not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(message.encode(), target)
        except OSError as e:  # systemd gone or the socket full: never a reason to stop inspecting
            log.debug("sd_notify %s: %s", message, e)

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Call from the frame loop: pings when half the watchdog interval has passed since the last one."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
