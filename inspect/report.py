"""``lineguard report``: the QA report of a period as one self-contained HTML file (Jinja2, matplotlib charts as
inline SVG, archive images as data URIs, no network fetch) and optionally a PDF of it (WeasyPrint).
Torch-free, Python 3.8 (matplotlib, Jinja2 and WeasyPrint from the ``report`` extra).

    figures = qa_figures(engine, t0, t1, by="shift")                         # qa.py: the numbers, in SQL
    html = render_html(figures, Evidence.load(engine, t0, t1, LINE_TABLES.parts, archive=Path("archive")))
    write_pdf(html, Path("report.pdf"))
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import sqlalchemy as sa
from dateutil import tz
from pydantic import BaseModel

from lineguard.files import atomic_write
from lineguard.inspect.base import InspectError

from .qa import QaFigures
from .schema import utc_text

__all__ = ["EXAMPLES_PER_CLASS", "TRACE_ROWS", "Evidence", "render_html", "violation_runs", "write_pdf"]

EXAMPLES_PER_CLASS = 3
TRACE_ROWS = 500  # rows of the traceability table (the newest first; filter with --lot / --serial)
TEMPLATE = "report.html.j2"
MAX_TICKS = 25


class Evidence(BaseModel):
    """What the report shows beside the figures: example images per defect class and the traceability rows."""

    examples: Dict[str, List[Dict[str, Optional[str]]]]  # class -> [{"image": data URI, "heatmap": ..., "utc", "id"}]
    trace: List[Dict[str, Any]]
    trace_filter: str

    @classmethod
    def load(cls, engine: sa.Engine, t0: float, t1: float, table: sa.Table, archive: Optional[Path] = None,
             lot: Optional[str] = None, serial: Optional[str] = None) -> Evidence:
        p = table.c
        where = [p.state == "final", p.ts >= t0, p.ts < t1]
        examples: Dict[str, List[Dict[str, Optional[str]]]] = {}
        with engine.connect() as conn:
            if archive is not None:  # the newest few per class (twice as many: a file may be gone from the archive)
                newest = sa.func.row_number().over(partition_by=p.top_class, order_by=p.ts.desc()).label("n")
                ranked = (sa.select(p.top_class, p.archive_path, p.utc, p.serial, p.source_seq, newest)
                          .where(*where, p.decision == "NG", p.reason.is_(None), p.archive_path.is_not(None))
                          .subquery())
                rows = conn.execute(sa.select(ranked).where(ranked.c.n <= 2 * EXAMPLES_PER_CLASS)
                                    .order_by(ranked.c.top_class, ranked.c.n)).all()
                for cls_, path, utc, serial_, seq, _ in rows:
                    shown = examples.setdefault(str(cls_), [])
                    image = _data_uri(archive / path) if len(shown) < EXAMPLES_PER_CLASS else None
                    if image is not None:
                        heat = archive / path.replace(".png", "-heatmap.png")
                        shown.append({"image": image, "heatmap": _data_uri(heat), "utc": utc,
                                      "id": serial_ or f"frame {seq}"})
            filters = list(where)
            if lot is not None:
                filters.append(p.lot == lot)
            if serial is not None:
                filters.append(p.serial == serial)
            if lot is None and serial is None:
                filters.append(p.decision != "OK")
            trace = [dict(r._mapping) for r in conn.execute(
                sa.select(p.ts, p.line, p.station, p.camera, p.lot, p.serial, p.source_seq, p.decision, p.top_class,
                          p.reason, p.ng_score, p.review, p.model_version, p.ack, p.archive_path)
                .where(*filters).order_by(p.ts.desc()).limit(TRACE_ROWS))]
        what = " and ".join(f"{k} {v}" for k, v in (("lot", lot), ("serial", serial)) if v is not None)
        return cls(examples=examples, trace=trace,
                   trace_filter=f"parts of {what}" if what else "parts not passed (NG, UNCERTAIN)")


def _data_uri(path: Path) -> Optional[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: without the XML prolog


def _charts(f: QaFigures) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: Dict[str, str] = {}
    keys = [g.key for g in f.subgroups]
    x = list(range(len(keys)))
    if keys:
        fig, ax = plt.subplots(figsize=(9, 3.4))
        p = [g.ng / g.parts if g.parts else None for g in f.subgroups]
        ax.step(x, [u if u is not None else float("nan") for u in f.ucl], where="mid", color="#c0392b", lw=1,
                label="UCL / LCL (3 sigma)")
        ax.step(x, [u if u is not None else float("nan") for u in f.lcl], where="mid", color="#c0392b", lw=1)
        ax.axhline(f.pbar, color="#555", lw=1, ls="--", label=f"p-bar {f.pbar:.2%}")
        ax.plot(x, [v if v is not None else float("nan") for v in p], "o-", color="#1f4e79", ms=4, lw=1,
                label="NG rate")
        flagged = sorted({v["index"] for v in f.violations})
        if flagged:
            ax.plot(flagged, [p[i] for i in flagged], "o", ms=10, mfc="none", mec="#c0392b", mew=2,
                    label="Western Electric rule broken")
        step = -(-len(keys) // MAX_TICKS)  # every step-th subgroup named: at most MAX_TICKS labels
        ax.set_xticks(x[::step])
        ax.set_xticklabels(keys[::step], rotation=45, ha="right", fontsize=7)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylabel("NG rate")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        charts["pchart"] = _svg(fig)
    if f.pareto:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = [str(r["class"]) for r in f.pareto]
        ax.bar(names, [r["parts"] for r in f.pareto], color="#1f4e79")
        ax.set_ylabel("NG parts")
        ax2 = ax.twinx()
        ax2.plot(names, [r["cumulative"] for r in f.pareto], "o-", color="#c0392b")
        ax2.set_ylim(0, 1.05)
        ax2.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax2.set_ylabel("cumulative")
        charts["pareto"] = _svg(fig)
    return charts


def _signal(ack: Optional[str]) -> str:
    """A row's reject-signal outcome (``ack``: output -> {"ack": value} or {"error": ..., "attempts": n}) in words."""
    if not ack:
        return ""
    try:
        outputs = json.loads(ack)
        return "; ".join(f"{name} acknowledged" if "error" not in v else f"{name} FAILED ({v['error']})"
                         for name, v in outputs.items())
    except (ValueError, AttributeError, TypeError):
        return ack


