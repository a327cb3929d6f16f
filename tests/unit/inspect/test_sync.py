"""`lineguard sync` against a real PostgreSQL cluster (.ci/postgres): idempotent, resumable after kill -9,
correct while the daemon writes, the same report figures as the line's SQLite, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from lineguard.inspect.base import InspectError
from lineguard.inspect.qa import qa_figures
from lineguard.inspect.schema import MIGRATIONS, EventRow, PartRow
from lineguard.inspect.store import ResultStore
from lineguard.inspect.sync import open_plant, sync_results
from lineguard.inspect.tables import PLANT_EVENTS, PLANT_PARTS, PLANT_SCHEMA, PLANT_TABLES, SYNC_STATE

T0 = 1_780_000_000.0


def part(seq: int, decision: str = "OK", run: str = "run-1", **kw) -> PartRow:
    return PartRow(camera="cam1", source_seq=seq, run_id=run, line="L1", ts=T0 + seq, t_capture=T0 + seq,
                   t_decided=T0 + seq + 0.02, decision=decision, top_class="scratch" if decision == "NG" else "ok",
                   model_version="m1", lot=f"lot{seq // 100}", **kw)


def event(seq: int, kind: str = "reconnect", count: int = 1, run: str = "run-1") -> EventRow:
    return EventRow(run_id=run, line="L1", camera="cam1", ts=T0 + seq + 0.5, kind=kind, count=count)


def _plant_events(engine: sa.Engine) -> list:
    e = PLANT_EVENTS.c
    with engine.connect() as conn:
        return conn.execute(sa.select(e.line_event_id, e.kind, e.count).order_by(e.line_event_id)).all()


def _plant_rows(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(PLANT_PARTS.c.run_id, PLANT_PARTS.c.source_seq, PLANT_PARTS.c.archive_path)
                            .order_by(PLANT_PARTS.c.run_id, PLANT_PARTS.c.source_seq)).all()


def test_twice_is_once_pending_rows_wait_and_later_changes_arrive(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        s.record_many([part(i, "NG" if i % 7 == 0 else "OK") for i in range(250)])
        pending = s.pending(part(250, "NG"))
        with s.batch() as b:
            b.event(event(10))
            b.event(event(11, "frames-lost", 40))
    first = sync_results(db, pg_engine.url, batch=100)
    assert (first.rows, first.events, first.batches) == (250, 2, 3)
    again = sync_results(db, pg_engine.url, batch=100)
    assert (again.rows, again.events) == (0, 0) and again.watermark == first.watermark
    rows = _plant_rows(pg_engine)
    assert [r[1] for r in rows] == list(range(250))  # once each; the pending part not yet
    assert _plant_events(pg_engine) == [(1, "reconnect", 1), (2, "frames-lost", 40)]
    with ResultStore(db) as s:
        s.complete(pending, time.time(), {"modbus": True})
        s.archived(4, "ok/3.png")  # a row changed after it was synced (id 4: part 3)
        with s.batch() as b:
            b.event(event(250))
    third = sync_results(db, pg_engine.url, batch=100)
    assert (third.rows, third.events, third.events_watermark) == (2, 1, 3)
    rows = _plant_rows(pg_engine)
    assert [r[1] for r in rows] == list(range(251)) and rows[3][2] == "ok/3.png"
    assert [e[0] for e in _plant_events(pg_engine)] == [1, 2, 3]
    with pg_engine.connect() as conn:
        state = conn.execute(sa.select(SYNC_STATE.c.rows)).scalar()
    assert state == 252  # rows sent over the three runs


def test_killed_mid_run_the_rerun_completes_every_row_once(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        s.record_many([part(i) for i in range(6000)])
    open_plant(pg_engine.url).dispose()
    url = pg_engine.url.render_as_string(hide_password=False)
    code = textwrap.dedent(f"""
        import time
        from lineguard.inspect.sync import sync_results
        sync_results({str(db)!r}, {url!r}, batch=200, progress=lambda n: time.sleep(0.05))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with pg_engine.connect() as conn:
                done = conn.execute(sa.select(sa.func.count()).select_from(PLANT_PARTS)).scalar()
            if done >= 1000:
                break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with pg_engine.connect() as conn:
        done = conn.execute(sa.select(sa.func.count()).select_from(PLANT_PARTS)).scalar()
    assert 1000 <= done < 6000 and done % 200 == 0  # whole batches only
    rest = sync_results(db, pg_engine.url, batch=500)
    assert rest.rows == 6000 - done
    assert [r[1] for r in _plant_rows(pg_engine)] == list(range(6000))


