"""The SQLAlchemy tables the reports and the plant database use are the tables the migrations build: the daemon's
SQLite migrations against :data:`METADATA`, the plant's PostgreSQL migrations against :data:`PLANT`, and an older
plant database is upgraded by `lineguard sync` and refused, with its version named, by a report."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from lineguard.inspect.base import InspectError
from lineguard.inspect.schema import COLUMNS, EventRow
from lineguard.inspect.store import ResultStore
from lineguard.inspect.sync import open_plant, open_results
from lineguard.inspect.tables import (
    EVENTS,
    METADATA,
    PARTS,
    PLANT,
    PLANT_MIGRATIONS,
    PLANT_SCHEMA,
    PLANT_VERSION,
    SCHEMA_VERSION,
    SYNC_STATE,
)


def _shape(conn: sa.Connection, table: str, schema: str | None = None) -> dict:
    insp = sa.inspect(conn)
    # nullability of the primary key aside: SQLite reports an INTEGER PRIMARY KEY (the rowid) as nullable
    cols = {c["name"]: (str(c["type"]).split("(")[0].replace("FLOAT", "REAL").replace("DOUBLE PRECISION", "REAL"),
                        c["nullable"] and not c.get("primary_key"), bool(c.get("primary_key")),
                        None if c.get("default") is None else str(c["default"]).split("::")[0])
            for c in insp.get_columns(table, schema=schema)}
    indexes = {i["name"]: (tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table, schema=schema)}
    return {"columns": cols, "indexes": indexes,
            "pk": tuple(insp.get_pk_constraint(table, schema=schema)["constrained_columns"]),
            "unique": {u["name"]: tuple(u["column_names"]) for u in insp.get_unique_constraints(table, schema=schema)},
            "checks": sorted(" ".join(c["sqltext"].replace("(", " ").replace(")", " ").split())
                             for c in insp.get_check_constraints(table, schema=schema))}


def test_the_declared_tables_equal_the_migrated_ones(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "daemon.db")
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    migrated = sa.create_engine(f"sqlite:///{tmp_path / 'daemon.db'}")
    declared = sa.create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    METADATA.create_all(declared)
    with migrated.connect() as m, declared.connect() as d:
        for table in ("parts", "events"):
            a, b = _shape(m, table), _shape(d, table)
            # the same columns (ALTER TABLE appends, so the order differs: inserts name their columns), affinities
            # (INTEGER, TEXT, REAL), indexes and checks
            assert a == b, table
    assert set(a["columns"]) == {c.name for c in EVENTS.columns} == {"id", *EventRow.model_fields}
    with migrated.connect() as m:
        assert set(_shape(m, "parts")["columns"]) == {c.name for c in PARTS.columns} == {*COLUMNS, "changed"}


def test_the_plant_migrations_build_the_declared_plant_schema(pg_engine: sa.Engine) -> None:
    open_plant(pg_engine.url).dispose()  # builds it: every migration, in one transaction
    with pg_engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA declared"))
        PLANT.create_all(conn.execution_options(schema_translate_map={None: "declared"}))
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(PLANT_SCHEMA.c.version)).scalars().all() == [PLANT_VERSION]
        for table in PLANT.tables:
            assert _shape(conn, table) == _shape(conn, table, "declared"), table


def test_an_older_plant_database_is_upgraded_by_sync_and_named_by_a_report(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:  # a version-1 plant database, as the first lineguard with `sync` left it
        for sql in PLANT_MIGRATIONS[0]:
            conn.exec_driver_sql(sql)
        conn.execute(PLANT_SCHEMA.update().values(version=1))
        conn.exec_driver_sql("INSERT INTO sync_state VALUES ('line-1:/r.db', 41, 41, '2026-12-01T00:00:00Z')")
    with pytest.raises(InspectError) as err:  # a report reads, never upgrades
        open_results(pg_engine.url.render_as_string(hide_password=False))
    text = str(err.value)
    assert "\n" not in text and "schema version 1 is older than this lineguard's (3)" in text
    assert "`lineguard sync` upgrades it" in text
    open_plant(pg_engine.url).dispose()  # what `lineguard sync` does first
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(PLANT_SCHEMA.c.version)).scalar() == PLANT_VERSION == 3
        state = conn.execute(sa.select(SYNC_STATE)).mappings().one()
        assert (state["changed"], state["events"]) == (41, 0)  # the parts watermark kept; events from the start
    open_results(pg_engine.url.render_as_string(hide_password=False))[0].dispose()
