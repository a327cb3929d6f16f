"""The ``lineguard`` command: one verb group per job (Ultralytics style).

    lineguard data import SRC --out DIR      lineguard data simulate --n 2000 --out DIR
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from . import LineguardError
from .console import err_console
from .data.cli import app as data_app
from .edge.cli import bench, export
from .synth.cli import simulate
from .training.cli import evaluate, train

app = typer.Typer(name="lineguard", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Visual defect inspection for factory lines.")
data_app.command("simulate")(simulate)
app.add_typer(data_app, name="data")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("bench")(bench)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: errors in the input print one clear line (no traceback) and exit with 2."""
    try:
        app(args=argv, prog_name="lineguard")
    except LineguardError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
