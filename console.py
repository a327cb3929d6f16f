"""Command-line output shared by every verb: a rich view for people, one JSON line for machines."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from pydantic import BaseModel
from rich.console import Console

__all__ = ["console", "emit", "err_console"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def emit(result: BaseModel, as_json: bool, human: Optional[Callable[[Any], None]] = None) -> None:
    """Show ``result``: with ``as_json`` one JSON object as the last line of stdout, else ``human``."""
    if as_json:
        print(json.dumps(result.model_dump(mode="json")), flush=True)
    elif human is not None:
        human(result)
    else:
        console.print_json(result.model_dump_json())
