"""The results schema: one row per part (:class:`PartRow`), one per camera event (:class:`EventRow`: a reconnect,
frames lost), their SQL tables and versions (:data:`MIGRATIONS`), and how values are stored in the columns. The
daemon's store (``store.py``) writes them; reports and the plant database read them. Torch-free, Python 3.8.

:data:`MIGRATIONS` entry ``n`` takes a database from version ``n`` to ``n + 1`` (``PRAGMA user_version``); a
schema change is one more entry, never an edit of an old one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Dict, List, Literal, Optional, Tuple, get_args

from pydantic import BaseModel, Field

from lineguard.config import StrictModel
from lineguard.edge.verdict import Decision, DefectBox, Verdict

__all__ = ["COLUMNS", "EVENT_INSERT", "EVENT_KINDS", "INSERT", "JSON_COLUMNS", "MIGRATIONS", "RECOVERED", "UPDATABLE",
           "EventKind", "EventRow", "PartRow", "column_value", "utc_text"]

MIGRATIONS: List[Tuple[str, ...]] = [
    (  # 1: the parts table
        """CREATE TABLE parts (
            id INTEGER PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('pending', 'final')),
            line TEXT, station TEXT, camera TEXT NOT NULL,
            source_seq INTEGER NOT NULL, run_id TEXT NOT NULL,
            serial TEXT, lot TEXT,
            utc TEXT NOT NULL, ts REAL NOT NULL,
            model_version TEXT, policy TEXT, scores TEXT NOT NULL, ng_score REAL,
            decision TEXT NOT NULL CHECK (decision IN ('OK', 'NG', 'UNCERTAIN')),
            top_class TEXT, reason TEXT, prior_decision TEXT, prior_reason TEXT, truth TEXT, boxes TEXT NOT NULL,
            t_capture REAL, t_queued REAL, t_inferred REAL, t_decided REAL, t_signalled REAL,
            ack TEXT, image_sha256 TEXT, archive_path TEXT)""",
        "CREATE INDEX parts_ts ON parts (ts)",
        "CREATE INDEX parts_decision ON parts (decision)",
        "CREATE UNIQUE INDEX parts_source ON parts (run_id, camera, source_seq)",
    ),
    (  # 2: a change sequence, the watermark of `lineguard sync`: every insert and update of a row gives it the next
       # number (rows change after they are final: the archive path comes later), so a sync resumes exactly
        "ALTER TABLE parts ADD COLUMN changed INTEGER",
        "UPDATE parts SET changed = id",
        "CREATE INDEX parts_changed ON parts (changed)",
        """CREATE TRIGGER parts_changed_insert AFTER INSERT ON parts BEGIN
            UPDATE parts SET changed = (SELECT COALESCE(MAX(changed), 0) + 1 FROM parts) WHERE id = NEW.id; END""",
        """CREATE TRIGGER parts_changed_update AFTER UPDATE ON parts WHEN NEW.changed IS OLD.changed BEGIN
            UPDATE parts SET changed = (SELECT MAX(changed) + 1 FROM parts) WHERE id = NEW.id; END""",
    ),
    (  # 3: the operator's review of a part: the class they saw, who, when (the QA report's confusion matrix)
        "ALTER TABLE parts ADD COLUMN review TEXT",
        "ALTER TABLE parts ADD COLUMN reviewer TEXT",
        "ALTER TABLE parts ADD COLUMN review_ts REAL",
    ),
    (  # 4: what happened to a camera beside its parts (reconnects, frames it lost), for the QA report
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL, line TEXT, station TEXT, camera TEXT NOT NULL,
            utc TEXT NOT NULL, ts REAL NOT NULL,
            kind TEXT NOT NULL, count INTEGER NOT NULL CHECK (count > 0))""",
        "CREATE INDEX events_ts ON events (ts)",
    ),
    (  # 5: every defect class a part holds (a multi-label model), for the QA Pareto
        "ALTER TABLE parts ADD COLUMN defects TEXT",
    ),
]
JSON_COLUMNS = ("policy", "scores", "boxes", "ack", "defects")
RECOVERED = "crash-recovered"


