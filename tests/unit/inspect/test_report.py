"""`lineguard report`: a self-contained HTML file and a PDF whose pages are rendered (pdftoppm) and not blank;
an empty period says so; bad input is one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lineguard.inspect.schema import MIGRATIONS, PartRow
from lineguard.inspect.store import ResultStore

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
PIXELS = np.full((32, 32), 128, np.uint8)
_REVIEW = {25: "scratch", 0: "ok"}  # operators saw a scratch on parts 25, 75, ...; every 10th part was fine


def _ng(i: int) -> bool:
    return i % 9 == 0 or (i >= 500 and i % 3 == 0)  # the last lot's NG rate shifts upward


def _db(tmp_path: Path) -> Path:
    db, archive = tmp_path / "results.db", tmp_path / "archive"
    rows = []
    for i in range(600):
        ng = _ng(i)
        cls = ("scratch", "stain", "dent")[(i // 3) % 3] if ng else "ok"
        path = None
        if ng and i < 60:
            path = f"d/NG/p{i}.png"
            for name in (path, path.replace(".png", "-heatmap.png")):
                (archive / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(PIXELS).save(archive / name)
        rows.append(PartRow(camera="cam1", source_seq=i, run_id="r1", line="L1", lot=f"lot{i // 100}",
                            serial=f"S{i:05d}", ts=T0 + 60 * i, t_capture=T0 + 60 * i, t_decided=T0 + 60 * i + 0.03,
                            decision="NG" if ng else "OK", top_class=cls, model_version="m1" if i < 300 else "m2",
                            archive_path=path, review=_REVIEW.get(i % 50 if i % 50 == 25 else i % 10)))
    with ResultStore(db) as s:
        s.record_many(rows)
    return db


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lineguard", "report", *args], capture_output=True, text=True,
                          timeout=300)


def test_html_and_pdf_with_every_section(tmp_path: Path) -> None:
    db = _db(tmp_path)
    html, pdf = tmp_path / "r" / "report.html", tmp_path / "r" / "report.pdf"
    run = _report("--db", str(db), "--from", "2026-05-28T00:00Z", "--to", "2026-06-01T00:00Z", "--by", "lot",
                  "--archive", str(tmp_path / "archive"), "--out", str(html), "--pdf", str(pdf), "--json")
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["parts"] == 600 and [g["key"] for g in figures["subgroups"]] == [f"lot{k}" for k in range(6)]
    assert [v["key"] for v in figures["violations"] if v["rule"] == 1] == ["lot5"]  # 33/100 against p-bar 89/600
    assert [(r["class"], r["parts"]) for r in figures["pareto"]] == [("scratch", 67), ("dent", 11), ("stain", 11)]
    review = figures["review"]
    assert review["reviewed"] == 72 and (review["escape"]["n"], review["false_reject"]["n"]) == (12, 60)
    assert review["escape"]["k"] == sum(not _ng(i) for i in range(25, 600, 50))  # scratched parts passed
    assert review["false_reject"]["k"] == sum(_ng(i) for i in range(0, 600, 10))  # good parts stopped
    text = html.read_text()
    for section in ("Summary", "p-chart", "Yield and defect rate", "Pareto", "Line health", "Models and thresholds",
                    "Examples per defect class", "Traceability", "Against operator review", "Escape rate"):
        assert section in text, section
    assert text.count("<svg") == 2 and "data:image/png;base64," in text and 'id="search"' in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing fetched from a network
    if shutil.which("pdftoppm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pdftoppm (poppler-utils) is missing under CI (.ci/run installs it)")
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    for page in pages:
        gray = np.asarray(Image.open(page).convert("L"))
        assert (gray < 200).mean() > 0.005, page.name  # ink on every page


def test_an_empty_period_is_a_report_that_says_so(tmp_path: Path) -> None:
    db = _db(tmp_path)
    out = tmp_path / "empty.html"
    run = _report("--db", str(db), "--from", "2030-01-01", "--to", "2030-01-02", "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["parts"] == 0
    assert "No parts were decided in this period" in out.read_text()


def test_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lineguard.inspect.store as store_mod

    good, old = _db(tmp_path), tmp_path / "old.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", MIGRATIONS[:1])
    ResultStore(old).close()
    for args, words in ((["--db", str(old)], "schema version 1"),
                        (["--db", str(tmp_path / "none.db")], "no such results database"),
                        (["--db", str(good), "--from", "yesterday"], "not an ISO 8601 time")):
        run = _report(*args, "--out", str(tmp_path / "x.html"))
        assert run.returncode == 2 and words in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "x.html").exists()


def test_the_rule_list_shows_a_run_of_flags_as_one_row() -> None:
    """A lot that stays shifted breaks rule 4 at every point from the eighth on: one row, not one per lot."""
    from lineguard.inspect.qa import QaFigures, Subgroup
    from lineguard.inspect.report import violation_runs
    from lineguard.inspect.spc import p_chart

    ng = [20] * 12 + [90] + [20] * 3  # 12 lots below the centre, one beyond 3 sigma, 3 more below
    chart = p_chart(ng, [1000] * len(ng))
    keys = [f"lot{i:02d}" for i in range(len(ng))]
    f = QaFigures.model_construct(
        subgroups=[Subgroup(key=k, parts=1000, ng=d, fpy=1 - d / 1000) for k, d in zip(keys, ng)],
        violations=[{"rule": v.rule, "text": v.text, "index": v.index, "key": keys[v.index], "points": list(v.points)}
                    for v in chart.violations])
    assert [v.index for v in chart.violations if v.rule == 4] == [7, 8, 9, 10, 11]
    assert violation_runs(f) == [
        {"rule": 4, "text": "8 points in a row on one side of the centre line", "flagged": "lot07 .. lot11 (5)",
         "points": "lot00 .. lot11 (12)"},
        {"rule": 1, "text": "one point beyond 3 sigma", "flagged": "lot12", "points": "lot12"},
    ]
