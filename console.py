"""Command-line output shared by every verb: a rich view for people, one JSON line for machines."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from .files import printable

__all__ = ["console", "emit", "err_console", "shown"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def shown(text: object) -> str:
    """User text (file names, class names, reasons) ready for a rich string: one printable line (see
    ``files.printable``) with rich markup escaped, so ``[red]`` in a name is shown, not obeyed."""
    return escape(printable(str(text)))


def emit(result: BaseModel, as_json: bool, human: Optional[Callable[[Any], None]] = None) -> None:
    """Show ``result``: with ``as_json`` one JSON object as the last line of stdout, else ``human``."""
    if as_json:
        print(json.dumps(result.model_dump(mode="json")), flush=True)
    elif human is not None:
        human(result)
    else:
        console.print_json(result.model_dump_json())