def utc_text(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PartRow(StrictModel):
    """One part's row. ``id`` and ``state`` are the store's (ignored on insert); ``utc`` defaults to ``ts``'s."""

    id: Optional[int] = None
    state: Optional[Literal["pending", "final"]] = None
    line: Optional[str] = None
    station: Optional[str] = None
    camera: str
    source_seq: int  # the source-side frame number, unique per (run_id, camera)
    run_id: str  # one daemon run
    serial: Optional[str] = None
    lot: Optional[str] = None
    ts: float  # the part's time (capture), epoch seconds
    utc: Optional[str] = None  # ts as ISO 8601 UTC with ms
    model_version: Optional[str] = None  # sha256 of the weights
    policy: Optional[Dict[str, Any]] = None  # the decision settings used (DecisionPolicy as JSON)
    scores: Dict[str, float] = Field(default_factory=dict)  # class -> probability
    ng_score: Optional[float] = None
    decision: Decision
    top_class: Optional[str] = None
    reason: Optional[str] = None  # None: the model's decision; else why it was overridden ('deadline', ...)
    prior_decision: Optional[Decision] = None  # the decision recover() overrode
    prior_reason: Optional[str] = None  # the reason recover() overrode
    truth: Optional[str] = None  # the part's true class, where the source knows it
    boxes: List[DefectBox] = Field(default_factory=list)
    t_capture: Optional[float] = None  # epoch seconds
    t_queued: Optional[float] = None
    t_inferred: Optional[float] = None
    t_decided: Optional[float] = None
    t_signalled: Optional[float] = None
    ack: Optional[Dict[str, Any]] = None  # reject output -> its read-back value, or the error
    image_sha256: Optional[str] = None
    archive_path: Optional[str] = None
    review: Optional[str] = None  # the class an operator saw on review
    reviewer: Optional[str] = None
    review_ts: Optional[float] = None  # epoch seconds
    defects: Optional[List[str]] = None  # every defect class the model saw on the part (None: the top class only)

    @classmethod
    def from_verdict(cls, verdict: Verdict, run_id: str, **fields: Any) -> PartRow:
        """The row of a model decision: camera = ``source_id``, source_seq = ``frame_id``, ts = t_capture =
        ``timestamp``, and the verdict's scores, policy, model version and boxes; ``fields`` add the rest
        (line, station, truth, timings...) or override any of these."""
        return cls(**{"camera": verdict.source_id, "source_seq": verdict.frame_id, "run_id": run_id,
                      "serial": verdict.serial, "lot": verdict.lot, "ts": verdict.timestamp,
                      "t_capture": verdict.timestamp, "model_version": verdict.model_version,
                      "policy": verdict.policy.model_dump(), "scores": verdict.scores, "ng_score": verdict.ng_score,
                      "decision": verdict.decision, "top_class": verdict.top_class, "boxes": verdict.boxes,
                      "defects": verdict.defects or None,
                      **fields})


COLUMNS = tuple(PartRow.model_fields)
INSERT = "INSERT INTO parts ({}) VALUES ({})".format(", ".join(COLUMNS[1:]), ", ".join(":" + c for c in COLUMNS[1:]))
UPDATABLE = frozenset(COLUMNS) - {"id", "state", "camera", "source_seq", "run_id", "ts", "utc"}

EventKind = Literal["reconnect", "frames-lost"]
EVENT_KINDS = get_args(EventKind)


class EventRow(StrictModel):
    """Something that happened to a camera: ``reconnect`` (``count`` re-connections after a loss) or
    ``frames-lost`` (``count`` frames the source knows it missed). ``utc`` defaults to ``ts``'s."""

    run_id: str
    line: Optional[str] = None
    station: Optional[str] = None
    camera: str
    ts: float
    utc: Optional[str] = None
    kind: EventKind
    count: int = Field(1, ge=1)

    def values(self) -> Dict[str, Any]:
        """The row's column values, ``utc`` filled in."""
        return {**self.model_dump(), "utc": self.utc or utc_text(self.ts)}


EVENT_INSERT = "INSERT INTO events ({}) VALUES ({})".format(", ".join(EventRow.model_fields),
                                                             ", ".join(":" + c for c in EventRow.model_fields))


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v.value if isinstance(v, Enum) else v


def column_value(name: str, value: Any) -> Any:
    """A value as its column holds it: JSON text in the JSON columns, an enum's value, else as it is."""
    value = _plain(value)
    return json.dumps(value, separators=(",", ":")) if name in JSON_COLUMNS and value is not None else value


