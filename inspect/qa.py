"""The QA report's figures from a results database (a daemon's SQLite file or the plant's PostgreSQL), aggregated
in SQL: first-pass yield and NG rate per subgroup (shift, lot, line or camera), the p-chart and its rule
breaks, the Pareto of defect classes, fail-safe rejects by reason, reject signals not acknowledged,
capture->decision latency percentiles, the model versions in force, camera reconnects and lost frames and, where
operators reviewed parts, the confusion against their review. Torch-free, Python 3.8.

    engine = sqlalchemy.create_engine("sqlite:///results.db")      # or postgresql+psycopg://...
    figures = qa_figures(engine, t0, t1, by="shift", shifts=ShiftConfig())

Only final rows count (a pending row is a part in flight). A part passes first time when its decision is OK;
NG and UNCERTAIN both stop it. Every query returns a bounded number of rows (groups, minutes, milliseconds),
never the parts themselves, so a million parts cost the database a few scans and Python next to nothing.

Shifts: start times in the plant's time zone (``ShiftConfig``); a shift runs to the next one's start, so a
night shift crosses midnight, and each day's shifts follow the zone's clock changes. Parts are counted per
minute in SQL and the minutes assigned to shifts here (shift starts are whole minutes).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import re
from typing import Any, Dict, List, Literal, Optional, Tuple

import sqlalchemy as sa
from dateutil import tz
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from lineguard.config import StrictModel
from lineguard.inspect.base import InspectError

from .schema import EVENT_KINDS
from .spc import p_chart, wilson
from .tables import LINE_TABLES, Tables

__all__ = ["GROUPINGS", "CameraEvents", "QaFigures", "Shift", "ShiftConfig", "Subgroup", "parse_time", "qa_figures"]

GROUPINGS = ("shift", "lot", "line", "camera")
PERCENTILES = (50.0, 90.0, 99.0)


class Shift(StrictModel):
    name: str = Field(min_length=1)
    start: str = Field(description="local start time, HH:MM")

    @field_validator("start")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", v)
        if not m:
            raise ValueError(f"shift start must be HH:MM (00:00..23:59), got {v!r}")
        return v

    @property
    def minutes(self) -> int:
        return int(self.start[:2]) * 60 + int(self.start[3:])


class ShiftConfig(StrictModel):
    """The plant's shifts: names and local start times, in ``timezone`` (an IANA name)."""

    timezone: str = "UTC"
    shifts: List[Shift] = Field(default_factory=lambda: [Shift(name="early", start="06:00"),
                                                         Shift(name="late", start="14:00"),
                                                         Shift(name="night", start="22:00")], min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if tz.gettz(v) is None:
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Berlin)")
        return v

    @field_validator("shifts")
    @classmethod
    def _distinct(cls, v: List[Shift]) -> List[Shift]:
        starts = [s.minutes for s in v]
        if len(set(starts)) != len(starts):
            raise ValueError("two shifts start at the same time")
        return sorted(v, key=lambda s: s.minutes)

    def windows(self, t0: float, t1: float) -> List[Tuple[str, float, float]]:
        """The shifts that overlap ``[t0, t1)`` (epoch seconds): (label "YYYY-MM-DD name", start, end); the label's
        date is the local day the shift starts."""
        zone = tz.gettz(self.timezone)
        day = dt.datetime.fromtimestamp(t0, zone).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(t1, zone).date()
        starts: List[Tuple[str, float]] = []
        while day <= last:
            for s in self.shifts:
                local = dt.datetime.combine(day, dt.time(s.minutes // 60, s.minutes % 60), tzinfo=zone)
                starts.append((f"{day.isoformat()} {s.name}", local.timestamp()))
            day += dt.timedelta(days=1)
        out = []
        for (label, a), (_, b) in zip(starts, starts[1:]):
            if b > t0 and a < t1:
                out.append((label, a, b))
        return out


def parse_time(text: str, zone: str, what: str) -> float:
    """ISO 8601 date or date-time as epoch seconds; without an offset it is local time in ``zone``."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InspectError(f"{what}: not an ISO 8601 time: {text!r} (e.g. 2026-12-07T06:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz.gettz(zone))
    return when.timestamp()


class Subgroup(BaseModel):
    key: str
    parts: int
    ng: int  # not passed first time: NG or UNCERTAIN
    fpy: Optional[float]
    first_ts: Optional[float] = None


class Rate(BaseModel):
    """``k`` of ``n``, the rate and its 95% Wilson interval (None without parts)."""

    k: int
    n: int
    rate: Optional[float]
    interval: Tuple[float, float]

    @classmethod
    def of(cls, k: int, n: int) -> Rate:
        return cls(k=k, n=n, rate=k / n if n else None, interval=wilson(k, n))


class Review(BaseModel):
    """The decisions against the class operators saw: ``confusion[review class][decided]`` (decided: OK,
    UNCERTAIN, or the NG class; fail-safe rejects as ``NG:<reason>``), escapes (defective parts passed, of the
    defective parts reviewed) and false rejects (good parts stopped, of the good parts reviewed)."""

    ok_class: str
    reviewed: int
    confusion: Dict[str, Dict[str, int]]
    escape: Rate
    false_reject: Rate


class CameraEvents(BaseModel):
    """One camera's events in the period: kind (reconnect, frames-lost) -> count, and the last one's time."""

    camera: str  # line/station/camera, as far as they are set
    counts: Dict[str, int]
    last_ts: float


class QaFigures(BaseModel):
    """Every figure of one report (``--json`` prints this)."""

    t0: float
    t1: float
    timezone: str  # the plant's (the shifts'), for showing times
    by: str
    parts: int
    by_decision: Dict[str, int]
    fpy: Optional[float]
    fpy_interval: Tuple[float, float]
    subgroups: List[Subgroup]
    pbar: float
    ucl: List[Optional[float]]
    lcl: List[Optional[float]]
    violations: List[Dict[str, Any]]  # rule, text, subgroup index, its key, the points that make it
    pareto: List[Dict[str, Any]]  # class, parts, cumulative share, in falling order (a part with several defect
    # classes counts for each: the shares are of defects found)
    fail_safe: Dict[str, int]  # reason -> NG parts the daemon rejected without a model decision
    signal_failures: int  # parts whose reject signal some output did not acknowledge (an error in ``ack``)
    latency_ms: Dict[str, Optional[float]]  # capture->decision percentiles ("p50", ...) and max
    models: List[Dict[str, Any]]  # model version, policy, first and last part time, parts: in order of use
    cameras: List[CameraEvents]  # reconnects and lost frames per camera, by name
    review: Optional[Review] = None  # against the operators' review, where parts were reviewed


class _minute(FunctionElement):
    """floor(x / 60) as an integer (CAST truncates in SQLite, rounds in PostgreSQL: positive x only)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(_minute)
def _minute_default(element: _minute, compiler: Any, **kw: Any) -> str:
    return f"CAST(FLOOR({compiler.process(element.clauses, **kw)} / 60) AS BIGINT)"


@compiles(_minute, "sqlite")
def _minute_sqlite(element: _minute, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} / 60 AS INTEGER)"


def _percentiles(hist: List[Tuple[int, int]]) -> Dict[str, Optional[float]]:
    """Percentiles (nearest rank) from (millisecond bucket, count) pairs, in ms."""
    total = sum(c for _, c in hist)
    out: Dict[str, Optional[float]] = {f"p{q:g}": None for q in PERCENTILES}
    out["max"] = float(hist[-1][0]) if hist else None
    if not total:
        return out
    cum, k = 0, 0
    ranks = [max(1, -(-int(q * total) // 100)) for q in PERCENTILES]  # ceil(q/100 * N)
    for ms, c in hist:
        cum += c
        while k < len(ranks) and cum >= ranks[k]:
            out[f"p{PERCENTILES[k]:g}"] = float(ms)
            k += 1
    return out


def qa_figures(engine: sa.Engine, t0: float, t1: float, by: Literal["shift", "lot", "line", "camera"] = "shift",
               shifts: Optional[ShiftConfig] = None, tables: Tables = LINE_TABLES) -> QaFigures:
    """The figures of the parts and camera events with ``t0 <= ts < t1`` in ``tables`` (a line's or the plant's;
    see the module docstring)."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    shifts = shifts or ShiftConfig()
    p = tables.parts.c
    where = sa.and_(p.state == "final", p.ts >= t0, p.ts < t1)
    not_ok = sa.func.sum(sa.case((p.decision != "OK", 1), else_=0))
    with engine.connect() as conn:
        by_decision = {d: int(n) for d, n in conn.execute(
            sa.select(p.decision, sa.func.count()).where(where).group_by(p.decision))}
        if by == "shift":
            minute = _minute(p.ts)
            rows = conn.execute(sa.select(minute, sa.func.count(), not_ok).where(where).group_by(minute)).all()
            subgroups = _shift_subgroups(rows, shifts.windows(t0, t1))
        else:
            col = sa.func.nullif(p[by], "")  # the plant database stores an unset line or station as ''
            rows = conn.execute(sa.select(col, sa.func.count(), not_ok, sa.func.min(p.ts)).where(where)
                                .group_by(col).order_by(sa.func.min(p.ts))).all()
            subgroups = [Subgroup(key="(none)" if k is None else str(k), parts=int(n), ng=int(d),
                                  fpy=1 - int(d) / int(n), first_ts=float(f)) for k, n, d, f in rows]
        pareto_rows = _defect_counts(conn.execute(
            sa.select(p.top_class, p.defects, sa.func.count()).where(where, p.decision == "NG", p.reason.is_(None))
            .group_by(p.top_class, p.defects)).all())
        fail_safe = {str(r): int(n) for r, n in conn.execute(
            sa.select(p.reason, sa.func.count()).where(where, p.reason.is_not(None)).group_by(p.reason)
            .order_by(p.reason))}
        signal_failures = int(conn.execute(sa.select(sa.func.count()).where(where, p.ack.like('%"error":%'))).scalar())
        ms = sa.cast(sa.func.round((p.t_decided - p.t_capture) * 1000), sa.Integer)
        hist = [(int(m), int(n)) for m, n in conn.execute(
            sa.select(ms, sa.func.count()).where(where, p.t_decided.is_not(None), p.t_capture.is_not(None))
            .group_by(ms).order_by(ms))]
        review = _review(conn, p, where)
        models = [{"model_version": v, "policy": pol, "first_ts": float(a), "last_ts": float(b), "parts": int(n)}
                  for v, pol, a, b, n in conn.execute(
                      sa.select(p.model_version, p.policy, sa.func.min(p.ts), sa.func.max(p.ts), sa.func.count())
                      .where(where, p.model_version.is_not(None)).group_by(p.model_version, p.policy)
                      .order_by(sa.func.min(p.ts)))]
        cameras = _camera_events(conn, tables.events.c, t0, t1)
    parts = sum(by_decision.values())
    ok = by_decision.get("OK", 0)
    chart = p_chart([g.ng for g in subgroups], [g.parts for g in subgroups])
    total_ng = sum(int(n) for _, n in pareto_rows)
    cum, pareto = 0, []
    for cls, n in pareto_rows:
        cum += int(n)
        pareto.append({"class": cls, "parts": int(n), "cumulative": cum / total_ng})
    return QaFigures(
        t0=t0, t1=t1, timezone=shifts.timezone, by=by, parts=parts, by_decision=by_decision,
        fpy=ok / parts if parts else None,
        fpy_interval=wilson(ok, parts), subgroups=subgroups, pbar=chart.pbar, ucl=chart.ucl, lcl=chart.lcl,
        violations=[{"rule": v.rule, "text": v.text, "index": v.index, "key": subgroups[v.index].key,
                     "points": list(v.points)} for v in chart.violations],
        pareto=pareto, fail_safe=fail_safe, signal_failures=signal_failures, latency_ms=_percentiles(hist),
        models=models, cameras=cameras, review=review)


def _camera_events(conn: sa.Connection, e: Any, t0: float, t1: float) -> List[CameraEvents]:
    out: Dict[str, CameraEvents] = {}
    for line, station, camera, kind, n, last in conn.execute(
            sa.select(e.line, e.station, e.camera, e.kind, sa.func.sum(e.count), sa.func.max(e.ts))
            .where(e.ts >= t0, e.ts < t1).group_by(e.line, e.station, e.camera, e.kind)):
        name = "/".join(x for x in (line, station, camera) if x)
        found = out.setdefault(name, CameraEvents(camera=name, counts=dict.fromkeys(EVENT_KINDS, 0), last_ts=last))
        found.counts[str(kind)] = int(n)
        found.last_ts = max(found.last_ts, float(last))
    return [out[k] for k in sorted(out)]


def _defect_counts(rows: List[Any]) -> List[Tuple[str, int]]:
    """NG parts per defect class, most first, from (top class, defects JSON, parts) groups: a part counts once
    for each class it holds (a multi-label model's ``defects``), else for its top class. The groups are the
    distinct class combinations, few whatever the number of parts."""
    counts: Dict[str, int] = {}
    for top, defects, n in rows:
        for cls in (json.loads(defects) if defects else [top]):
            counts[str(cls)] = counts.get(str(cls), 0) + int(n)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _review(conn: sa.Connection, p: Any, where: Any) -> Optional[Review]:
    """The review figures, or None when no part of the period was reviewed. The OK class is the top class of the
    model's OK decisions (one class)."""
    rows = conn.execute(sa.select(p.review, p.decision, p.top_class, p.reason, sa.func.count())
                        .where(where, p.review.is_not(None))
                        .group_by(p.review, p.decision, p.top_class, p.reason)).all()
    if not rows:
        return None
    found = conn.execute(sa.select(p.top_class).where(p.decision == "OK", p.reason.is_(None),
                                                      p.top_class.is_not(None)).distinct().limit(2)).scalars().all()
    if len(found) != 1:
        raise InspectError(f"reviewed parts, but the OK class is not known from the model's decisions ({found})")
    ok = str(found[0])
    confusion: Dict[str, Dict[str, int]] = {}
    esc = [0, 0]
    fr = [0, 0]
    for label, decision, cls, reason, n in rows:
        decided = decision if decision != "NG" else f"NG:{reason}" if reason else str(cls)
        row = confusion.setdefault(str(label), {})
        row[decided] = row.get(decided, 0) + int(n)
        if label == ok:
            fr[1] += int(n)
            fr[0] += int(n) if decision != "OK" else 0
        else:
            esc[1] += int(n)
            esc[0] += int(n) if decision == "OK" else 0
    return Review(ok_class=ok, reviewed=esc[1] + fr[1], confusion=confusion, escape=Rate.of(*esc),
                  false_reject=Rate.of(*fr))


def _shift_subgroups(minutes: List[Any], windows: List[Tuple[str, float, float]]) -> List[Subgroup]:
    """Per-minute (minute, parts, not OK) counts summed into the shift windows, from the first shift with parts to
    the last."""
    starts = [a for _, a, _ in windows]
    parts, ng = [0] * len(windows), [0] * len(windows)
    for m, n, d in minutes:
        i = bisect.bisect_right(starts, int(m) * 60) - 1
        if 0 <= i < len(windows):
            parts[i] += int(n)
            ng[i] += int(d)
    groups = [Subgroup(key=label, parts=n, ng=d, fpy=1 - d / n if n else None, first_ts=a)
              for (label, a, _), n, d in zip(windows, parts, ng)]
    used = [i for i, g in enumerate(groups) if g.parts]
    return groups[used[0] : used[-1] + 1] if used else []  # empty shifts inside the period stay: a stopped line
