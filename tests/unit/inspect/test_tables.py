"""The SQLAlchemy table the reports and the plant database use is the table the daemon's migrations build."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from lineguard.inspect.schema import COLUMNS
from lineguard.inspect.store import ResultStore
from lineguard.inspect.tables import METADATA, PARTS, SCHEMA_VERSION


def _shape(engine: sa.Engine) -> dict:
    insp = sa.inspect(engine)
    # nullability of the primary key aside: SQLite reports an INTEGER PRIMARY KEY (the rowid) as nullable
    cols = {c["name"]: (str(c["type"]).split("(")[0], c["nullable"] and not c.get("primary_key"),
                        bool(c.get("primary_key")))
            for c in insp.get_columns("parts")}
    indexes = {i["name"]: (tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes("parts")}
    return {"columns": cols, "indexes": indexes, "pk": tuple(insp.get_pk_constraint("parts")["constrained_columns"])}


def test_the_declared_table_equals_the_migrated_one(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "daemon.db")
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'daemon.db'}")
    declared = sa.create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    METADATA.create_all(declared)
    a, b = _shape(migrated), _shape(declared)
    # the same columns (ALTER TABLE appends, so the order differs: inserts name their columns)
    assert set(a["columns"]) == {c.name for c in PARTS.columns} == {*COLUMNS, "changed"}
    # the same affinities: INTEGER, TEXT, REAL (SQLAlchemy spells the double FLOAT)
    assert {k: (t.replace("FLOAT", "REAL"), n, pk) for k, (t, n, pk) in b["columns"].items()} == a["columns"]
    assert a["indexes"] == b["indexes"] and a["pk"] == b["pk"] == ("id",)
