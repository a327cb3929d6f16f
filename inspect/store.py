"""The line's results database: one SQLite row per part, written before the reject signal and never lost.
Torch-free, Python 3.8 (the line computer).

    store = ResultStore("results.db")                 # WAL, synchronous=FULL; creates or upgrades the schema
    store.recover()                                   # start-up: parts left pending by a crash become NG
    pid = store.pending(PartRow.from_verdict(verdict, run_id, line="line-1", truth=cap.truth))
    ...                                               # send the reject signal
    store.complete(pid, t_signalled=time.time(), ack={"plc": True})
    store.record(PartRow(..., decision="NG", reason="bad-frame"))   # final at once: no signal needed
    print(store.totals(since=time.time() - 3600).model_dump_json())     # counts, agreement with the truth
    store.close()

A part's row is inserted ``pending`` (the decision is known, the reject signal not yet sent) and committed,
then made ``final`` once the signal is acknowledged (or failed: ``ack`` holds the error). A crash in between
leaves it pending; :meth:`ResultStore.recover` makes every pending row final NG with reason
``crash-recovered`` (fail-safe: the part may have passed unsignalled) and keeps the decision and reason the
row had in ``prior_decision`` / ``prior_reason``. Each write is one transaction, committed with an fsync
(``synchronous=FULL``); the batched variants (``pending_many``, ``complete_many``, ``record_many``) commit many
parts at once, for slow disks; :meth:`ResultStore.batch` puts any mix of them in one transaction (the daemon's
writer: a part's row at capture, its decision, its completion, its archive path, a camera's events).

One writer: the daemon calls a store from one thread (the connection is opened with
``check_same_thread=False`` so that thread need not be the one that opened it). Readers (reports) open their
own store. Every database problem (not a database, a newer schema, an unwritable folder, a full disk, a lock
held too long, a part recorded twice) is one :class:`InspectError` line naming the file.

The schema (``schema.py``: the row, the table, :data:`~lineguard.inspect.schema.MIGRATIONS`) is versioned by
``PRAGMA user_version``; each missing migration is applied in its own transaction when a store opens.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Union

from lineguard.config import StrictModel
from lineguard.files import printable
from lineguard.inspect.base import InspectError

from .schema import (
    COLUMNS,
    EVENT_INSERT,
    INSERT,
    JSON_COLUMNS,
    MIGRATIONS,
    RECOVERED,
    UPDATABLE,
    EventRow,
    PartRow,
    column_value,
    utc_text,
)

__all__ = ["Batch", "Completion", "ResultStore", "StoreTotals"]

class Completion(NamedTuple):
    """A pending part's outcome for :meth:`ResultStore.complete_many`."""

    id: int
    t_signalled: Optional[float]
    ack: Optional[Dict[str, Any]]
    archive_path: Optional[str] = None


