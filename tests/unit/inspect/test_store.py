"""The results database: schema and migrations, pending -> final, crash recovery after a real SIGKILL, no
duplicate part, totals against the truth, and every database problem as one InspectError line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import ValidationError

from lineguard.edge.verdict import Decision, DecisionPolicy, DefectBox, Verdict
from lineguard.inspect import store as store_mod
from lineguard.inspect.base import InspectError
from lineguard.inspect.schema import COLUMNS, MIGRATIONS, EventRow, PartRow, utc_text
from lineguard.inspect.store import Completion, ResultStore

T0 = 1714564800.0  # 2024-05-01T12:00:00Z


def part(seq: int, decision: str = "OK", run: str = "run-1", **kw: Any) -> PartRow:
    fields = {"camera": "camera-1", "source_seq": seq, "run_id": run, "ts": T0 + seq, "decision": decision,
              "top_class": "ok" if decision == "OK" else "crack", "scores": {"ok": 0.9, "crack": 0.1},
              "ng_score": 0.1, "model_version": "a" * 64, "policy": {"threshold": 0.5}}
    return PartRow(**{**fields, **kw})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    s = ResultStore(tmp_path / "db" / "results.db")
    yield s
    s.close()


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    return text


def test_schema_is_created_with_its_version_and_indexes(store: ResultStore) -> None:
    assert store.schema_version == len(MIGRATIONS) == 5
    raw = sqlite3.connect(str(store.path))
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 5
        assert {r[1] for r in raw.execute("PRAGMA table_info(parts)")} == {*COLUMNS, "changed"}
        indexes = {r[1]: r[2] for r in raw.execute("PRAGMA index_list(parts)")}
        assert indexes == {"parts_ts": 0, "parts_decision": 0, "parts_source": 1, "parts_changed": 0}
        assert [r[2] for r in raw.execute("PRAGMA index_info(parts_source)")] == ["run_id", "camera", "source_seq"]
        assert {r[1] for r in raw.execute("PRAGMA table_info(events)")} == {"id", *EventRow.model_fields}
    finally:
        raw.close()


def test_wal_and_synchronous_full_are_in_effect(store: ResultStore) -> None:
    info = store.describe()
    assert info["journal_mode"] == "wal" and info["synchronous"] == "FULL" and info["busy_timeout_ms"] == 5000
    raw = sqlite3.connect(str(store.path))
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    finally:
        raw.close()


def _changed(path: Path) -> dict:
    raw = sqlite3.connect(str(path))
    try:
        return dict(raw.execute("SELECT id, changed FROM parts"))
    finally:
        raw.close()


def test_every_insert_and_update_takes_the_next_change_number(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    raw = sqlite3.connect(str(path))  # a version-1 database with two parts, as a version-1 daemon left it
    for sql in MIGRATIONS[0]:
        raw.execute(sql)
    raw.executemany("INSERT INTO parts (state, camera, source_seq, run_id, utc, ts, scores, decision, boxes) "
                    "VALUES ('final', 'cam', ?, 'old', '', 0, '{}', 'OK', '[]')", [(0,), (1,)])
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with ResultStore(path) as s:  # migration 2 numbers the old rows by id
        assert s.schema_version == len(MIGRATIONS) and _changed(path) == {1: 1, 2: 2}
        a = s.pending(part(2, "NG"))
        assert _changed(path)[a] == 3
        s.complete(a, time.time(), {"modbus": True})
        s.archived(1, "ok/1.png")
        assert _changed(path) == {1: 5, 2: 2, 3: 4}  # the latest change has the highest number


def test_a_database_is_upgraded_by_a_new_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path) as s:
        s.record(part(0))
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, ("ALTER TABLE parts ADD COLUMN operator TEXT",)])
    with ResultStore(path) as s:
        assert s.schema_version == len(MIGRATIONS) + 1
        assert [r.source_seq for r in s.rows()] == [0]
        s.record(part(1))  # inserts name their columns: the new one stays NULL
    raw = sqlite3.connect(str(path))
    try:
        assert "operator" in [r[1] for r in raw.execute("PRAGMA table_info(parts)")]
    finally:
        raw.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.db"
    ResultStore(path).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, ("ALTER TABLE parts ADD COLUMN operator TEXT",
                                                                "SELECT * FROM nowhere")])
    with pytest.raises(InspectError) as err:
        ResultStore(path)
    assert f"migrating the schema to version {len(MIGRATIONS) + 1}: no such table: nowhere" in one_line_naming(err,
                                                                                                             path)
    raw = sqlite3.connect(str(path))
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "operator" not in [r[1] for r in raw.execute("PRAGMA table_info(parts)")]
    finally:
        raw.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    ResultStore(path).close()
    raw = sqlite3.connect(str(path))
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(InspectError) as err:
        ResultStore(path)
    assert "newer" in one_line_naming(err, path)


def test_pending_then_complete(store: ResultStore) -> None:
    pid = store.pending(part(0, "NG"))
    (row,) = store.rows()
    assert (row.id, row.state, row.decision, row.t_signalled, row.ack) == (pid, "pending", Decision.NG, None, None)
    assert row.utc == "2024-05-01T12:00:00.000Z" and row.scores == {"ok": 0.9, "crack": 0.1}
    store.complete(pid, T0 + 0.05, {"plc": True, "opcua": "SignalError: timeout"}, archive_path="2024-05-01/NG/a.png")
    (row,) = store.rows()
    assert (row.state, row.t_signalled, row.archive_path) == ("final", T0 + 0.05, "2024-05-01/NG/a.png")
    assert row.ack == {"plc": True, "opcua": "SignalError: timeout"}
    store.archived(pid, "2024-05-01/NG/b.png", image_sha256="f" * 64)
    assert (store.rows()[0].archive_path, store.rows()[0].image_sha256) == ("2024-05-01/NG/b.png", "f" * 64)
    for bad in (pid, pid + 1):  # already final, unknown
        with pytest.raises(InspectError, match="is not pending"):
            store.complete(bad, None, None)
    with pytest.raises(InspectError, match="no part"):
        store.archived(pid + 1, "x.png")


def test_batched_writes(store: ResultStore) -> None:
    ids = store.pending_many([part(i) for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    store.complete_many([Completion(i, T0 + 1, {"log": True}) for i in ids[:3]])
    with pytest.raises(InspectError, match="not pending"):  # one bad id: the whole batch is refused
        store.complete_many([Completion(ids[3], T0, None), Completion(ids[0], T0, None)])
    assert [r.state for r in store.rows()] == ["final"] * 3 + ["pending"] * 2
    assert len(store.record_many([part(i) for i in range(5, 9)])) == 4
    assert len(store.rows(state="final")) == 7


def test_no_duplicate_part(store: ResultStore) -> None:
    store.pending(part(1))
    with pytest.raises(InspectError) as err:
        store.record(part(1, "NG"))
    assert "already recorded (run run-1, camera camera-1, source_seq 1)" in one_line_naming(err, store.path)
    with pytest.raises(InspectError, match="already recorded"):  # the batch is one transaction: nothing of it
        store.pending_many([part(2), part(1)])
    assert [r.source_seq for r in store.rows()] == [1]
    store.record(part(1, run="run-2"))  # another run, another camera: other parts
    store.record(part(1, camera="camera-2"))
    assert len(store.rows()) == 3 and len(store.rows(run_id="run-2")) == 1


CRASHING_WRITER = """
import sys, time
from lineguard.inspect.schema import PartRow
from lineguard.inspect.store import ResultStore
s = ResultStore(sys.argv[1])
def part(seq, decision, reason=None):
    return PartRow(camera="camera-1", source_seq=seq, run_id="run-1", ts=1714564800.0 + seq, decision=decision,
                   reason=reason, scores={"ok": 0.3, "crack": 0.7}, ng_score=0.7, top_class="crack")
