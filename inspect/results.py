"""The results side of the camera loop: the database's one writer thread, the reject outputs and the archive.

    results = Results(cfg, run_id, tel)
    recovered = results.open()              # pending rows of a killed run -> NG crash-recovered
    results.start()
    results.put("captured", part)           # its row, pending, NG "in-flight" (fail-safe) until decided
    results.put("decided", part)            # its decision; once durable, the reject outputs are told
    results.event("reconnect", 1)           # a camera event, in the same group commits
    results.close()                         # flush; outputs drained within the deadline; archive finished

Group commits: every wake-up of the writer is one transaction (one fsync with ``synchronous=FULL``). A part's
row is written at capture, gets its decision, and only then is its reject signal sent; the row is final when
every output acknowledged or failed. A database that cannot be written keeps the events in memory, counts
and alarms, and retries: results are not dropped. Torch-free, Python 3.8.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lineguard.edge.verdict import Decision, Verdict

from .archive import Archive
from .base import Capture, InspectError
from .config import LineConfig
from .schema import EventRow, PartRow
from .sinks import SignalJob, SinkWorker, make_sink
from .store import Completion, ResultStore
from .telemetry import Telemetry

__all__ = ["LinePart", "Results"]

log = logging.getLogger("lineguard.inspect")
MAX_EVENTS = 2048  # events one transaction takes at most


@dataclass
class LinePart:
    """A part in flight: its capture, its times (epoch seconds), its deadline (monotonic) and its outcome."""

    cap: Capture
    t_capture: float
    deadline: float
    t_queued: float = 0.0
    frame: Optional[np.ndarray] = None  # prepared for the model
    row: Optional[int] = None
    verdict: Optional[Verdict] = None
    decision: str = ""
    reason: Optional[str] = None  # why it was rejected without (or against) the model's decision
    t_inferred: float = 0.0
    t_decided: float = 0.0
    heatmap: Optional[np.ndarray] = None
    sha256: Optional[str] = None  # of the frame's pixels (or the encoded bytes the source handed over)
    waiting: Dict[str, Any] = field(default_factory=dict)  # reject output -> its acknowledgement


class Results:
    """See the module docstring. ``put`` is called from the capture and inference threads."""

    def __init__(self, cfg: LineConfig, run_id: str, tel: Telemetry) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.tel = tel
        self.ok = True  # the last write succeeded
        self.store: Optional[ResultStore] = None
        self.archive = Archive(cfg.archive) if cfg.archive is not None else None
        self.outputs = [f"{i}-{o.kind}" for i, o in enumerate(cfg.outputs)]
        self.sinks: List[SinkWorker] = []
        self._q: queue.Queue = queue.Queue()
        self._archive_q: queue.Queue = queue.Queue(maxsize=64)
        self._archive_done = threading.Event()
        self._rng = random.Random(0)
        self._threads: List[threading.Thread] = []

    def open(self) -> int:
        """Open the database and resolve a killed run's pending rows; how many."""
        self.store = ResultStore(self.cfg.db)
        recovered = self.store.recover()
        if recovered:
            log.warning("%s: %d parts of a killed run had no final row: recorded as NG crash-recovered",
                        self.cfg.db, recovered)
        return recovered

    def start(self) -> None:
        self.sinks = [SinkWorker(make_sink(o), functools.partial(self._on_signal, name))
                      for name, o in zip(self.outputs, self.cfg.outputs)]
        for name, target in (("writer", self._writer), ("archive", self._archiver)):
            t = threading.Thread(target=target, name=f"lineguard-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def put(self, kind: str, item: Any) -> None:
        self._q.put((kind, item))

    def event(self, kind: str, count: int) -> None:
        """Record a camera event of this run (``reconnect``, ``frames-lost``) now."""
        self.put("event", EventRow(run_id=self.run_id, line=self.cfg.line, station=self.cfg.station,
                                   camera=self.cfg.camera, ts=time.time(), kind=kind, count=count))

    def close(self, deadline_s: float) -> None:
        """After the frame loop: every decision written and sent, the outputs finish their jobs, the archive ends,
        the writer commits the rest."""
        flushed = threading.Event()
        self._q.put(("flush", flushed))
        flushed.wait(self.cfg.drain_s + 5)
        for s in self.sinks:
            s.stop(drain_timeout=max(deadline_s, 1.0))
        self._archive_done.set()
        for t in self._threads[1:]:  # the archive
            t.join(self.cfg.drain_s + 5)
        self._q.put(("end", None))
        self._threads[0].join(self.cfg.drain_s + 5)
        if self.store is not None:
            self.store.close()

    def _writer(self) -> None:
        """The database's one thread: group commits; signals go out after the decision is durable."""
        events: List[Tuple[str, Any]] = []
        flushes: List[threading.Event] = []
        ended = False
        while not ended or events:
            if not ended:
                try:
                    events.append(self._q.get(timeout=0.5 if not events else 0.05))
                    while len(events) < MAX_EVENTS:
                        events.append(self._q.get_nowait())
                except queue.Empty:
                    pass
            ended = ended or any(kind == "end" for kind, _ in events)
            flushes += [x for kind, x in events if kind == "flush"]
            events = [e for e in events if e[0] not in ("end", "flush")]
            if events and not self._commit(events, give_up=ended):
                continue
            events = []
            for f in flushes:
                f.set()
            flushes = []

    def _commit(self, events: List[Tuple[str, Any]], give_up: bool) -> bool:
        """Write ``events`` and signal what they decided; False when the database refused (kept for a retry)."""
        try:
            decided = self._apply(events)
        except InspectError as e:  # a full or broken disk: keep the events, alarm, try again
            self.ok = False
            self.tel.results_failures.inc()
            log.error("results not written (%s); retrying", e)
            if give_up:
                log.critical("shutting down with %d result events unwritten", len(events))
                return True
            time.sleep(0.5)
            return False
        self.ok = True
        for p in decided:
            self._signal(p)
        return True

    def _apply(self, events: List[Tuple[str, Any]]) -> List[LinePart]:
        """One transaction for the events of one wake-up; the parts whose decision it made durable."""
        assert self.store is not None
        decided: List[LinePart] = []
        with self.store.batch() as b:
            for kind, x in events:
                if kind == "captured":
                    x.row = b.pending(self._row(x))
                elif kind == "decided":
                    b.update(x.row, **self._decision(x))
                    decided.append(x)
                elif kind == "signalled":
                    part, output, ack, error, attempts = x
                    part.waiting[output] = {"ack": ack} if error is None else {"error": error, "attempts": attempts}
                    if all(v is not None for v in part.waiting.values()):
                        b.complete(Completion(part.row, time.time(), part.waiting))
                elif kind == "final":
                    b.complete(Completion(x.row, None, None))
                elif kind == "archived":
                    b.archived(x[0].row, x[1])
                elif kind == "event":
                    b.event(x)
        return decided

    def _row(self, p: LinePart) -> PartRow:
        """A part's row at capture: pending, NG ``in-flight`` (fail-safe) until its decision is written."""
        f = p.cap.frame
        return PartRow(line=self.cfg.line, station=self.cfg.station, camera=self.cfg.camera, source_seq=p.cap.seq,
                       run_id=self.run_id, serial=f.serial, lot=f.lot, ts=p.t_capture, decision=Decision.NG,
                       reason="in-flight", truth=p.cap.truth, t_capture=p.t_capture, t_queued=p.t_queued,
                       image_sha256=p.sha256)

    @staticmethod
    def _decision(p: LinePart) -> Dict[str, Any]:
        v = p.verdict
        fields: Dict[str, Any] = {"decision": p.decision, "reason": p.reason, "t_decided": p.t_decided}
        if v is not None:
            fields.update(top_class=v.top_class if p.reason is None else None, scores=v.scores, ng_score=v.ng_score,
                          defects=(v.defects or None) if p.reason is None else None,
                          model_version=v.model_version, policy=v.policy.model_dump(), boxes=v.boxes,
                          t_inferred=p.t_inferred)
            if p.reason is not None:
                fields["prior_decision"] = v.decision
        return fields

    def _signal(self, part: LinePart) -> None:
        """Send the decision to every reject output (after its row holds the decision); no output: final now."""
        reject = part.decision != Decision.OK.value
        info = {"serial": part.cap.frame.serial, "frame_id": part.cap.frame.frame_id, "decision": part.decision,
                "reason": part.reason}
        if not self.sinks:
            self._q.put(("final", part))
        part.waiting = dict.fromkeys(self.outputs)
        for s in self.sinks:
            s.submit(SignalJob(key=part, reject=reject, part=info, deadline=part.deadline))
        draw = self._rng.random()  # the OK sample is drawn here: only parts the archive keeps take a queue place
        if self.archive is not None and self.archive.keeps(Decision(part.decision), draw):
            try:
                self._archive_q.put_nowait((part, draw))
            except queue.Full:
                self.tel.archive_failures.labels(reason="queue-full").inc()

    def _on_signal(self, output: str, job: SignalJob, ack: Optional[bool], error: Optional[str],
                   attempts: int) -> None:
        """A reject output's outcome (its worker's thread); the writer makes the row final when all are in."""
        if error is None:
            self.tel.signals.labels(output=output).inc()
        else:
            self.tel.signal_failures.labels(output=output).inc()
            log.error("reject output %s: part %s not acknowledged after %d attempts: %s", output, job.part["serial"],
                      attempts, error)
        self._q.put(("signalled", (job.key, output, ack, error, attempts)))

    def _archiver(self) -> None:
        while not (self._archive_done.is_set() and self._archive_q.empty()):
            try:
                part, draw = self._archive_q.get(timeout=0.2)
            except queue.Empty:
                continue
            assert self.archive is not None
            key = f"{self.run_id}-{part.cap.seq:08d}"
            before = dict(self.archive.failures_by_reason)
            path = self.archive.save(part.decision, key, part.cap.frame.image, part.heatmap, draw)
            for reason, n in self.archive.failures_by_reason.items():
                if n != before.get(reason, 0):
                    self.tel.archive_failures.labels(reason=reason).inc(n - before.get(reason, 0))
            self.tel.archive_free.set(self.archive.free_bytes())
            if path is not None:
                self._q.put(("archived", (part, path)))