def test_syncing_while_the_daemon_writes_delivers_every_row(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    ResultStore(db).close()
    stop = threading.Event()

    def daemon() -> None:
        with ResultStore(db) as s:
            seq = 0
            while not stop.is_set():
                ids = s.pending_many([part(seq + k, "NG") for k in range(20)])
                for i in ids:
                    s.complete(i, time.time(), {"modbus": True})
                seq += 20
                time.sleep(0.002)

    writer = threading.Thread(target=daemon)
    writer.start()
    runs, t_end = [], time.monotonic() + 3
    try:
        while time.monotonic() < t_end or len(runs) < 5:
            runs.append(sync_results(db, pg_engine.url, batch=300).rows)
    finally:
        stop.set()
        writer.join(30)
    sync_results(db, pg_engine.url, batch=300)
    with ResultStore(db) as s:
        total = len(s.rows())
    assert len([n for n in runs if n]) >= 2 and total > sum(runs[:1])  # rows arrived while more were written
    assert [r[1] for r in _plant_rows(pg_engine)] == list(range(total))


def test_the_report_from_postgresql_equals_the_one_from_sqlite(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        s.record_many([part(i, "NG" if i % 5 == 0 else "OK", reason="deadline" if i % 50 == 0 else None)
                       for i in range(1000)])
        s.record_many([part(i, run="run-2", station="S2") for i in range(200)])
        with s.batch() as b:
            for i in range(0, 1000, 300):
                b.event(event(i))
                b.event(event(i, "frames-lost", i + 1))
            b.event(event(3000))  # outside the period
    sync_results(db, pg_engine.url)
    line = sa.create_engine(f"sqlite:///{db}")
    for by in ("lot", "line", "camera"):
        a = qa_figures(line, T0, T0 + 2000, by=by)
        b = qa_figures(pg_engine, T0, T0 + 2000, by=by, tables=PLANT_TABLES)
        assert a == b, by
    assert a.parts == 1200
    assert [(c.camera, c.counts) for c in a.cameras] == [("L1/cam1", {"reconnect": 4, "frames-lost": 1 + 301 + 601
                                                                      + 901})]
    # `lineguard report --json`, the command the quality engineer runs, prints the same figures from either
    url = pg_engine.url.render_as_string(hide_password=False)
    period = ["--from", "2026-05-28T20:26:40Z", "--to", "2026-05-28T21:00:00Z", "--by", "shift"]  # T0 .. T0 + 2000
    printed = []
    for source in (str(db), url):
        run = subprocess.run([sys.executable, "-m", "lineguard", "report", "--db", source, *period, "--json",
                              "--out", str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        printed.append(json.loads(run.stdout))
    assert printed[0] == printed[1] and printed[0]["parts"] == 1200 and printed[0]["t0"] == T0


def _one_line(err: pytest.ExceptionInfo, *names: str) -> str:
    text = str(err.value)
    assert "\n" not in text and all(n in text for n in names), text
    return text


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        s.record(part(0))
    url = pg_engine.url
    with pytest.raises(InspectError) as err:  # nothing listens there
        sync_results(db, url.set(host="127.0.0.1", port=1))
    _one_line(err, "cannot reach the plant database")
    with pytest.raises(InspectError) as err:
        sync_results(db, url.set(password="wrong"))
    assert "***" in _one_line(err, "password authentication failed") and "wrong" not in str(err.value)
    role = f"ro_{pg_engine.url.database}"
    with pg_engine.connect() as conn:  # a role that may log in but not create tables (PostgreSQL 15 default)
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        conn.commit()
    try:
        with pytest.raises(InspectError) as err:
            sync_results(db, url.set(username=role, password="pw"))
        _one_line(err, "cannot use the plant database", "permission denied")
    finally:
        with pg_engine.connect() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
            conn.commit()
    old = tmp_path / "old.db"
    import lineguard.inspect.store as store_mod
    saved = store_mod.MIGRATIONS
    store_mod.MIGRATIONS = MIGRATIONS[:1]
    try:
        ResultStore(old).close()
    finally:
        store_mod.MIGRATIONS = saved
    with pytest.raises(InspectError) as err:
        sync_results(old, url)
    _one_line(err, str(old), "schema version 1", "migrate")
    with pytest.raises(InspectError) as err:
        sync_results(tmp_path / "missing.db", url)
    _one_line(err, "missing.db", "no such results database")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(InspectError) as err:
        sync_results(tmp_path / "junk.db", url)
    _one_line(err, "junk.db", "not a results database")
    open_plant(url).dispose()
    with pg_engine.begin() as conn:
        conn.execute(PLANT_SCHEMA.update().values(version=99))
    with pytest.raises(InspectError) as err:
        sync_results(db, url)
    _one_line(err, "schema version 99", "newer")
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(PLANT_PARTS)).scalar() == 0


def test_the_cli_verb(tmp_path: Path, pg_engine: sa.Engine) -> None:
    db = tmp_path / "results.db"
    with ResultStore(db) as s:
        s.record_many([part(i) for i in range(30)])
    url = pg_engine.url.render_as_string(hide_password=False)
    run = subprocess.run([sys.executable, "-m", "lineguard", "sync", "--db", str(db), "--to", url, "--batch", "8",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rep = json.loads(run.stdout.strip().splitlines()[-1])
    assert (rep["rows"], rep["events"], rep["batches"]) == (30, 0, 4) and rep["rows_per_s"] > 0
    bad = subprocess.run([sys.executable, "-m", "lineguard", "sync", "--db", str(db), "--to", "mysql://x@y/z"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "PostgreSQL" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
