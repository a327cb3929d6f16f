"""The camera loop (roboflow inference's shape): source -> bounded queue -> inference -> results writer ->
reject outputs, with the image archive and the metrics beside it. Every part the source hands over ends as
exactly one final row in the results database: decided by the model, or rejected fail-safe (NG) with a reason.

    line = Line(cfg)              # LineConfig
    line.run()                    # until the source ends, or stop() (SIGTERM): queued parts are decided first

Threads, each with one job, so that a slow stage never stalls the frame loop:

* capture: reads the source, stamps the capture time, prepares (resizes) the frame off the inference thread,
  hands the part to the writer (its row) and to the inference queue. Trigger mode: a full queue rejects the
  part (NG ``overflow``), never a silent drop; free-run: only the latest frame waits, older ones are counted
  as dropped (``superseded``) and get no row (they are not parts).
* inference (the frame loop; it pings systemd's watchdog): takes what the queue holds, up to ``batch``, as one
  micro-batch; parts that can no longer be decided in time are rejected (NG ``deadline``) before the model
  runs; bad frames are NG ``bad-frame``; one decision rule (``lineguard.edge.verdict.decide``); the model is
  swapped between two batches.
* writer: the only thread that touches the database; group commits (one transaction per wake-up). A part's
  row is written at capture (pending), gets its decision, and only then its reject signal is sent; the row is
  final once every output acknowledged or failed within the deadline. On start-up pending rows of a killed
  run are resolved as NG ``crash-recovered``.
* one worker per reject output (``sinks.SinkWorker``), one archive worker, the model watcher, the metrics
  server.

Torch-free, Python 3.8.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import signal
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lineguard import LineguardError
from lineguard.edge.verdict import Decision, DecisionPolicy, decide

from .base import Capture, EndOfSource, InspectError, Source
from .cameras import open_camera
from .config import LineConfig, SimSourceConfig, load_line_config
from .models import LiveModel, ModelWatcher, load_live
from .results import LinePart, Results
from .simcam import SimSource
from .telemetry import Notifier, Telemetry, serve

__all__ = ["Line", "LinePart", "open_source"]

log = logging.getLogger("lineguard.inspect")
_END = object()  # the capture thread is done
MIN_SIDE = 16  # px: a smaller frame is a bad frame (a camera's broken transfer), as in the data layer


def open_source(cfg: LineConfig) -> Source:
    if isinstance(cfg.source, SimSourceConfig):
        return SimSource(cfg.source, cfg.camera)
    return open_camera(cfg.source, cfg.camera)


class Line:
    """One camera's inspection loop."""

    def __init__(self, cfg: LineConfig, config_path: Optional[str] = None, overrides: Tuple[str, ...] = ()) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides
        self.run_id = uuid.uuid4().hex[:12]
        self.tel = Telemetry(cfg.line, cfg.camera)
        self.notify = Notifier.from_env()
        self.deadline_s = cfg.deadline.seconds
        self._paced = isinstance(cfg.source, SimSourceConfig) and cfg.source.rate == 0
        self._stop = threading.Event()  # stop capturing, drain, exit
        self._done = threading.Event()  # inference finished (queue drained)
        self._capturing = threading.Event()  # the capture thread runs
        self._room = threading.Condition()  # the paced virtual camera waits on it for room in the queue
        self._infer_q: queue.Queue = queue.Queue(maxsize=cfg.queue if cfg.mode == "trigger" else 1)
        self._next_model: Optional[LiveModel] = None
        self._threads: List[threading.Thread] = []
        self.live: Optional[LiveModel] = None
        self.source: Optional[Source] = None
        self.results = Results(cfg, self.run_id, self.tel)
        self.counts: Dict[str, int] = {"handed_over": 0, "decided": 0, "failsafe": 0, "dropped": 0}
        self.recovered = 0
        self.failure: Optional[str] = None  # why a thread died, if one did
        self._est_infer = 0.0  # seconds, running estimate of one model call
        self._server: Any = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Open everything, recover a killed run's pending rows, warm up, start the threads; READY=1."""
        cfg = self.cfg
        self.recovered = self.results.open()
        self.live = load_live(cfg.model, cfg.policy)
        self._show_model(self.live)
        self.results.start()
        if cfg.metrics.port:
            self._server = serve(self.tel, cfg.metrics.host, cfg.metrics.port, self.not_ready)
        self.source = open_source(cfg)
        self.source.start()
        self._capturing.set()
        self.tel.up.set(1)
        self.notify.ready()  # warmed up, source open: the threads start deciding now
        for name, target in (("inference", self._inference), ("capture", self._capture), ("model-watch", self._watch)):
            t = threading.Thread(target=self._guard, args=(name, target), name=f"lineguard-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("inspecting %s/%s/%s: model %s (%s), deadline %.0f ms, db %s", cfg.line, cfg.station, cfg.camera,
                 self.live.version[:12], self.live.runner.backend, self.deadline_s * 1000, cfg.db)

    def run(self, install_signals: bool = True) -> Dict[str, int]:
        """:meth:`start`, wait until the source ends or :meth:`stop`, drain, close; returns the counts."""
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.reload())
        self.start()
        try:
            while not self._done.wait(0.2):
                pass
        finally:
            self.close()
        if self.failure:
            raise InspectError(self.failure)
        return dict(self.counts)

    def stop(self) -> None:
        """Stop taking frames; the queued ones are still decided (SIGTERM)."""
        self._stop.set()

    def _guard(self, name: str, target: Any) -> None:
        """Run a thread's loop; a bug that kills it stops the line (queued parts still drained) and fails the run."""
        try:
            target()
        except Exception as e:
            log.exception("the %s thread failed", name)
            self.failure = f"the {name} thread failed: {type(e).__name__}: {e}"
            self.stop()

    def not_ready(self) -> List[str]:
        why = []
        if self.live is None:
            why.append("no model loaded")
        if self.source is None or self.source.state.value not in ("running", "ended"):
            why.append(f"source {self.source.state.value if self.source else 'not opened'}")
        if not self.results.ok:
            why.append(f"{self.cfg.db}: results not writable")
        return why

    def close(self) -> None:
        """After the frame loop ended: flush the writer, drain the outputs and the archive, close everything."""
        self.notify.stopping()
        self._stop.set()
        if self.source is not None:
            self.source.stop()
        for t in self._threads:
            t.join(self.cfg.drain_s + 5)
        self.results.close(self.deadline_s)
        if self.live is not None:
            self.live.runner.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.notify.close()

    def reload(self) -> None:
        """SIGHUP: read the config again; the decision policy, the deadline, the batch and the drain time change at
        once, the rest needs a restart (said in the log)."""
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = load_line_config(self.config_path, self.overrides)
            assert self.live is not None
            policy = DecisionPolicy.of(self.live.spec, **new.policy.model_dump())
        except LineguardError as e:
            log.error("SIGHUP: %s; the running settings stay", e)
            return
        self.live.policy = policy
        self.deadline_s = new.deadline.seconds
        live = ("policy", "deadline", "batch", "drain_s")
        changed = [k for k in LineConfig.model_fields if k not in live and getattr(new, k) != getattr(self.cfg, k)]
        self.cfg = self.cfg.model_copy(update={k: getattr(new, k) for k in live})
        log.info("SIGHUP: policy, deadline, batch and drain_s reloaded%s",
                 f"; {', '.join(changed)} changed too and need a restart" if changed else "")

    # ------------------------------------------------------------------ capture
    def _capture(self) -> None:
        assert self.source is not None and self.live is not None
        try:
            self._capture_loop(self.source)
        finally:
            self._capturing.clear()
            self._infer_q.put(_END) if self.cfg.mode == "trigger" else self._replace(_END)

    def _capture_loop(self, src: Source) -> None:
        seen = {"reconnect": 0, "frames-lost": 0}
        try:
            while not self._stop.is_set():
                if self._paced:  # the virtual camera at "as fast as the line takes them": triggered when there is room
                    self._when_room()
                try:
                    cap = src.read(timeout=0.2)
                except EndOfSource:
                    break
                except Exception as e:  # a source that breaks is a stopped line, said once, never a hang
                    log.error("source %s failed: %s", self.cfg.camera, e)
                    break
                self._camera_events(src, seen)
                if cap is not None:
                    self._hand_over(cap)
        finally:
            self._camera_events(src, seen)

    def _camera_events(self, src: Source, seen: Dict[str, int]) -> None:
        """The source's reconnects and lost frames since ``seen``: counted in the metrics and recorded as events."""
        for kind, now, metric in (("reconnect", src.reconnects, self.tel.reconnects),
                                  ("frames-lost", src.lost, self.tel.source_lost)):
            if now != seen[kind]:
                metric.inc(now - seen[kind])
                self.results.event(kind, now - seen[kind])
                seen[kind] = now

    def _hand_over(self, cap: Capture) -> None:
        now, mono = time.time(), time.monotonic()
        part = LinePart(cap=cap, t_capture=now, deadline=mono + self.deadline_s)
        part.sha256 = hashlib.sha256(cap.encoded if cap.encoded is not None else cap.frame.image).hexdigest()
        self.tel.frames.inc()
        self.counts["handed_over"] += 1
        if cap.error is None:
            cap.error = self._frame_error(cap.frame.image)
        if cap.error is None:
            try:
                assert self.live is not None
                part.frame = self.live.runner.prepare(cap.frame.image)
            except (LineguardError, ValueError, TypeError) as e:  # wrong dtype, empty, wrong channels
                cap.error = str(e)
        part.t_queued = time.time()
        if self.cfg.mode == "free-run":
            self._replace(part)
            return
        self.results.put("captured", part)
        try:
            self._infer_q.put_nowait(part)
        except queue.Full:
            self._failsafe(part, "overflow")
        self.tel.queue.set(self._infer_q.qsize())

    def _frame_error(self, image: np.ndarray) -> Optional[str]:
        """Why a frame cannot be inspected: no pixels, under 16 px a side, or not the camera's configured size."""
        shape = getattr(image, "shape", ())
        if len(shape) < 2 or min(shape[:2]) < MIN_SIDE:
            return f"frame of shape {tuple(shape)}: under {MIN_SIDE} px a side"
        if self.cfg.frame_size is not None and list(shape[:2]) != self.cfg.frame_size:
            return f"frame of {shape[0]}x{shape[1]} px, the camera delivers {self.cfg.frame_size[0]}x" \
                   f"{self.cfg.frame_size[1]}"
        return None

    def _when_room(self) -> None:
        """Wait until less than one micro-batch is queued (or stop): a camera triggered by the line's pace."""
        assert self.live is not None
        room = min(self.cfg.batch, self.live.runner.batch_range[1])
        with self._room:
            while self._infer_q.qsize() >= room and not self._stop.is_set():
                self._room.wait(0.1)

    def _replace(self, item: Any) -> None:
        """Free-run: the latest frame replaces one still waiting (counted as dropped)."""
        while True:
            try:
                self._infer_q.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = self._infer_q.get_nowait()
                except queue.Empty:
                    continue
                if old is _END:
                    self._infer_q.put(old)
                    return
                self.tel.dropped.labels(reason="superseded").inc()
                self.counts["dropped"] += 1

    # ------------------------------------------------------------------ inference (the frame loop)
    def _inference(self) -> None:
        try:
            self._frame_loop()
        finally:
            self._done.set()

    def _frame_loop(self) -> None:
        drain_until: Optional[float] = None
        while True:
            self.notify.watchdog()
            if self._next_model is not None:
                self._swap()
            if self._stop.is_set() and drain_until is None:
                drain_until = time.monotonic() + self.cfg.drain_s
            try:
                first = self._infer_q.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() and not self._capturing.is_set():
                    return  # capture ended and nothing is left
                continue
            if first is _END:
                return
            batch = [first]
            assert self.live is not None
            limit = min(self.cfg.batch, self.live.runner.batch_range[1])  # a fixed batch-1 model: one at a time
            while len(batch) < limit:
                try:
                    item = self._infer_q.get_nowait()
                except queue.Empty:
                    break
                if item is _END:
                    self._infer_q.put(item)
                    break
                batch.append(item)
            self.tel.queue.set(self._infer_q.qsize())
            if self._paced:
                with self._room:
                    self._room.notify()
            if drain_until is not None and time.monotonic() > drain_until:
                for p in batch:
                    self._failsafe(p, "shutdown")
                continue
            self._decide(batch)

    def _decide(self, batch: List[LinePart]) -> None:
        live = self.live
        assert live is not None
        ready = []
        late_by = time.monotonic() + self._est_infer
        for p in batch:
            if p.cap.error is not None or p.frame is None:
                self._failsafe(p, "bad-frame")
            elif late_by > p.deadline:
                self._failsafe(p, "deadline")
            else:
                ready.append(p)
        if not ready:
            return
        t0 = time.perf_counter()
        try:
            scores = live.runner.predict(np.stack([p.frame for p in ready]))
            verdicts = decide([p.cap.frame for p in ready], scores, live.spec, live.policy, live.version)
        except Exception as e:  # a model that fails on a batch: its parts are rejected, the loop goes on
            log.error("model %s failed on %d frames: %s", live.version[:12], len(ready), e)
            for p in ready:
                self._failsafe(p, "model-error")
            return
        took = time.perf_counter() - t0
        self._est_infer = took if not self._est_infer else 0.8 * self._est_infer + 0.2 * took
        self.tel.inference.observe(took)
        self.tel.batch.observe(len(ready))
        now, mono = time.time(), time.monotonic()
        for p, v, heat in zip(ready, verdicts, scores.heatmap):
            p.verdict, p.t_inferred = v, now
            p.heatmap = live.spec.preprocess.unfit(heat[0], p.cap.frame.image.shape[:2])  # over the image only
            if mono > p.deadline:
                self.tel.deadline_misses.inc()
                self._failsafe(p, "deadline")
                continue
            p.decision = v.decision.value
            self._finish(p)

    def _failsafe(self, part: LinePart, reason: str) -> None:
        part.decision, part.reason = Decision.NG.value, reason
        self.tel.failsafe.labels(reason=reason).inc()
        if reason == "deadline" and part.verdict is None:
            self.tel.deadline_misses.inc()
        self.counts["failsafe"] += 1
        self._finish(part)

    def _finish(self, part: LinePart) -> None:
        part.t_decided = time.time()
        self.counts["decided"] += 1
        cls = part.verdict.top_class if part.verdict is not None and part.reason is None else (part.reason or "")
        self.tel.decisions.labels(decision=part.decision, cls=cls).inc()
        self.tel.latency.observe(part.t_decided - part.t_capture)
        if part.verdict is not None and part.reason is None:
            self.tel.ng_score.labels(cls=cls).observe(part.verdict.ng_score)
        if part.cap.truth is not None and self.live is not None:
            truly_ok = part.cap.truth == self.live.spec.ok_class
            right = (part.decision == "OK") == truly_ok and part.decision != "UNCERTAIN"
            self.tel.judged.labels(outcome="correct" if right else "wrong").inc()
        if self.cfg.mode == "free-run":
            self.results.put("captured", part)
        self.results.put("decided", part)

    # ------------------------------------------------------------------ hot-swap
    def _watch(self) -> None:
        cfg = self.cfg.model
        if not cfg.watch_s:
            return
        assert self.live is not None
        watcher = ModelWatcher(cfg, self.cfg.policy, self.live, self._refused)
        while not self._stop.wait(cfg.watch_s):
            watcher.overrides = self.cfg.policy  # SIGHUP may have changed them
            new = watcher.poll()
            if new is not None:
                self._next_model = new
                while self._next_model is not None and not self._stop.wait(0.05):
                    pass

    def _refused(self, why: str) -> None:
        log.error("model %s", why)
        self.tel.model_swaps.labels(result="refused").inc()

    def _swap(self) -> None:
        old, self.live, self._next_model = self.live, self._next_model, None
        assert self.live is not None
        self._show_model(self.live)
        self.tel.model_swaps.labels(result="swapped").inc()
        log.info("model swapped: %s -> %s", old.version[:12] if old else "-", self.live.version[:12])
        if old is not None:
            old.runner.close()

    def _show_model(self, live: LiveModel) -> None:
        self.tel.model.info({k: str(v) for k, v in live.describe().items()})
