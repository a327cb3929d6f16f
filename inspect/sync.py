"""``lineguard sync``: push a line's results (a daemon's SQLite file) into the plant's PostgreSQL database.
Torch-free, Python 3.8.

    report = sync_results("runs/line/results.db", "postgresql+psycopg://qa@plant-db/lineguard", batch=5000)

Batches of final rows in the order of the line database's change sequence (schema 2: every insert and update
takes the next number, so a row that changes after it was synced, e.g. when its archive path arrives, is sent
again) are upserted on the plant key (line, station, camera, run, source frame) in one PostgreSQL transaction
together with the watermark; the camera events (never changed once written) go along in the same transactions,
in the order of their ids, with their own watermark. A killed sync leaves whole batches; the next run resumes
after the last one, and sending a row twice changes nothing. The line file is opened read-only, so the daemon
keeps writing (WAL). Memory is one batch.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert as pg_insert

from lineguard.files import printable
from lineguard.inspect.base import InspectError

from .schema import utc_text
from .tables import (
    DATA_COLUMNS,
    EVENT_COLUMNS,
    EVENTS,
    LINE_TABLES,
    PARTS,
    PLANT_EVENT_KEY,
    PLANT_EVENTS,
    PLANT_KEY,
    PLANT_MIGRATIONS,
    PLANT_PARTS,
    PLANT_SCHEMA,
    PLANT_TABLES,
    PLANT_VERSION,
    SCHEMA_VERSION,
    SYNC_STATE,
    Tables,
)

__all__ = ["SyncReport", "open_plant", "open_results", "sync_results"]


class SyncReport(BaseModel):
    source: str
    rows: int  # part rows sent in this run
    events: int  # camera events sent in this run
    batches: int
    watermark: int  # the line database's parts change sequence, synced up to here
    events_watermark: int  # its events, synced up to this id
    seconds: float
    rows_per_s: float


def _where(url: sa.URL) -> str:
    return url.render_as_string(hide_password=True)


def open_plant(url: Union[str, sa.URL], create: bool = True) -> sa.Engine:
    """An engine on the plant database, its schema checked; with ``create``, built or upgraded where it is missing
    or older (:data:`PLANT_MIGRATIONS`, all in one transaction). One line naming the database when it is
    unreachable, refuses the login, lacks the schema or holds another version."""
    try:
        u = sa.make_url(url)
    except sa.exc.ArgumentError as e:
        raise InspectError(f"not a database URL: {printable(str(url))} ({e})") from None
    if u.get_backend_name() != "postgresql":
        raise InspectError(f"{_where(u)}: the plant database is PostgreSQL (postgresql+psycopg://...)")
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(u, connect_args={"connect_timeout": 10})
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7312001)"))  # one migrator at a time
            found = sa.inspect(conn).has_table(PLANT_SCHEMA.name)
            version = conn.execute(sa.select(sa.func.max(PLANT_SCHEMA.c.version))).scalar() if found else 0
            if create and version is not None and version < PLANT_VERSION:
                for n in range(version, PLANT_VERSION):
                    for sql in PLANT_MIGRATIONS[n]:
                        conn.exec_driver_sql(sql)
                    conn.execute(PLANT_SCHEMA.update().values(version=n + 1))
                version = PLANT_VERSION
    except sa.exc.OperationalError as e:
        raise InspectError(f"{_where(u)}: cannot reach the plant database ({_reason(e)})") from None
    except sa.exc.DBAPIError as e:  # e.g. a role that may not create the tables
        raise InspectError(f"{_where(u)}: cannot use the plant database ({_reason(e)})") from None
    if version == 0:
        raise InspectError(f"{_where(u)}: holds no lineguard results (`lineguard sync` creates them)")
    if version != PLANT_VERSION:
        newer = version is not None and version > PLANT_VERSION
        raise InspectError(f"{_where(u)}: plant database schema version {version} is "
                           f"{'newer' if newer else 'older'} than this lineguard's ({PLANT_VERSION}); "
                           + ("use a newer lineguard" if newer else "`lineguard sync` upgrades it"))
    return engine


def open_results(db: str) -> Tuple[sa.Engine, Tables]:
    """A results database to read: a daemon's SQLite file (read-only) or the plant's PostgreSQL (a URL), and its
    tables."""
    if "://" in db:
        return open_plant(db, create=False), PLANT_TABLES
    return _line_db(Path(db).resolve()), LINE_TABLES


def _reason(e: sa.exc.DBAPIError) -> str:
    """The server's own message where it sent one (psycopg's diagnostics), else the driver's last line."""
    primary = getattr(getattr(e.orig, "diag", None), "message_primary", None)
    if primary:
        return " ".join(str(primary).split())
    lines = [x for x in str(e.orig if e.orig is not None else e).splitlines() if x.strip()]
    return " ".join(lines[-1].split()) if lines else type(e).__name__


