"""The virtual camera: simulated parts (``lineguard.sim``) handed over at a set rate, each with its true class.

    src = SimSource(SimSourceConfig(rate=30, parts=1000), "camera-1")
    src.start(); cap = src.read(timeout=0.5); cap.truth      # 'ok', 'scratch', ...

Part ``seq`` is ``render_part(sim, seed, seq)`` (or, with ``pool=K``, part ``seq % K`` of K rendered once, so a
benchmark measures the line, not the simulator). The parts are paced on a fixed schedule (``t0 + seq / rate``):
a reader that falls behind gets the parts that are due at once, as a triggered camera would have taken them.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, List, Optional

from lineguard.edge.verdict import Frame
from lineguard.sim import Part, render_part

from .base import Capture, EndOfSource, Source, SourceState

if TYPE_CHECKING:
    from .config import SimSourceConfig

__all__ = ["SimSource"]


class SimSource(Source):
    kind = "sim"

    def __init__(self, cfg: SimSourceConfig, source_id: str) -> None:
        super().__init__(source_id)
        self.cfg = cfg
        self._pool: List[Part] = []
        self._t0 = 0.0

    def _open(self) -> None:
        if self.cfg.pool and not self._pool:
            self._pool = [render_part(self.cfg.sim, self.cfg.seed, i) for i in range(self.cfg.pool)]
        self._t0 = time.monotonic()

    def _grab(self, timeout: float) -> Optional[Capture]:
        seq = self._seq
        if self.cfg.parts and seq >= self.cfg.parts:
            self.state = SourceState.ENDED
            raise EndOfSource(self.source_id)
        if self.cfg.rate > 0:
            wait = self._t0 + seq / self.cfg.rate - time.monotonic()
            if wait > timeout:
                self._stop.wait(timeout)
                return None
            if wait > 0 and self._stop.wait(wait):
                return None
        part = self._pool[seq % len(self._pool)] if self._pool else render_part(self.cfg.sim, self.cfg.seed, seq)
        seq = self.next_seq()
        frame = Frame(image=part.image, frame_id=seq, timestamp=time.time(), source_id=self.source_id,
                      serial=f"sim-{self.cfg.seed}-{seq}")
        return Capture(frame=frame, seq=seq, truth=part.label)
