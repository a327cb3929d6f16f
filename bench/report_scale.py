"""The QA report and the plant sync at a million parts: time and peak RSS of `lineguard report` from SQLite and from
PostgreSQL, and `lineguard sync`'s rows/s. Resumable: the SQLite file is built once (and reused), the sync resumes
from its watermark.

    eval "$(.ci/postgres start)"      # or any PostgreSQL URL in LINEGUARD_TEST_POSTGRES
    python bench/report_scale.py --work runs/bench-report --parts 1000000 --out runs/bench-report/result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from rich.progress import track

from lineguard.inspect.schema import EVENT_INSERT, INSERT, EventRow, utc_text
from lineguard.inspect.store import ResultStore

T0 = 1_780_000_000.0
CLASSES = ("scratch", "stain", "dent")


def build(db: Path, parts: int, chunk: int = 50_000) -> None:
    """``parts`` synthetic rows over 30 days at a steady rate: 5 lines' lots, NG ~6% with a drifting lot; a camera
    reconnect and some lost frames every 1,000 parts."""
    if db.exists():
        ResultStore(db).close()  # an older schema is migrated
        with sqlite3.connect(db) as c:
            if c.execute("SELECT COUNT(*) FROM parts").fetchone()[0] == parts:
                if not c.execute("SELECT COUNT(*) FROM events").fetchone()[0]:
                    _events(c, parts)
                return
        db.unlink()
    ResultStore(db).close()
    conn = sqlite3.connect(db)
    _events(conn, parts)
    conn.execute("PRAGMA synchronous=OFF")
    step = 30 * 86400 / parts
    for start in track(range(0, parts, chunk), description="building rows"):
        rows = []
        for i in range(start, min(parts, start + chunk)):
            ts = T0 + i * step
            lot = i // 5000
            ng = (i * 2654435761) % 1000 < (60 + (40 if lot % 37 == 0 else 0))
            rows.append({
                "state": "final", "line": f"L{i % 5}", "station": "S1", "camera": f"cam{i % 2}", "source_seq": i,
                "run_id": "bench", "serial": f"SN{i:08d}", "lot": f"lot{lot:04d}", "utc": utc_text(ts), "ts": ts,
                "model_version": "m1" if i < parts // 2 else "m2", "policy": '{"threshold":0.5}',
                "scores": "{}", "ng_score": 0.9 if ng else 0.1, "decision": "NG" if ng else "OK",
                "top_class": CLASSES[i % 3] if ng else "ok", "reason": None, "prior_decision": None,
                "prior_reason": None, "truth": None, "boxes": "[]", "t_capture": ts, "t_queued": ts,
                "t_inferred": ts + 0.01, "t_decided": ts + 0.012 + (i % 17) / 1000, "t_signalled": ts + 0.015,
                "ack": None, "image_sha256": None, "archive_path": None})
        conn.executemany(INSERT, rows)
        conn.commit()
    conn.close()


def _events(conn: sqlite3.Connection, parts: int) -> None:
    step = 30 * 86400 / parts
    rows = [EventRow(run_id="bench", line=f"L{i % 5}", station="S1", camera=f"cam{i % 2}", ts=T0 + i * step, kind=kind,
                     count=1 if kind == "reconnect" else 1 + (i // 1000) % 50).values()
            for i in range(0, parts, 1000) for kind in ("reconnect", "frames-lost")]
    with conn:
        conn.executemany(EVENT_INSERT, rows)


WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def timed(cmd: list) -> dict:
    """Wall time and peak RSS (MB) of one command, measured in a wrapper process of its own."""
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {run.stderr.strip()[-500:]}")
    peak_kb = int(run.stderr.strip().splitlines()[-1].split()[1])
    return {"seconds": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1),
            "result": json.loads(run.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/bench-report"))
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    url = os.environ.get("LINEGUARD_TEST_POSTGRES")
    if not url:
        raise SystemExit('set LINEGUARD_TEST_POSTGRES (eval "$(.ci/postgres start)")')
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.work / "results.db"
    t = time.perf_counter()
    build(db, args.parts)
    built = time.perf_counter() - t
    lg = [sys.executable, "-m", "lineguard"]
    period = ["--from", "2026-05-28T00:00Z", "--to", "2026-07-01T00:00Z"]
    out = {"parts": args.parts, "build_seconds": round(built, 1)}
    out["report_sqlite"] = timed([*lg, "report", "--db", str(db), *period, "--by", "lot",
                                  "--out", str(args.work / "sqlite.html"), "--pdf", str(args.work / "sqlite.pdf"),
                                  "--json"])
    out["sync"] = timed([*lg, "sync", "--db", str(db), "--to", url, "--batch", "10000", "--json"])
    out["report_postgresql"] = timed([*lg, "report", "--db", url, *period, "--by", "lot",
                                      "--out", str(args.work / "postgresql.html"),
                                      "--pdf", str(args.work / "postgresql.pdf"), "--json"])
    same = out["report_sqlite"]["result"] == out["report_postgresql"]["result"]
    for k in ("report_sqlite", "report_postgresql"):
        out[k]["result"] = {"parts": out[k]["result"]["parts"], "subgroups": len(out[k]["result"]["subgroups"]),
                            "camera_events": sum(sum(c["counts"].values()) for c in out[k]["result"]["cameras"])}
    out["same_figures"] = same
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
