"""The results table as SQLAlchemy Core: what the QA report and ``lineguard sync`` read and write, on a daemon's
SQLite file and on the plant's PostgreSQL alike. Torch-free, Python 3.8.

The daemon's store builds its SQLite table with the versioned SQL of ``schema.MIGRATIONS`` (the store stays
free of SQLAlchemy); :data:`PARTS` declares the same columns for everything else, and a test holds the two
equal. :data:`SCHEMA_VERSION` is the number of migrations both stand at.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Float, Index, Integer, MetaData, Table, Text

from .schema import MIGRATIONS

__all__ = ["METADATA", "PARTS", "SCHEMA_VERSION"]

SCHEMA_VERSION = len(MIGRATIONS)
METADATA = MetaData()


def _text(name: str, nullable: bool = True) -> Column:
    return Column(name, Text, nullable=nullable)


def _real(name: str, nullable: bool = True) -> Column:
    return Column(name, Float(53), nullable=nullable)  # SQLite REAL, PostgreSQL double precision


PARTS = Table(
    "parts", METADATA,
    Column("id", Integer, primary_key=True),
    _text("state", False), _text("line"), _text("station"), _text("camera", False),
    Column("source_seq", Integer, nullable=False), _text("run_id", False),
    _text("serial"), _text("lot"), _text("utc", False), _real("ts", False),
    _text("model_version"), _text("policy"), _text("scores", False), _real("ng_score"),
    _text("decision", False), _text("top_class"), _text("reason"), _text("prior_decision"), _text("prior_reason"),
    _text("truth"), _text("boxes", False),
    _real("t_capture"), _real("t_queued"), _real("t_inferred"), _real("t_decided"), _real("t_signalled"),
    _text("ack"), _text("image_sha256"), _text("archive_path"),
    Column("changed", Integer),  # the change sequence (migration 2; triggers keep it in the daemon's SQLite)
    CheckConstraint("state IN ('pending', 'final')", name="parts_state"),
    CheckConstraint("decision IN ('OK', 'NG', 'UNCERTAIN')", name="parts_decision_value"),
    Index("parts_ts", "ts"),
    Index("parts_decision", "decision"),
    Index("parts_source", "run_id", "camera", "source_seq", unique=True),
    Index("parts_changed", "changed"),
)
