"""The results tables as SQLAlchemy Core: what the QA report and ``lineguard sync`` read and write, on a daemon's
SQLite file and on the plant's PostgreSQL alike. Torch-free, Python 3.8.

The daemon's store builds its SQLite tables with the versioned SQL of ``schema.MIGRATIONS`` (the store stays
free of SQLAlchemy); :data:`PARTS` and :data:`EVENTS` declare the same columns for everything else, and a test
holds them equal. :data:`SCHEMA_VERSION` is the number of migrations both stand at.

The plant database (PostgreSQL, :data:`PLANT`) holds every line's parts in :data:`PLANT_PARTS` and camera events
in :data:`PLANT_EVENTS`: the same data columns, their own ids, the line's row ids, and the keys (line, station,
camera, run, source frame / event) that make ``lineguard sync`` an idempotent upsert; :data:`SYNC_STATE` keeps
each line database's watermarks and ``lineguard_schema`` the plant schema's version. :data:`PLANT_MIGRATIONS`
builds and upgrades it (entry ``n`` takes version ``n`` to ``n + 1``; a change is one more entry, never an edit);
a test holds the migrated schema equal to :data:`PLANT`. :class:`Tables` names the pair a report reads
(:data:`LINE_TABLES` or :data:`PLANT_TABLES`).
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from .schema import MIGRATIONS

__all__ = ["DATA_COLUMNS", "EVENTS", "EVENT_COLUMNS", "LINE_TABLES", "METADATA", "PARTS", "PLANT", "PLANT_EVENTS",
           "PLANT_EVENT_KEY", "PLANT_KEY", "PLANT_MIGRATIONS", "PLANT_PARTS", "PLANT_SCHEMA", "PLANT_TABLES",
           "PLANT_VERSION", "SCHEMA_VERSION", "SYNC_STATE", "Tables"]

SCHEMA_VERSION = len(MIGRATIONS)
METADATA = MetaData()


def _text(name: str, nullable: bool = True) -> Column:
    return Column(name, Text, nullable=nullable)


def _real(name: str, nullable: bool = True) -> Column:
    return Column(name, Float(53), nullable=nullable)  # SQLite REAL, PostgreSQL double precision


def _data_columns(plant: bool) -> list:
    """The columns of a part's data, new objects each call (a Column belongs to one table). In the plant database
    line and station are part of the key, so there they are NOT NULL ('' where the line left them unset)."""
    where = [Column(name, Text, nullable=False, server_default="") if plant else _text(name)
             for name in ("line", "station")]
    return [
        _text("state", False), *where, _text("camera", False),
        Column("source_seq", Integer, nullable=False), _text("run_id", False),
        _text("serial"), _text("lot"), _text("utc", False), _real("ts", False),
        _text("model_version"), _text("policy"), _text("scores", False), _real("ng_score"),
        _text("decision", False), _text("top_class"), _text("reason"), _text("prior_decision"), _text("prior_reason"),
        _text("truth"), _text("boxes", False),
        _real("t_capture"), _real("t_queued"), _real("t_inferred"), _real("t_decided"), _real("t_signalled"),
        _text("ack"), _text("image_sha256"), _text("archive_path"),
        _text("review"), _text("reviewer"), _real("review_ts"), _text("defects"),
        CheckConstraint("state IN ('pending', 'final')"),
        CheckConstraint("decision IN ('OK', 'NG', 'UNCERTAIN')"),
    ]


PARTS = Table(
    "parts", METADATA,
    Column("id", Integer, primary_key=True),
    *_data_columns(plant=False),
    Column("changed", Integer),  # the change sequence (migration 2; triggers keep it in the daemon's SQLite)
    Index("parts_ts", "ts"),
    Index("parts_decision", "decision"),
    Index("parts_source", "run_id", "camera", "source_seq", unique=True),
    Index("parts_changed", "changed"),
)
DATA_COLUMNS = tuple(c.name for c in PARTS.columns if c.name not in ("id", "changed"))


def _event_columns(plant: bool) -> list:
    """The columns of a camera event (new objects each call); line and station as in :func:`_data_columns`."""
    where = [Column(name, Text, nullable=False, server_default="") if plant else _text(name)
             for name in ("line", "station")]
    return [_text("run_id", False), *where, _text("camera", False), _text("utc", False), _real("ts", False),
            _text("kind", False), Column("count", Integer, nullable=False), CheckConstraint("count > 0")]


EVENTS = Table(
    "events", METADATA,
    Column("id", Integer, primary_key=True),
    *_event_columns(plant=False),
    Index("events_ts", "ts"),
)
EVENT_COLUMNS = tuple(c.name for c in EVENTS.columns if c.name != "id")


class Tables(NamedTuple):
    """The tables one results database holds: a line's (:data:`LINE_TABLES`) or the plant's (:data:`PLANT_TABLES`)."""

    parts: Table
    events: Table


LINE_TABLES = Tables(PARTS, EVENTS)

# The plant database (PostgreSQL): every line's parts and events, keyed by where they were made and the daemon
# run's own keys
PLANT = MetaData()
PLANT_KEY = ("line", "station", "camera", "run_id", "source_seq")
PLANT_EVENT_KEY = ("line", "station", "camera", "run_id", "line_event_id")


def _plant_table(name: str, line_id: str, columns: list, key: Tuple[str, ...]) -> Table:
    """A plant table: its own id, the row's id in the line's database (``line_id``), ``columns``, unique on ``key``,
    indexed on ``ts``."""
    return Table(name, PLANT, Column("id", BigInteger, Identity(), primary_key=True),
                 Column(line_id, BigInteger, nullable=False), *columns,
                 UniqueConstraint(*key, name=f"plant_{name}_key"), Index(f"plant_{name}_ts", "ts"))


PLANT_PARTS = _plant_table("parts", "line_row_id", _data_columns(plant=True), PLANT_KEY)
Index("plant_parts_lot", PLANT_PARTS.c.lot)
PLANT_EVENTS = _plant_table("events", "line_event_id", _event_columns(plant=True), PLANT_EVENT_KEY)
SYNC_STATE = Table(
    "sync_state", PLANT,
    Column("source", Text, primary_key=True),  # one line database (host:path)
    Column("changed", BigInteger, nullable=False),  # its parts' change sequence, synced up to here
    Column("rows", BigInteger, nullable=False),
    Column("utc", Text, nullable=False),
    Column("events", BigInteger, nullable=False, server_default=text("0")),  # its events, synced up to this id
)
PLANT_SCHEMA = Table("lineguard_schema", PLANT, Column("version", Integer, nullable=False))
PLANT_TABLES = Tables(PLANT_PARTS, PLANT_EVENTS)

_DOUBLE = "DOUBLE PRECISION"
PLANT_MIGRATIONS: List[Tuple[str, ...]] = [
    (  # 1: parts, the sync watermarks, the version
        "CREATE TABLE lineguard_schema (version INTEGER NOT NULL)",
        "INSERT INTO lineguard_schema (version) VALUES (0)",
        f"""CREATE TABLE parts (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, line_row_id BIGINT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'final')),
            line TEXT DEFAULT '' NOT NULL, station TEXT DEFAULT '' NOT NULL, camera TEXT NOT NULL,
            source_seq INTEGER NOT NULL, run_id TEXT NOT NULL, serial TEXT, lot TEXT,
            utc TEXT NOT NULL, ts {_DOUBLE} NOT NULL,
            model_version TEXT, policy TEXT, scores TEXT NOT NULL, ng_score {_DOUBLE},
            decision TEXT NOT NULL CHECK (decision IN ('OK', 'NG', 'UNCERTAIN')),
            top_class TEXT, reason TEXT, prior_decision TEXT, prior_reason TEXT, truth TEXT, boxes TEXT NOT NULL,
            t_capture {_DOUBLE}, t_queued {_DOUBLE}, t_inferred {_DOUBLE}, t_decided {_DOUBLE},
            t_signalled {_DOUBLE}, ack TEXT, image_sha256 TEXT, archive_path TEXT,
            review TEXT, reviewer TEXT, review_ts {_DOUBLE},
            CONSTRAINT plant_parts_key UNIQUE (line, station, camera, run_id, source_seq))""",
        "CREATE INDEX plant_parts_ts ON parts (ts)",
        "CREATE INDEX plant_parts_lot ON parts (lot)",
        """CREATE TABLE sync_state (source TEXT PRIMARY KEY, changed BIGINT NOT NULL, rows BIGINT NOT NULL,
            utc TEXT NOT NULL)""",
    ),
    (  # 2: camera events (reconnects, frames lost) and their watermark
        f"""CREATE TABLE events (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, line_event_id BIGINT NOT NULL,
            run_id TEXT NOT NULL, line TEXT DEFAULT '' NOT NULL, station TEXT DEFAULT '' NOT NULL,
            camera TEXT NOT NULL, utc TEXT NOT NULL, ts {_DOUBLE} NOT NULL, kind TEXT NOT NULL,
            count INTEGER NOT NULL CHECK (count > 0),
            CONSTRAINT plant_events_key UNIQUE (line, station, camera, run_id, line_event_id))""",
        "CREATE INDEX plant_events_ts ON events (ts)",
        "ALTER TABLE sync_state ADD COLUMN events BIGINT NOT NULL DEFAULT 0",
    ),
    (  # 3: every defect class of a part (multi-label models)
        "ALTER TABLE parts ADD COLUMN defects TEXT",
    ),
]
PLANT_VERSION = len(PLANT_MIGRATIONS)
