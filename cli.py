"""The ``lineguard`` command: one verb group per job (Ultralytics style).

    lineguard data import SRC --out DIR      lineguard data simulate --n 2000 --out DIR
    lineguard synth fit --data DIR --out GAN  lineguard synth generate --gan GAN --base DIR --n 100000 --out DIR
    lineguard train --data DIR --out MODEL    lineguard export --model MODEL --format onnx
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from . import LineguardError
from .console import err_console, shown
from .data.cli import app as data_app
from .edge.cli import bench, export
from .synth.cli import generate, simulate
from .synth.gan.cli import fit as gan_fit
from .training.cli import evaluate, synth_score, train

app = typer.Typer(name="lineguard", no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Visual defect inspection for factory lines.")
data_app.command("simulate")(simulate)
app.add_typer(data_app, name="data")
synth_app = typer.Typer(no_args_is_help=True, help="Defect synthesis: fit the GAN, generate, score.")
synth_app.command("fit")(gan_fit)
synth_app.command("generate")(generate)
synth_app.command("score")(synth_score)
app.add_typer(synth_app, name="synth")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("export")(export)
app.command("bench")(bench)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: errors in the input or the environment (unreadable files, a full disk) print one clear
    line (no traceback) and exit with 2; an interrupt exits with 130."""
    try:
        app(args=argv, prog_name="lineguard")
    except LineguardError as e:
        _fail(str(e), 2)
    except OSError as e:  # the file system said no (permissions, a full disk, a vanished file)
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {shown(message)}", highlight=False)
    sys.exit(code)