s.record(part(0, "NG"))
s.pending(part(1, "OK"))
s.pending_many([part(2, "UNCERTAIN"), part(3, "NG", "deadline")])
pid = s.pending(part(4, "NG"))
s.complete(pid, 1714564805.0, {"plc": True})
print("ready", flush=True)
time.sleep(60)
"""


def test_recover_after_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASHING_WRITER), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    with ResultStore(path) as s:
        assert [r.state for r in s.rows()] == ["final", "pending", "pending", "pending", "final"]
        assert s.recover() == 3
        rows = s.rows()
        assert all(r.state == "final" and r.decision is Decision.NG for r in rows)
        assert [r.reason for r in rows] == [None, *["crash-recovered"] * 3, None]
        assert [r.prior_decision for r in rows] == [None, Decision.OK, Decision.UNCERTAIN, Decision.NG, None]
        assert [r.prior_reason for r in rows] == [None, None, None, "deadline", None]
        assert rows[1].scores == {"ok": 0.3, "crack": 0.7} and rows[4].ack == {"plc": True}
        assert s.recover() == 0
        assert s.totals().by_reason == {"crash-recovered": 3}


def test_totals_against_the_truth(store: ResultStore) -> None:
    store.record_many([
        part(0, "OK", truth="ok"),  # right
        part(1, "NG", truth="crack"),  # right
        part(2, "UNCERTAIN", truth="crack"),  # wrong: not NG
        part(3, "NG", truth="ok", reason="deadline", top_class=None),  # wrong: a fail-safe NG of an OK part
        part(4, "OK", truth="crack"),  # wrong
        part(5, "NG", model_version="b" * 64),  # truth unknown
    ])
    store.pending(part(6, "UNCERTAIN", truth="ok"))  # wrong
    store.record(part(7, "OK", run="run-2", truth="ok"))
    t = store.totals(run_id="run-1", ok_class="ok")
    assert (t.parts, t.pending, t.truth_total, t.truth_correct) == (7, 1, 6, 2)
    assert t.accuracy == pytest.approx(2 / 6)
    assert t.by_decision == {"OK": 2, "NG": 3, "UNCERTAIN": 2}
    assert t.by_reason == {"deadline": 1}
    assert t.by_class == {"OK/ok": 2, "NG/crack": 2, "NG/-": 1, "UNCERTAIN/crack": 2}
    assert (t.first_ts, t.last_ts, t.first_utc) == (T0, T0 + 6, "2024-05-01T12:00:00.000Z")
    assert t.model_versions == ["a" * 64, "b" * 64]
    every = store.totals()  # all runs; the OK class is the top class of the model's OK decisions
    assert (every.parts, every.ok_class, every.truth_total, every.truth_correct) == (8, "ok", 7, 3)
    store.record(part(8, "OK", top_class="good"))
    assert store.totals().ok_class is None and store.totals().accuracy is None  # two OK classes: not guessed
    assert store.totals(ok_class="ok").truth_correct == 3
    window = store.totals(since=T0 + 1, until=T0 + 4, ok_class="ok")  # since <= ts < until
    assert (window.parts, window.truth_total, window.truth_correct, window.by_reason) == (3, 3, 1, {"deadline": 1})
    empty = store.totals(since=T0 + 100)
    assert (empty.parts, empty.first_ts, empty.accuracy, empty.by_decision, empty.model_versions) == (
        0, None, None, {}, [])


def test_a_row_from_a_verdict_round_trips(store: ResultStore) -> None:
    box = DefectBox(x0=1, y0=2, x1=5, y1=6, score=0.8, area=16)
    v = Verdict(frame_id=7, source_id="camera-1", serial="S1", lot="L1", timestamp=T0 + 0.1234, decision=Decision.NG,
                top_class="crack", scores={"ok": 0.2, "crack": 0.8}, ng_score=0.8,
                policy=DecisionPolicy(threshold=0.5), model_version="c" * 64, boxes=[box])
    row = PartRow.from_verdict(v, "run-9", line="line-1", station="st-1", truth="crack", t_decided=T0 + 0.2)
    pid = store.pending(row)
    (back,) = store.rows()
    assert back == row.model_copy(update={"id": pid, "state": "pending", "utc": utc_text(T0 + 0.1234)})
    assert back.utc == "2024-05-01T12:00:00.123Z" and back.boxes == [box] and back.policy["threshold"] == 0.5
    assert (back.camera, back.source_seq, back.t_capture) == ("camera-1", 7, T0 + 0.1234)


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_text("not a database\n" * 500)
    with pytest.raises(InspectError) as err:
        ResultStore(path)
    assert "not a database" in one_line_naming(err, path)


def test_an_unusable_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "results.db"
    with pytest.raises(InspectError) as err:
        ResultStore(path)
    one_line_naming(err, path)


def test_a_lock_held_too_long_is_one_line_and_the_store_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    with ResultStore(path, busy_timeout=0.1) as s:
        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        start = time.monotonic()
        with pytest.raises(InspectError) as err:
            s.pending(part(0))
        assert "locked" in one_line_naming(err, path) and time.monotonic() - start < 1.0
        other.execute("ROLLBACK")
        other.close()
        s.pending(part(0))
        assert len(s.rows()) == 1


def test_a_closed_store_is_an_error(tmp_path: Path) -> None:
    s = ResultStore(tmp_path / "results.db")
    s.close()
    s.close()
    with pytest.raises(InspectError, match="closed"):
        s.record(part(0))


def test_a_full_disk_is_one_line_and_the_store_goes_on(small_tmpfs) -> None:
    tmpfs = small_tmpfs("1m")
    path = tmpfs / "results.db"
    with ResultStore(path) as s:
        s.record(part(0))
        filler = small_tmpfs.fill(tmpfs)
        with pytest.raises(InspectError) as err:
            for seq in range(1, 200):  # the WAL has some room left: write until it is gone
                s.pending(part(seq, serial="x" * 32768))
        assert "full" in one_line_naming(err, path)
        written = len(s.rows())
        filler.unlink()
        s.pending(part(1000))
        assert len(s.rows()) == written + 1


def test_a_batch_is_one_transaction_of_inserts_updates_completions_and_archive_paths(store: ResultStore) -> None:
    """The daemon's writer: a part's row at capture (pending NG in-flight), its decision, then final."""
    box = DefectBox(x0=1, y0=2, x1=3, y1=4, score=0.9, area=4)
    with store.batch() as b:
        a = b.pending(part(0, "NG", reason="in-flight"))
        c = b.pending(part(1, "NG", reason="in-flight"))
        b.update(a, decision=Decision.NG, reason=None, top_class="crack", boxes=[box], policy=DecisionPolicy(
            threshold=0.4), t_decided=T0 + 1)
    with store.batch() as b:
        b.complete(Completion(a, T0 + 2, {"0-modbus": {"ack": True}}))
        b.archived(a, "2024-05-01/NG/x.png")
    first, second = store.rows()
    assert (first.state, first.decision, first.reason, first.top_class) == ("final", Decision.NG, None, "crack")
    assert first.boxes == [box] and first.policy["threshold"] == 0.4 and first.ack == {"0-modbus": {"ack": True}}
    assert first.archive_path == "2024-05-01/NG/x.png" and first.t_signalled == T0 + 2
    assert (second.id, second.state, second.reason) == (c, "pending", "in-flight")
    with pytest.raises(InspectError, match="not pending"), store.batch() as b:  # nothing of a failed batch stays
        b.update(c, decision="OK", reason=None)
        b.complete(Completion(a, T0 + 3, None))
    assert store.rows()[1].decision == Decision.NG and store.rows()[1].reason == "in-flight"
    with pytest.raises(ValueError, match="not updatable"), store.batch() as b:
        b.update(c, run_id="other")


def test_camera_events_are_recorded_with_the_batch_they_came_in(store: ResultStore) -> None:
    with store.batch() as b:
        b.pending(part(0, "NG", reason="in-flight"))
        b.event(EventRow(run_id="run-1", line="line-1", camera="camera-1", ts=T0, kind="reconnect"))
        b.event(EventRow(run_id="run-1", camera="camera-1", ts=T0 + 1, kind="frames-lost", count=37))
    with pytest.raises(InspectError, match="not pending"), store.batch() as b:  # a failed batch keeps no event
        b.event(EventRow(run_id="run-1", camera="camera-1", ts=T0 + 2, kind="reconnect"))
        b.complete(Completion(999, None, None))
    raw = sqlite3.connect(str(store.path))
    try:
        found = raw.execute("SELECT run_id, line, station, camera, utc, ts, kind, count FROM events ORDER BY id"
                            ).fetchall()
    finally:
        raw.close()
    assert found == [("run-1", "line-1", None, "camera-1", utc_text(T0), T0, "reconnect", 1),
                     ("run-1", None, None, "camera-1", utc_text(T0 + 1), T0 + 1, "frames-lost", 37)]
    with pytest.raises(ValidationError):
        EventRow(run_id="r", camera="c", ts=T0, kind="reconnect", count=0)
    with pytest.raises(ValidationError):
        EventRow(run_id="r", camera="c", ts=T0, kind="power-cut")
