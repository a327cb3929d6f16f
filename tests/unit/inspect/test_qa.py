"""The QA figures from a results database with known counts, against values worked out by hand: shifts in
Europe/Berlin over the night the clocks go forward, subgroups by shift and by lot, FPY, p-chart limits,
Pareto order, fail-safe reasons, latency percentiles and model versions."""

from __future__ import annotations

import datetime as dt
import math
from typing import List

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from lineguard.inspect.qa import ShiftConfig, qa_figures
from lineguard.inspect.schema import PartRow
from lineguard.inspect.store import ResultStore
from lineguard.inspect.tables import METADATA, PARTS


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def _rows() -> List[PartRow]:
    """40 parts, 10 per shift; (minute offsets from the shift's first part, outcome)."""
    plan = [  # first part (UTC), lot, model, threshold, outcomes of the 10 parts
        ("2026-03-28T06:00:00", "A", "m1", 0.5, ["NG:scratch"] + ["OK"] * 9),
        ("2026-03-28T14:00:00", "A", "m1", 0.5, ["NG:scratch", "NG:-deadline"] + ["OK"] * 8),
        ("2026-03-28T23:00:00", "B", "m2", 0.4, ["NG:stain", "NG:stain", "NG:stain", "NG:dent", "UNCERTAIN:stain"]),
        ("2026-03-29T03:55:00", "B", "m2", 0.4, ["OK"] * 5),  # 05:55 CEST: still the night shift
        ("2026-03-29T04:00:00", "C", "m2", 0.4, ["OK"] * 10),  # 06:00 CEST: the early shift
    ]
    reviews = {(0, 0): "scratch", (0, 1): "scratch", (0, 2): "ok", (1, 0): "ok", (1, 1): "ok", (2, 4): "stain"}
    rows, seq = [], 0
    for g, (first, lot, model, thr, outcomes) in enumerate(plan):
        for i, out in enumerate(outcomes):
            decision, _, cls = out.partition(":")
            reason = cls[1:] if cls.startswith("-") else None
            ts = _ts(first) + 60 * i
            latency = 0.01 * (seq % 10 + 1)  # 10..100 ms, each 4 times
            rows.append(PartRow(camera="cam1", source_seq=seq, run_id="r1", lot=lot, ts=ts, t_capture=ts,
                                t_decided=ts + latency, model_version=model, policy={"threshold": thr},
                                decision=decision, top_class=None if reason else (cls or "ok"), reason=reason,
                                review=reviews.get((g, i)),
                                ack={"plc": {"error": "timed out", "attempts": 3}} if (g, i) == (1, 0) else None))
            seq += 1
    return rows


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    path = tmp_path_factory.mktemp("qa") / "results.db"
    store = ResultStore(path)
    store.record_many(_rows())
    store.pending(PartRow(camera="cam1", source_seq=999, run_id="r1", ts=_ts("2026-03-28T07:00:00"),
                          decision="NG", top_class="dent"))  # in flight: not counted
    store.close()
    return sa.create_engine(f"sqlite:///{path}")


T0, T1 = _ts("2026-03-28T05:00:00"), _ts("2026-03-29T12:00:00")  # 06:00 CET .. 14:00 CEST
BERLIN = ShiftConfig(timezone="Europe/Berlin")


def test_shift_windows_cross_midnight_and_the_clock_change() -> None:
    w = BERLIN.windows(T0, T1)
    assert [(k, a, b) for k, a, b in w] == [
        ("2026-03-28 early", T0, _ts("2026-03-28T13:00:00")),
        ("2026-03-28 late", _ts("2026-03-28T13:00:00"), _ts("2026-03-28T21:00:00")),
        ("2026-03-28 night", _ts("2026-03-28T21:00:00"), _ts("2026-03-29T04:00:00")),  # 7 h: clocks go forward
        ("2026-03-29 early", _ts("2026-03-29T04:00:00"), T1),
    ]