class StoreTotals(StrictModel):
    """Counts over a time range (``since <= ts < until``), of one run or all."""

    parts: int
    pending: int  # still waiting for their signal (or left by a crash not yet recovered)
    by_decision: Dict[str, int]
    by_reason: Dict[str, int]  # parts decided other than by the model; the rest are model decisions
    by_class: Dict[str, int]  # "decision/top_class" ('-' where none) -> parts
    ok_class: Optional[str]  # the true class of a good part, as given or found (None: agreement unknown)
    truth_total: int  # parts whose true class is known
    truth_correct: Optional[int]  # of those, decided right (OK part -> OK, defective -> NG); None: no ok_class
    accuracy: Optional[float]  # truth_correct / truth_total
    first_ts: Optional[float]
    last_ts: Optional[float]
    first_utc: Optional[str]
    last_utc: Optional[str]
    model_versions: List[str]  # in the order first seen


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class ResultStore:
    """The results database at ``path`` (created with its folder if missing); ``busy_timeout`` seconds is how
    long a write waits for a lock another process holds. See the module docstring."""

    def __init__(self, path: Union[str, Path], busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._name = printable(str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InspectError(f"{self._name}: cannot create the folder ({e.strerror or e})") from None
        try:
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise self._error(e) from None
        self._conn: Optional[sqlite3.Connection] = conn
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise InspectError(f"{self._name}: the WAL journal is not available here (journal_mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.Error as e:
            self.close()
            raise self._error(e) from None
        except InspectError:
            self.close()
            raise

    def _error(self, e: BaseException, doing: str = "") -> InspectError:
        return InspectError(f"{self._name}: {doing}{_one_line(e)}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InspectError(f"{self._name}: the results store is closed")
        return self._conn

    @contextmanager
    def _tx(self, doing: str = "") -> Iterator[sqlite3.Connection]:
        """One write transaction (taking the write lock at once), committed; rolled back on any error (a
        database error becomes an :class:`InspectError`, prefixed with ``doing``)."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):  # SQLite may have rolled back itself (a full disk): report the cause
                    conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise self._error(e, doing) from None
            raise

    @property
    def schema_version(self) -> int:
        return int(self._db().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply the missing :data:`MIGRATIONS`, each in its own transaction with its version number."""
        known, version = len(MIGRATIONS), self.schema_version
        if version > known:
            raise InspectError(f"{self._name}: results database schema version {version} is newer than this "
                               f"lineguard knows ({known}); use a newer lineguard")
        while version < known:
            with self._tx(f"migrating the schema to version {version + 1}: ") as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another process may have
                if version < known:  # migrated while this one waited for the lock
                    for sql in MIGRATIONS[version]:
                        conn.execute(sql)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")

    def describe(self) -> Dict[str, object]:
        """The file, the schema version and the settings in effect on this connection."""
        conn = self._db()
        return {"path": str(self.path), "schema_version": self.schema_version,
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                    conn.execute("PRAGMA synchronous").fetchone()[0], "?"),
                "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0]}

    # writes (one thread)

    def _insert(self, conn: sqlite3.Connection, row: PartRow, state: str) -> int:
        values = row.model_dump(mode="json")
        del values["id"]
        values["state"] = state
        values["utc"] = row.utc or utc_text(row.ts)
        for c in JSON_COLUMNS:
            if values[c] is not None:
                values[c] = json.dumps(values[c], separators=(",", ":"))
        try:
            return int(conn.execute(INSERT, values).lastrowid)
        except sqlite3.IntegrityError as e:
            if "UNIQUE" not in str(e):
                raise
            raise InspectError(f"{self._name}: part already recorded (run {row.run_id}, camera {row.camera}, "
                               f"source_seq {row.source_seq})") from None

    def pending_many(self, rows: Sequence[PartRow]) -> List[int]:
        """Insert parts whose reject signal is still to be sent, in one transaction; their ids."""
        with self._tx() as conn:
            return [self._insert(conn, r, "pending") for r in rows]

    def pending(self, row: PartRow) -> int:
        """Insert a part whose reject signal is still to be sent, committed; its id."""
        return self.pending_many([row])[0]

    def record_many(self, rows: Sequence[PartRow]) -> List[int]:
        """Insert final parts (no signal to wait for) in one transaction; their ids."""
        with self._tx() as conn:
            return [self._insert(conn, r, "final") for r in rows]

    def record(self, row: PartRow) -> int:
        """Insert a final part (no signal to wait for), committed; its id."""
        return self.record_many([row])[0]

    def complete_many(self, done: Sequence[Completion]) -> None:
        """Make pending parts final with their signal's outcome, in one transaction; an id that is not
        pending is an :class:`InspectError` (and nothing is written)."""
        with self.batch() as b:
            for c in done:
                b.complete(c)

    def complete(self, id: int, t_signalled: Optional[float], ack: Optional[Dict[str, Any]],
                 archive_path: Optional[str] = None) -> None:
        """Make the pending part ``id`` final: when the signal was acknowledged (None: it was not) and each
        reject output's read-back value or error."""
        self.complete_many([Completion(id, t_signalled, ack, archive_path)])

    def archived(self, id: int, archive_path: str, image_sha256: Optional[str] = None) -> None:
        """Note where the archive put part ``id``'s image (pending or final)."""
        with self.batch() as b:
            b.archived(id, archive_path, image_sha256)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Several writes in one transaction (one fsync): the daemon's writer commits whatever one wake-up
        brought (new parts, decisions, completions, archive paths) at once. Nothing is written on an error."""
        with self._tx() as conn:
            yield Batch(self, conn)

    def recover(self) -> int:
        """Start-up, before the first write: every pending part (its signal never confirmed) becomes final NG
        ``crash-recovered``, its decision and reason kept in ``prior_decision`` / ``prior_reason``; how many."""
        with self._tx() as conn:
            return conn.execute(
                "UPDATE parts SET state = 'final', prior_decision = decision, prior_reason = reason, "
                "decision = 'NG', reason = ? WHERE state = 'pending'", (RECOVERED,)).rowcount

    # reads

    def rows(self, run_id: Optional[str] = None, state: Optional[str] = None) -> List[PartRow]:
        """The parts (of one run, in one state), in insertion order."""
        where, args = [], []
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {', '.join(COLUMNS)} FROM parts" + (" WHERE " + " AND ".join(where) if where else "")
        try:
            found = self._db().execute(sql + " ORDER BY id", args).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None
        out = []
        for r in found:
            values = dict(r)
            for c in JSON_COLUMNS:
                if values[c] is not None:
                    values[c] = json.loads(values[c])
            out.append(PartRow.model_validate(values))
        return out

    def totals(self, since: Optional[float] = None, until: Optional[float] = None, run_id: Optional[str] = None,
               ok_class: Optional[str] = None) -> StoreTotals:
        """Counts of the parts with ``since <= ts < until`` (either open), of ``run_id`` or all runs.

        Agreement with the truth: an OK part is right when OK, a defective one when NG, so UNCERTAIN and a
        fail-safe NG of an OK part count as wrong. It needs the OK class: ``ok_class``, or where None the
        ``top_class`` of the model's OK decisions (a verdict's top class for OK), when the database holds
        exactly one."""
        cond = ["1"] + [c for c, v in (("ts >= :since", since), ("ts < :until", until), ("run_id = :run", run_id))
                        if v is not None]
        where = " WHERE " + " AND ".join(cond)
        params = {"since": since, "until": until, "run": run_id, "ok": ok_class}
        try:
            conn = self._db()

            def q(sql: str) -> List[sqlite3.Row]:
                return conn.execute(sql.format(where=where), params).fetchall()

            if ok_class is None:
                found = conn.execute("SELECT DISTINCT top_class FROM parts WHERE decision = 'OK' AND reason IS NULL "
                                     "AND top_class IS NOT NULL LIMIT 2").fetchall()
                params["ok"] = ok_class = found[0][0] if len(found) == 1 else None
            parts, pending, first, last, known = q(
                "SELECT COUNT(*), COALESCE(SUM(state = 'pending'), 0), MIN(ts), MAX(ts), "
                "COALESCE(SUM(truth IS NOT NULL), 0) FROM parts{where}")[0]
            correct = None if ok_class is None else q(
                "SELECT COALESCE(SUM((truth = :ok AND decision = 'OK') OR (truth <> :ok AND decision = 'NG')), 0) "
                "FROM parts{where} AND truth IS NOT NULL")[0][0]
            return StoreTotals(
                parts=parts, pending=pending, ok_class=ok_class, truth_total=known, truth_correct=correct,
                by_decision=dict(q("SELECT decision, COUNT(*) FROM parts{where} GROUP BY 1")),
                by_reason=dict(q("SELECT reason, COUNT(*) FROM parts{where} AND reason IS NOT NULL GROUP BY 1")),
                by_class=dict(q("SELECT decision || '/' || COALESCE(top_class, '-'), COUNT(*) FROM parts{where} "
                                "GROUP BY 1")),
                accuracy=correct / known if correct is not None and known else None,
                first_ts=first, last_ts=last, first_utc=None if first is None else utc_text(first),
                last_utc=None if last is None else utc_text(last),
                model_versions=[v for (v,) in q("SELECT model_version FROM parts{where} AND model_version IS NOT "
                                                "NULL GROUP BY 1 ORDER BY MIN(ts)")])
        except sqlite3.Error as e:
            raise self._error(e) from None

    def close(self) -> None:
        """Close the connection (idempotent); the WAL is checkpointed into the database file."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batch:
    """The writes of one :meth:`ResultStore.batch` transaction."""

    def __init__(self, store: ResultStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    def pending(self, row: PartRow) -> int:
        """Insert a part still waiting for its decision or its signal; its id."""
        return self._store._insert(self._conn, row, "pending")

    def update(self, id: int, **fields: Any) -> None:
        """Set columns of the pending part ``id`` (its decision, scores, timings...): plain values, enums, or
        pydantic models and lists of them in the JSON columns."""
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        sets = {c: column_value(c, v) for c, v in fields.items()}
        cur = self._conn.execute(f"UPDATE parts SET {', '.join(f'{c} = :{c}' for c in sets)} "
                                 "WHERE id = :id AND state = 'pending'", {**sets, "id": id})
        if cur.rowcount != 1:
            raise InspectError(f"{self._store._name}: part {id} is not pending")

    def complete(self, c: Completion) -> None:
        """Make the pending part ``c.id`` final with its signal's outcome."""
        cur = self._conn.execute(
            "UPDATE parts SET state = 'final', t_signalled = ?, ack = ?, archive_path = COALESCE(?, archive_path) "
            "WHERE id = ? AND state = 'pending'",
            (c.t_signalled, None if c.ack is None else json.dumps(c.ack, separators=(",", ":")), c.archive_path,
             c.id))
        if cur.rowcount != 1:
            raise InspectError(f"{self._store._name}: part {c.id} is not pending")

    def event(self, row: EventRow) -> None:
        """Record a camera event (a reconnect, frames lost)."""
        self._conn.execute(EVENT_INSERT, row.values())

    def archived(self, id: int, archive_path: str, image_sha256: Optional[str] = None) -> None:
        cur = self._conn.execute("UPDATE parts SET archive_path = ?, image_sha256 = COALESCE(?, image_sha256) "
                                 "WHERE id = ?", (archive_path, image_sha256, id))
        if cur.rowcount != 1:
            raise InspectError(f"{self._store._name}: no part {id}")
