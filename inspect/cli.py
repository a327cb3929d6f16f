"""``lineguard inspect ...``: run the line, print an example config, benchmark the loop, look at the results.

    lineguard inspect config --example > line.yaml
    lineguard inspect run --config line.yaml --set source.rate=30
    lineguard inspect bench --model runs/demo/model --parts 2000 --json
    lineguard inspect status --db results.db --hours 8
    lineguard sync --db results.db --to postgresql://qa@plant-db/lineguard

Torch-free, Python 3.8.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
from pydantic import BaseModel

from .. import options
from ..console import console, emit, log_to_console, shown

SET = typer.Option([], "--set", help="Override a config key: key.sub=value (repeatable).")


class RunReport(BaseModel):
    """``lineguard inspect run``'s result: what this run did and the database's totals for it."""

    run_id: str
    db: str
    handed_over: int
    decided: int
    failsafe: int
    dropped: int
    recovered: int  # pending rows of a killed earlier run, resolved at start-up
    totals: dict


def config(
    config_path: Optional[Path] = typer.Option(None, "--config", "-c", help="A line.yaml to check."),
    overrides: List[str] = SET,
    example: bool = typer.Option(False, "--example", help="Print a commented example of every key."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Print a commented example config, or check one and print it resolved."""
    from .config import example_config, load_line_config

    if example:
        print(example_config(), end="")
        return
    cfg = load_line_config(config_path, overrides)
    emit(cfg, as_json, None, quiet)


