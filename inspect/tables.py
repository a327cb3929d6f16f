"""The results table as SQLAlchemy Core: what the QA report and ``lineguard sync`` read and write, on a daemon's
SQLite file and on the plant's PostgreSQL alike. Torch-free, Python 3.8.

The daemon's store builds its SQLite table with the versioned SQL of ``schema.MIGRATIONS`` (the store stays
free of SQLAlchemy); :data:`PARTS` declares the same columns for everything else, and a test holds the two
equal. :data:`SCHEMA_VERSION` is the number of migrations both stand at.

The plant database (PostgreSQL, :data:`PLANT`) holds every line's parts in :data:`PLANT_PARTS`: the same data
columns, its own id, the line's row id, and the key (line, station, camera, run, source frame) that makes
``lineguard sync`` an idempotent upsert; :data:`SYNC_STATE` keeps each line database's watermark and
:data:`PLANT_SCHEMA` the plant schema's version (:data:`PLANT_VERSION`).
"""

from __future__ import annotations

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
)

from .schema import MIGRATIONS

__all__ = ["DATA_COLUMNS", "METADATA", "PARTS", "PLANT", "PLANT_KEY", "PLANT_PARTS", "PLANT_SCHEMA", "PLANT_VERSION",
           "SCHEMA_VERSION", "SYNC_STATE"]

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
        _text("review"), _text("reviewer"), _real("review_ts"),
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

# The plant database (PostgreSQL): every line's parts, keyed by where they were made and the daemon run's own key
PLANT_VERSION = 1
PLANT = MetaData()
PLANT_PARTS = Table(
    "parts", PLANT,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("line_row_id", BigInteger, nullable=False),  # the row's id in the line's database
    *_data_columns(plant=True),
    UniqueConstraint("line", "station", "camera", "run_id", "source_seq", name="plant_parts_key"),
    Index("plant_parts_ts", "ts"),
    Index("plant_parts_lot", "lot"),
)
PLANT_KEY = ("line", "station", "camera", "run_id", "source_seq")
SYNC_STATE = Table(
    "sync_state", PLANT,
    Column("source", Text, primary_key=True),  # one line database (host:path)
    Column("changed", BigInteger, nullable=False),  # its change sequence, synced up to here
    Column("rows", BigInteger, nullable=False),
    Column("utc", Text, nullable=False),
)
PLANT_SCHEMA = Table("lineguard_schema", PLANT, Column("version", Integer, nullable=False))
