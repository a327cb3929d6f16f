"""The QA report's acceptance database: one line's results over four days of three shifts (Europe/Berlin), built
with known counts, checked against values worked out by hand (below, with the arithmetic):

* 12 shifts of 20 parts, one every 20 minutes from 10 minutes into the shift, so each night shift runs
  22:10 .. 04:30 across midnight;
* lot L1 (shifts 0-6) then lot L2 (shifts 7-11), whose NG rate shifts upward: not-OK parts per shift
  2 1 2 1 2 1 1 | 4 6 7 6 7 (40 of 240);
* model m1 (threshold 0.5) to shift 5, m2 (threshold 0.45) from shift 6 on;
* not-OK parts: NG scratch 18, stain 11, dent 6, UNCERTAIN 2, fail-safe deadline 2 and bad-frame 1;
* operator review of 32 parts; camera events in one night.

p-chart by shift: pbar = 40/240 = 1/6, every subgroup n = 20, so sigma = sqrt(1/6 * 5/6 / 20) = 1/12, UCL = 1/6 + 3/12
= 5/12, LCL = max(0, 1/6 - 3/12) = 0, and z = (ng/20 - 1/6) * 12 = 0.6 ng - 2:
L1: -0.8 -1.4 -0.8 -1.4 -0.8 -1.4 -1.4 (seven below the centre: not eight; 1.4 beyond 1 sigma only 3 of any 5)
L2: +0.4 +1.6 +2.2 +1.6 +2.2. Shift 11 completes rule 2 (shifts 9 and 11 beyond 2 sigma, 2 of 3) and rule 3
(shifts 8-11 beyond 1 sigma, 4 of 5); no point is beyond 3 sigma (rule 1).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import sqlalchemy as sa
from dateutil import tz

from lineguard.inspect.qa import ShiftConfig, qa_figures
from lineguard.inspect.schema import EventRow, PartRow
from lineguard.inspect.store import ResultStore
from lineguard.inspect.sync import sync_results
from lineguard.inspect.tables import PLANT_TABLES

BERLIN = ShiftConfig(timezone="Europe/Berlin")
ZONE = tz.gettz("Europe/Berlin")
DAYS = ("2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03")
NOT_OK = [2, 1, 2, 1, 2, 1, 1, 4, 6, 7, 6, 7]
L1_NG = ["stain", "scratch", "stain", "dent", "stain", "dent", "dent"]  # + UNCERTAIN, deadline, bad-frame
L2_NG = ["scratch"] * 17 + ["stain"] * 8 + ["dent"] * 3  # + UNCERTAIN, deadline


def _local(day: str, hhmm: str) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=ZONE).timestamp()


def _outcomes() -> List[List[str]]:
    """Per shift, the not-OK outcomes in order ("NG:class", "UNCERTAIN:class", "NG:-reason")."""
    l1 = [f"NG:{c}" for c in L1_NG] + ["UNCERTAIN:stain", "NG:-deadline", "NG:-bad-frame"]
    l2 = [f"NG:{c}" for c in L2_NG] + ["UNCERTAIN:stain", "NG:-deadline"]
    order = [0, 9, 1, 7, 2, 8, 3, 4, 5, 6]  # L1: the bad frame in shift 0, UNCERTAIN in shift 2, deadline in 3
    l1 = [l1[i] for i in order]
    l2 = [*l2[:4], "UNCERTAIN:stain", *l2[4:28], "NG:-deadline"]  # UNCERTAIN in shift 8, deadline in 11
    out, a, b = [], 0, 0
    for s, k in enumerate(NOT_OK):
        if s < 7:
            out.append(l1[a : a + k])
            a += k
        else:
            out.append(l2[b : b + k])
            b += k
    return out


def _rows() -> Tuple[List[PartRow], Dict[str, float]]:
    rows: List[PartRow] = []
    seq = 0
    scratch_ng = ok_parts = 0
    starts = {}
    for s, outs in enumerate(_outcomes()):
        day, hhmm = DAYS[s // 3], ("06:00", "14:00", "22:00")[s % 3]
        t_shift = _local(day, hhmm)
        starts[f"{day} {('early', 'late', 'night')[s % 3]}"] = t_shift
        where = {20 * j // len(outs): o for j, o in enumerate(outs)}  # spread over the shift
        for i in range(20):
            ts = t_shift + 600 + 1200 * i
            decision, _, cls = where.get(i, "OK:ok").partition(":")
            reason = cls[1:] if cls.startswith("-") else None
            review = None
            if decision == "NG" and cls == "scratch":
                scratch_ng += 1
                review = "scratch" if scratch_ng <= 9 else "ok" if scratch_ng == 10 else None  # 1 false reject
            elif decision == "OK" and i in (1, 2) and (s < 8 or i == 1):  # an audit of 20 passed parts
                ok_parts += 1
                review = "scratch" if s in (10, 11) else "ok"  # 2 escapes, in the shifted lot
            elif decision == "UNCERTAIN" and s >= 7:
                review = "stain"
            elif reason == "deadline" and s < 7:
                review = "ok"  # the fail-safe reject of a good part: a false reject
            model = None if reason == "bad-frame" else "m1" if s < 6 else "m2"
            rows.append(PartRow(
                line="line-3", station="press", camera="cam1", source_seq=seq, run_id="run-1",
                lot="L1" if s < 7 else "L2", serial=f"S{seq:05d}", ts=ts, t_capture=ts,
                t_decided=ts + 0.02 + 0.001 * (seq % 10), model_version=model,
                policy=None if model is None else {"threshold": 0.5 if model == "m1" else 0.45},
                decision=decision, top_class=None if reason else cls, reason=reason, review=review))
            seq += 1
    assert ok_parts == 20
    return rows, starts


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("acceptance") / "results.db"
    rows, _ = _rows()
    with ResultStore(path) as store:
        store.record_many(rows)
        with store.batch() as b:  # the camera dropped twice in the night of 2 December
            for hhmm, kind, n in (("02:00", "reconnect", 1), ("02:00", "frames-lost", 30), ("03:10", "reconnect", 1),
                                  ("03:10", "frames-lost", 7)):
                b.event(EventRow(run_id="run-1", line="line-3", station="press", camera="cam1",
                                 ts=_local("2026-12-03", hhmm), kind=kind, count=n))
    return path


T0, T1 = _local("2026-11-30", "06:00"), _local("2026-12-04", "06:00")


def test_every_figure_by_shift_against_the_hand_computed_values(db: Path) -> None:
    f = qa_figures(sa.create_engine(f"sqlite:///{db}"), T0, T1, by="shift", shifts=BERLIN)
    assert f.parts == 240 and f.by_decision == {"OK": 200, "NG": 38, "UNCERTAIN": 2}
    assert f.fpy == pytest.approx(200 / 240)
    assert f.fpy_interval == pytest.approx((0.7810, 0.8752), abs=1e-4)  # Wilson 95% of 200/240
    _, starts = _rows()
    assert [g.key for g in f.subgroups] == list(starts)  # "2026-11-30 early" .. "2026-12-03 night"
    assert [g.ng for g in f.subgroups] == NOT_OK and all(g.parts == 20 for g in f.subgroups)
    # the night shift crosses midnight: its parts after 00:00 belong to the night that began the day before
    night = f.subgroups[2]
    assert night.key == "2026-11-30 night" and night.first_ts == _local("2026-11-30", "22:00")
    assert f.pbar == pytest.approx(1 / 6)
    assert f.ucl == pytest.approx([5 / 12] * 12) and f.lcl == [0.0] * 12
    assert [(v["rule"], v["key"], v["points"]) for v in f.violations] == [
        (2, "2026-12-03 night", [9, 11]),  # shifts 9 and 11: z = 2.2
        (3, "2026-12-03 night", [8, 9, 10, 11]),  # z = 1.6, 2.2, 1.6, 2.2
    ]
    assert [(r["class"], r["parts"]) for r in f.pareto] == [("scratch", 18), ("stain", 11), ("dent", 6)]
    assert [r["cumulative"] for r in f.pareto] == pytest.approx([18 / 35, 29 / 35, 1.0])
    assert f.fail_safe == {"bad-frame": 1, "deadline": 2}
    assert [(m["model_version"], m["parts"], m["first_ts"]) for m in f.models] == [
        ("m1", 119, _local("2026-11-30", "06:10")),  # 6 shifts less the bad frame (no model decision)
        ("m2", 120, _local("2026-12-02", "06:10")),  # the switch: the first part of shift 6
    ]
    assert '"threshold":0.45' in f.models[1]["policy"]
    r = f.review
    assert r is not None and r.ok_class == "ok" and r.reviewed == 32
    assert r.confusion == {"scratch": {"scratch": 9, "OK": 2}, "ok": {"scratch": 1, "OK": 18, "NG:deadline": 1},
                           "stain": {"UNCERTAIN": 1}}
    # escapes: defective parts passed / defective parts reviewed = 2 / (9 + 2 + 1); Wilson 95%: centre
    # (p + z^2/2n) / (1 + z^2/n) = 0.2475, half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.2005
    assert (r.escape.k, r.escape.n) == (2, 12) and r.escape.rate == pytest.approx(1 / 6)
    assert r.escape.interval == pytest.approx((0.0470, 0.4480), abs=1e-4)
    # false rejects: good parts stopped / good parts reviewed = (1 NG + 1 deadline) / (1 + 18 + 1)
    assert (r.false_reject.k, r.false_reject.n) == (2, 20) and r.false_reject.rate == pytest.approx(0.1)
    assert r.false_reject.interval == pytest.approx((0.0279, 0.3010), abs=1e-4)
    assert [(c.camera, c.counts) for c in f.cameras] == [("line-3/press/cam1", {"reconnect": 2, "frames-lost": 37})]


def test_by_lot_the_shifted_lot_is_beyond_its_limit(db: Path) -> None:
    f = qa_figures(sa.create_engine(f"sqlite:///{db}"), T0, T1, by="lot")
    assert [(g.key, g.parts, g.ng) for g in f.subgroups] == [("L1", 140, 10), ("L2", 100, 30)]
    # sigma_i = sqrt(1/6 * 5/6 / n_i): L1 0.031497 -> limits 0.0722 .. 0.2612; L2 0.037268 -> 0.0549 .. 0.2785
    assert f.ucl == pytest.approx([1 / 6 + 3 * math.sqrt(5 / 36 / 140), 1 / 6 + 3 * math.sqrt(5 / 36 / 100)])
    assert f.ucl == pytest.approx([0.2612, 0.2785], abs=1e-4) and f.lcl == pytest.approx([0.0722, 0.0549], abs=1e-4)
    # L1 10/140 = 0.0714: z = -3.02 (below its LCL); L2 30/100 = 0.30: z = +3.58 (above its UCL)
    assert [(v["rule"], v["key"]) for v in f.violations] == [(1, "L1"), (1, "L2")]


def test_the_plant_database_gives_the_same_figures(db: Path, pg_engine: sa.Engine) -> None:
    sync_results(db, pg_engine.url, batch=64)
    line = sa.create_engine(f"sqlite:///{db}")
    for by in ("shift", "lot"):
        assert qa_figures(pg_engine, T0, T1, by=by, shifts=BERLIN, tables=PLANT_TABLES) == \
            qa_figures(line, T0, T1, by=by, shifts=BERLIN)