def violation_runs(f: QaFigures) -> List[Dict[str, Any]]:
    """The rule violations as the report lists them: the flags of one rule on consecutive subgroups are one run (a
    process that stays shifted breaks rule 4 at every point), with the subgroups that make it; in order of the
    first flag."""
    runs: List[Dict[str, Any]] = []
    for v in sorted(f.violations, key=lambda v: (v["rule"], v["index"])):
        last = runs[-1] if runs else None
        if last is not None and last["rule"] == v["rule"] and last["end"] == v["index"] - 1:
            last["end"] = v["index"]
            last["points"].update(v["points"])
        else:
            runs.append({"rule": v["rule"], "text": v["text"], "start": v["index"], "end": v["index"],
                         "points": set(v["points"])})
    keys = [g.key for g in f.subgroups]

    def span(idx: List[int]) -> str:
        return ", ".join(keys[i] for i in idx) if len(idx) <= 4 else f"{keys[idx[0]]} .. {keys[idx[-1]]} ({len(idx)})"

    return [{"rule": r["rule"], "text": r["text"], "flagged": span(list(range(r["start"], r["end"] + 1))),
             "points": span(sorted(r["points"]))} for r in sorted(runs, key=lambda r: (r["start"], r["rule"]))]


def render_html(f: QaFigures, evidence: Evidence, title: str = "Inspection QA report") -> str:
    """The report as one HTML document (no external resources)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v: "-" if v is None else f"{v:.2%}"
    env.filters["utc"] = lambda v: "-" if v is None else utc_text(v)[:19].replace("T", " ")
    env.filters["signal"] = _signal
    zone = tz.gettz(f.timezone)
    env.filters["local"] = lambda v: "-" if v is None else dt.datetime.fromtimestamp(v, zone).strftime(
        "%Y-%m-%d %H:%M:%S")
    return env.get_template(TEMPLATE).render(title=title, f=f, ev=evidence, charts=_charts(f), runs=violation_runs(f),
                                             flagged={v["index"] for v in f.violations},
                                             total_ng=sum(f.by_decision.get(d, 0) for d in ("NG", "UNCERTAIN")))


def write_pdf(html: str, out: Path) -> None:
    """The PDF of ``html`` (WeasyPrint; no URL is fetched: the document is self-contained)."""
    try:
        import weasyprint
    except (ImportError, OSError) as e:  # OSError: the Pango library is missing
        raise InspectError(f"{out}: PDF needs WeasyPrint (pip install 'lineguard[report]' and Pango): {e}") from None

    from weasyprint.urls import URLFetcher

    only_inline = URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)  # nothing from the network or disk
    pdf = weasyprint.HTML(string=html, url_fetcher=only_inline).write_pdf()
    atomic_write(out, pdf)
