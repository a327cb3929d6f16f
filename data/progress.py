"""Progress bars for long work (rich), quiet when output is not a terminal or when disabled."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, TypeVar

from rich.progress import track as _rich_track

T = TypeVar("T")


def track(items: Iterable[T], description: str, enabled: bool = True, total: Optional[int] = None
          ) -> Iterable[T]:
    """Iterate ``items`` with a progress bar on stderr (rich hides it when not a terminal)."""
    if not enabled:
        return items
    if total is None and isinstance(items, Sequence):
        total = len(items)
    from rich.console import Console

    return _rich_track(items, description=description, total=total, console=Console(stderr=True),
                       transient=True)
