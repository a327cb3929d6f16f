"""Command-line output shared by every verb: a rich view for people, one JSON line for machines."""

from __future__ import annotations

import json
import logging
import math
import sys
from typing import Any, Callable, Optional

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from .files import printable

__all__ = ["console", "emit", "err_console", "finite", "log_to_console", "shown", "strict_json"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def shown(text: object) -> str:
    """User text (file names, class names, reasons) ready for a rich string: one printable line (see
    ``files.printable``) with rich markup escaped, so ``[red]`` in a name is shown, not obeyed."""
    return escape(printable(str(text)))


def emit(result: BaseModel, as_json: bool, human: Optional[Callable[[Any], None]] = None, quiet: bool = False) -> None:
    """Show a verb's typed result: with ``as_json`` one JSON object (NaN/inf as null) as the last line of stdout,
    else ``human`` (a table; pretty JSON without one), nothing with ``quiet``."""
    if as_json:
        print(strict_json(result.model_dump(mode="json")), flush=True)
    elif quiet:
        return
    elif human is not None:
        human(result)
    else:
        console.print_json(result.model_dump_json())


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def strict_json(obj: Any, indent: Optional[int] = None) -> str:
    """Standard JSON for reports and ``--json``: no NaN/Infinity (null instead)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def log_to_console(quiet: bool = False) -> None:
    """Show the ``lineguard`` loggers' INFO lines (a training run's epochs, ...) on stdout, one message a
    line; with ``quiet`` only warnings and errors. Idempotent: a verb calls it once before it works."""
    root = logging.getLogger("lineguard")
    handler = next((h for h in root.handlers if getattr(h, "lineguard_console", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.lineguard_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