def run(
    config_path: Optional[Path] = typer.Option(None, "--config", "-c", help="line.yaml (see --example)."),
    model: Optional[Path] = options.model(None, help="Model folder or file (model.path)."),
    overrides: List[str] = SET,
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Inspect the line until the source ends or SIGTERM (queued parts decided first); SIGHUP reloads."""
    from .config import load_line_config
    from .daemon import Line
    from .store import ResultStore

    if model is not None:  # as an override, so that SIGHUP's reload keeps it (a JSON string is a YAML string)
        overrides = [*overrides, f"model.path={json.dumps(str(model))}"]
    cfg = load_line_config(config_path, overrides)
    log_to_console(quiet)
    line = Line(cfg, str(config_path) if config_path else None, tuple(overrides))
    counts = line.run()
    with ResultStore(cfg.db) as store:
        totals = store.totals(run_id=line.run_id)
    rep = RunReport(run_id=line.run_id, db=str(cfg.db), recovered=line.recovered, totals=totals.model_dump(),
                    **{k: counts[k] for k in ("handed_over", "decided", "failsafe", "dropped")})
    emit(rep, as_json, _show_run, quiet)


def _show_run(rep: RunReport) -> None:
    console.print(f"run {rep.run_id}: {rep.handed_over} parts handed over, {rep.decided} decided "
                  f"({rep.failsafe} rejected fail-safe), {rep.dropped} frames dropped (free-run); results in "
                  f"{shown(rep.db)}" + (f"; {rep.recovered} parts of a killed run recovered" if rep.recovered else ""))
    _show_totals(rep.totals)


def status(
    db: Path = typer.Option(Path("results.db"), "--db", help="The results database."),
    hours: Optional[float] = typer.Option(None, "--hours", help="Only the last H hours (default: everything)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Totals by decision, reason and class for a period, and the agreement with the truth where known."""
    from .base import InspectError
    from .store import ResultStore

    if not db.is_file():
        raise InspectError(f"{db}: no results database")
    with ResultStore(db) as store:
        totals = store.totals(since=time.time() - hours * 3600 if hours else None)
    emit(totals, as_json, lambda t: _show_totals(t.model_dump()), quiet)


def sync(
    db: Path = typer.Option(Path("results.db"), "--db", help="The line's results database."),
    to: str = typer.Option(..., "--to", help="The plant database: postgresql://user@host[:port]/name (the password "
                                             "from PGPASSWORD or ~/.pgpass, or in the URL)."),
    batch: int = typer.Option(5000, "--batch", min=1, help="Rows per transaction (the memory used)."),
    source: Optional[str] = typer.Option(None, "--source", help="This database's name in the plant database "
                                                                 "(default: host:absolute path)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """Push the line's results changed since the last sync into the plant's PostgreSQL (idempotent, resumable)."""
    from rich.progress import Progress

    from ..console import err_console
    from .sync import sync_results

    with Progress(console=err_console, transient=True, disable=quiet or as_json) as bar:
        task = bar.add_task("sync: rows sent", total=None)
        rep = sync_results(db, to, batch=batch, source=source, progress=lambda n: bar.update(task, completed=n))
    emit(rep, as_json, lambda r: console.print(
        f"{r.rows} rows and {r.events} camera events sent to the plant database in {r.batches} batches "
        f"({r.rows_per_s:.0f} rows/s); {shown(r.source)} synced up to change {r.watermark}, event "
        f"{r.events_watermark}"), quiet)


def report(
    db: str = typer.Option("results.db", "--db", help="A daemon's results file or a postgresql:// URL."),
    since: Optional[str] = typer.Option(None, "--from", help="Start, ISO 8601 (no offset: the plant's zone); "
                                                              "default 24 h before --to."),
    until: Optional[str] = typer.Option(None, "--to", help="End (exclusive), ISO 8601; default now."),
    by: str = typer.Option("shift", "--by", help="Subgroups: shift | lot | line | camera."),
    out: Path = options.out(Path("report.html"), help="The HTML report."),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="Also write the report as PDF here."),
    shifts: Optional[Path] = typer.Option(None, "--shifts", help="YAML: timezone and shifts (name, start HH:MM)."),
    archive: Optional[Path] = typer.Option(None, "--archive", help="The image archive, for example images."),
    lot: Optional[str] = typer.Option(None, "--lot", help="Traceability table: this lot's parts."),
    serial: Optional[str] = typer.Option(None, "--serial", help="Traceability table: this serial's parts."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """The QA report of a period: yield, p-chart and rule breaks, Pareto, line health, models, examples, trace."""
    from ..config import load_config
    from ..files import atomic_write
    from .qa import GROUPINGS, ShiftConfig, parse_time, qa_figures
    from .report import Evidence, render_html, write_pdf
    from .sync import open_results

    if by not in GROUPINGS:
        raise typer.BadParameter(f"one of {', '.join(GROUPINGS)}", param_hint="--by")
    cfg = load_config(ShiftConfig, shifts) if shifts is not None else ShiftConfig()
    t1 = parse_time(until, cfg.timezone, "--to") if until else time.time()
    t0 = parse_time(since, cfg.timezone, "--from") if since else t1 - 86400
    engine, tables = open_results(db)  # reads only: a plant database without lineguard's tables is an error
    try:
        figures = qa_figures(engine, t0, t1, by=by, shifts=cfg, tables=tables)  # type: ignore[arg-type]
        html = render_html(figures, Evidence.load(engine, t0, t1, tables.parts, archive=archive, lot=lot,
                                                  serial=serial))
    finally:
        engine.dispose()
    atomic_write(out, html.encode("utf-8"))
    if pdf is not None:
        write_pdf(html, pdf)
    emit(figures, as_json, lambda f: console.print(
        f"{f.parts} parts, FPY {'-' if f.fpy is None else format(f.fpy, '.2%')}, {len(f.violations)} rule "
        f"violations; report in {shown(out)}" + (f" and {shown(pdf)}" if pdf else "")), quiet)


def _show_totals(t: dict) -> None:
    from rich.table import Table

    table = Table("decision", "reason / class", "parts", title=f"{t.get('parts', 0)} parts")
    for key, n in sorted(t.get("by_class", {}).items()):  # "decision/class"
        decision, cls = key.split("/", 1)
        table.add_row(decision, shown(cls), str(n))
    console.print(table)
    if t.get("truth_total"):
        console.print(f"agreement with the true class: {t['truth_correct']}/{t['truth_total']} "
                      f"({t['truth_correct'] / t['truth_total']:.2%})")


def bench(
    model: Path = options.model(help="Model folder or file."),
    parts: int = typer.Option(2000, "--parts", min=1, help="Parts to run through the loop."),
    rate: float = typer.Option(0.0, "--rate", min=0.0, help="Parts per second offered; 0 = as fast as it goes."),
    backend: str = typer.Option("auto", "--backend", help="auto | ort | ort-int8 | trt."),
    batch: int = typer.Option(8, "--batch", min=1, help="Largest micro-batch."),
    deadline_ms: float = typer.Option(200.0, "--deadline-ms", help="Deadline per part."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime threads (default: all)."),
    out: Optional[Path] = options.out(None, help="Folder for the results DB and archive (default: a temporary one)."),
    as_json: bool = options.JSON,
    quiet: bool = options.QUIET,
) -> None:
    """The whole loop on the virtual camera with the real results DB and archive, against the bare runner."""
    from .bench import run_bench

    rep = run_bench(model, parts=parts, rate=rate, backend=backend, batch=batch, deadline_ms=deadline_ms,
                    threads=threads, out=out, progress=not quiet and not as_json)
    emit(rep, as_json, _show_bench, quiet)


def _show_bench(rep) -> None:
    console.print(
        f"{rep.parts} parts at {'max rate' if not rep.offered_rate else f'{rep.offered_rate:g}/s'} ({rep.backend}): "
        f"{rep.fps:.1f} parts/s sustained; capture->decision p50 {rep.p50_ms:.1f} ms, p99 {rep.p99_ms:.1f} ms; "
        f"fail-safe {rep.failsafe or 'none'}, deadline misses {rep.deadline_misses}; RSS {rep.rss_mb}")
    console.print(f"bare runner best: {rep.runner_fps:.1f} images/s (batch {rep.runner_batch}); "
                  f"loop / runner = {rep.ratio:.2f}")
