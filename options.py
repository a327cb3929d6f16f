"""The one command-line vocabulary: the options every verb shares, defined once (README: "Command-line
vocabulary"). A verb takes ``--model`` for a model folder or file, ``--arch`` for an architecture,
``--data`` for a data set, ``--device`` as ``cpu | cuda[:N] | dla:N``, ``--batch`` as a batch size,
and ``--json`` / ``--quiet`` for its output. Torch-free, Python 3.8.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

__all__ = ["DEVICE_HELP", "JSON", "QUIET", "data", "device", "model", "out"]

DEVICE_HELP = "cpu | cuda[:N] | dla:N"

JSON = typer.Option(False, "--json", help="Print the result as one JSON object, the last line of stdout.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars and no result table (errors and --json print).")


def model(default: Any = ..., help: str = "Model folder (or an exported model file).") -> Any:
    return typer.Option(default, "--model", "-m", help=help)


def data(default: Any = ..., help: str = "Data set folder.") -> Any:
    return typer.Option(default, "--data", "-d", help=help)


def out(default: Any = ..., help: str = "Folder to write.") -> Any:
    return typer.Option(default, "--out", "-o", help=help)


def device(default: Optional[str] = "cpu", help: str = DEVICE_HELP) -> Any:
    return typer.Option(default, "--device", help=help)