def test_figures_by_shift(engine: sa.Engine) -> None:
    f = qa_figures(engine, T0, T1, by="shift", shifts=BERLIN)
    assert f.parts == 40 and f.by_decision == {"OK": 32, "NG": 7, "UNCERTAIN": 1}
    assert f.fpy == pytest.approx(0.8)
    assert [(g.key, g.parts, g.ng) for g in f.subgroups] == [
        ("2026-03-28 early", 10, 1), ("2026-03-28 late", 10, 2), ("2026-03-28 night", 10, 5),
        ("2026-03-29 early", 10, 0)]
    pbar = 8 / 40
    sigma = math.sqrt(pbar * (1 - pbar) / 10)
    assert f.pbar == pytest.approx(0.2)
    assert f.ucl == pytest.approx([pbar + 3 * sigma] * 4) and f.ucl[0] == pytest.approx(0.579473, abs=1e-6)
    assert f.lcl == [0.0] * 4  # 0.2 - 0.379 < 0
    assert f.violations == []  # the night's 0.5 is z = 2.37: inside
    assert f.pareto == [{"class": "stain", "parts": 3, "cumulative": pytest.approx(0.5)},
                        {"class": "scratch", "parts": 2, "cumulative": pytest.approx(5 / 6)},
                        {"class": "dent", "parts": 1, "cumulative": pytest.approx(1.0)}]
    assert f.fail_safe == {"deadline": 1} and f.signal_failures == 1
    assert f.latency_ms == {"p50": 50.0, "p90": 90.0, "p99": 100.0, "max": 100.0}
    assert [(m["model_version"], m["parts"], m["first_ts"], m["last_ts"]) for m in f.models] == [
        ("m1", 20, _ts("2026-03-28T06:00:00"), _ts("2026-03-28T14:09:00")),
        ("m2", 20, _ts("2026-03-28T23:00:00"), _ts("2026-03-29T04:09:00"))]
    assert '"threshold":0.4' in f.models[1]["policy"]
    r = f.review
    assert r is not None and r.ok_class == "ok" and r.reviewed == 6
    assert r.confusion == {"scratch": {"scratch": 1, "OK": 1}, "ok": {"OK": 1, "scratch": 1, "NG:deadline": 1},
                           "stain": {"UNCERTAIN": 1}}
    # escapes: 1 of the 3 defective parts reviewed was passed; false rejects: 2 of the 3 good ones were stopped
    assert (r.escape.k, r.escape.n, r.false_reject.k, r.false_reject.n) == (1, 3, 2, 3)
    assert r.escape.interval == pytest.approx((0.0615, 0.7923), abs=1e-4)  # Wilson 95% of 1/3
    assert r.false_reject.interval == pytest.approx((0.2077, 0.9385), abs=1e-4)


def test_figures_by_lot_with_limits_per_subgroup_size(engine: sa.Engine) -> None:
    f = qa_figures(engine, T0, T1, by="lot")
    assert [(g.key, g.parts, g.ng) for g in f.subgroups] == [("A", 20, 3), ("B", 10, 5), ("C", 10, 0)]
    assert f.ucl[0] == pytest.approx(0.2 + 3 * math.sqrt(0.16 / 20))  # the limits follow n
    # the night alone: lots B (5 of 10) and C (0 of 10)
    g = qa_figures(engine, _ts("2026-03-28T21:00:00"), T1, by="lot")
    assert [(x.key, x.parts, x.ng) for x in g.subgroups] == [("B", 10, 5), ("C", 10, 0)]
    assert g.pbar == pytest.approx(0.25)
    assert [(v["rule"], v["key"]) for v in g.violations] == []  # z = +-1.83 with pbar 0.25
    assert g.ucl[0] == pytest.approx(0.25 + 3 * math.sqrt(0.25 * 0.75 / 10))


def test_an_empty_period_has_no_parts_and_no_points(engine: sa.Engine) -> None:
    f = qa_figures(engine, _ts("2027-01-01T00:00:00"), _ts("2027-01-01T08:00:00"), shifts=BERLIN)
    assert f.parts == 0 and f.fpy is None and f.pareto == [] and f.models == [] and f.review is None
    assert f.subgroups == [] and f.ucl == [] and f.violations == []
    assert f.latency_ms["p50"] is None


def test_bad_shift_config_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="HH:MM"):
        ShiftConfig(shifts=[{"name": "x", "start": "25:00"}])
    with pytest.raises(ValidationError, match="time zone"):
        ShiftConfig(timezone="Mars/Olympus")


def test_postgresql_gives_the_same_figures(engine: sa.Engine, pg_engine: sa.Engine) -> None:
    METADATA.create_all(pg_engine)
    with engine.connect() as src, pg_engine.begin() as dst:
        dst.execute(PARTS.insert(), [dict(r._mapping) for r in src.execute(sa.select(PARTS))])
    for by in ("shift", "lot"):
        assert qa_figures(pg_engine, T0, T1, by=by, shifts=BERLIN) == qa_figures(engine, T0, T1, by=by, shifts=BERLIN)


def test_the_pareto_counts_every_defect_a_part_holds(tmp_path) -> None:
    """A multi-label model's parts name every defect class (``defects``): each counts once per class."""
    path = tmp_path / "r.db"
    with ResultStore(path) as store:
        store.record_many([
            PartRow(camera="c", source_seq=i, run_id="r", ts=T0 + i, decision="NG", top_class=top, defects=defects)
            for i, (top, defects) in enumerate([("scratch", ["scratch", "dent"]), ("stain", None),
                                                 ("scratch", ["scratch"]), ("dent", ["dent", "scratch"])])])
    f = qa_figures(sa.create_engine(f"sqlite:///{path}"), T0, T0 + 60, by="camera")
    assert f.by_decision == {"NG": 4}  # four parts, six defects
    assert [(r["class"], r["parts"]) for r in f.pareto] == [("scratch", 3), ("dent", 2), ("stain", 1)]
    assert [r["cumulative"] for r in f.pareto] == pytest.approx([3 / 6, 5 / 6, 1.0])