def _line_db(path: Path) -> sa.Engine:
    name = printable(str(path))
    if not path.is_file():
        raise InspectError(f"{name}: no such results database")
    try:
        raw = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
        try:
            version = int(raw.execute("PRAGMA user_version").fetchone()[0])
        finally:
            raw.close()
    except sqlite3.DatabaseError as e:
        raise InspectError(f"{name}: not a results database ({e})") from None
    if version != SCHEMA_VERSION:
        hint = ("open it once with `lineguard inspect status --db` to migrate it" if version < SCHEMA_VERSION
                else "use a newer lineguard")
        raise InspectError(f"{name}: results database schema version {version}, this lineguard reads version "
                           f"{SCHEMA_VERSION}: {hint}")
    uri = path.as_uri() + "?mode=ro"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))


def sync_results(db: Union[str, Path], url: Union[str, sa.URL], batch: int = 5000, source: Optional[str] = None,
                 progress: Optional[Callable[[int], None]] = None) -> SyncReport:
    """Push the final rows of the line database ``db`` changed since the last sync, then its new camera events;
    ``source`` names it in the plant database (default host:absolute path); ``progress`` gets the rows sent after
    each batch."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = Path(db).resolve()
    line = _line_db(path)
    plant = open_plant(url)
    source = source or f"{socket.gethostname()}:{path}"
    t0, sent, events, batches = time.perf_counter(), 0, 0, 0
    p, e = PARTS.c, EVENTS.c
    upsert = pg_insert(PLANT_PARTS)
    upsert = upsert.on_conflict_do_update(
        index_elements=list(PLANT_KEY),
        set_={c: upsert.excluded[c] for c in ("line_row_id", *DATA_COLUMNS) if c not in PLANT_KEY})
    add_events = pg_insert(PLANT_EVENTS).on_conflict_do_nothing(index_elements=list(PLANT_EVENT_KEY))  # immutable
    try:
        with plant.connect() as conn:
            with conn.begin():
                marks = conn.execute(sa.select(SYNC_STATE.c.changed, SYNC_STATE.c.events)
                                     .where(SYNC_STATE.c.source == source)).first() or (0, 0)
            mark, event_mark = int(marks[0]), int(marks[1])
            while True:
                with line.connect() as lc:
                    rows = lc.execute(sa.select(PARTS).where(p.changed > mark, p.state == "final")
                                      .order_by(p.changed).limit(batch)).mappings().all()
                    found = lc.execute(sa.select(EVENTS).where(e.id > event_mark).order_by(e.id).limit(batch)
                                       ).mappings().all()
                if not rows and not found:
                    break
                with conn.begin():
                    if rows:
                        mark = int(rows[-1]["changed"])
                        conn.execute(upsert, [_plant_row(r, DATA_COLUMNS, "line_row_id") for r in rows])
                    if found:
                        event_mark = int(found[-1]["id"])
                        conn.execute(add_events, [_plant_row(r, EVENT_COLUMNS, "line_event_id") for r in found])
                    _save_marks(conn, source, mark, event_mark, len(rows))
                sent += len(rows)
                events += len(found)
                batches += 1
                if progress is not None:
                    progress(sent)
    except sa.exc.DBAPIError as e:
        where = printable(str(path)) if isinstance(e.orig, sqlite3.Error) else _where(plant.url)
        raise InspectError(f"{where}: sync stopped after {sent} rows ({_reason(e)}); rerun to resume") from None
    finally:
        line.dispose()
        plant.dispose()
    seconds = time.perf_counter() - t0
    return SyncReport(source=source, rows=sent, events=events, batches=batches, watermark=mark,
                      events_watermark=event_mark, seconds=seconds, rows_per_s=sent / seconds if seconds > 0 else 0.0)


def _plant_row(row: Any, columns: Tuple[str, ...], id_as: str) -> Dict[str, Any]:
    out = {c: row[c] for c in columns}
    out["line"], out["station"] = out["line"] or "", out["station"] or ""
    out[id_as] = row["id"]
    return out


def _save_marks(conn: sa.Connection, source: str, changed: int, events: int, rows: int) -> None:
    stmt = pg_insert(SYNC_STATE).values(source=source, changed=changed, events=events, rows=rows,
                                        utc=utc_text(time.time()))
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[SYNC_STATE.c.source],
        set_={"changed": stmt.excluded.changed, "events": stmt.excluded.events,
              "rows": SYNC_STATE.c.rows + stmt.excluded.rows, "utc": stmt.excluded.utc}))
