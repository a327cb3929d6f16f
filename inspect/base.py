"""The line's shared types: what a source hands over (:class:`Capture`), the source interface
(:class:`Source`, roboflow inference's ``VideoSource`` shape: ``start`` / ``read`` / ``stop`` and a state) and
the reject-signal interface (:class:`RejectSink`). Torch-free, Python 3.8 (the line computer).

    src.start()
    while True:
        cap = src.read(timeout=0.5)        # None: nothing yet; EndOfSource: a finite source is done
        ...
    src.stop()                             # from every state, also while a connect is failing; idempotent

A source numbers the frames it hands over (``Capture.seq``, 0, 1, 2, ... per source run) and counts those it
knows were lost before they reached it (``Source.lost``: a camera's frame-number gaps): every part the camera
saw is either a capture or counted. A frame it could not decode is still handed over, with ``error`` set and
an empty image, so the part is decided (NG ``bad-frame``), never dropped.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Dict, Optional

import numpy as np

from lineguard import LineguardError
from lineguard.edge.verdict import Frame

__all__ = ["Ack", "Capture", "EndOfSource", "InspectError", "RejectSink", "SignalError", "Source", "SourceState",
           "empty_image"]


class InspectError(LineguardError):
    """A line configuration, source, sink or results store that cannot be used; the message names it."""


class EndOfSource(Exception):
    """A finite source (a folder read once, a video file, a simulator run of N parts) has handed over all."""


class SignalError(Exception):
    """One reject-signal attempt failed (no connection, no acknowledgement, a read-back that differs)."""


class SourceState(str, Enum):
    NOT_STARTED = "not_started"
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a finite source handed over everything
    STOPPED = "stopped"


def empty_image() -> np.ndarray:
    """The image of a capture that could not be decoded."""
    return np.zeros((0, 0), np.uint8)


@dataclass
class Capture:
    """One part as the source saw it: the frame, the source-side number, and what else the source knows."""

    frame: Frame
    seq: int  # source-side frame number, 0, 1, 2, ... per source run, no gap (gaps are Source.lost)
    truth: Optional[str] = None  # the part's true class where the source knows it (the simulator)
    error: Optional[str] = None  # why the frame is unusable (decode failure, wrong size...): NG bad-frame
    encoded: Optional[bytes] = None  # the frame as the camera/file encoded it, where the source has it
    meta: Dict[str, str] = field(default_factory=dict)  # source details (file name, stream URL)


class Source(ABC):
    """A camera or a stand-in. Subclasses implement :meth:`_open`, :meth:`_grab` and :meth:`_close`;
    this base class keeps the state, the numbering and the stop flag."""

    kind = "?"

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.state = SourceState.NOT_STARTED
        self.reconnects = 0  # successful re-connections after a loss
        self.lost = 0  # frames the source knows it missed (frame-number gaps, a camera's dropped buffers)
        self._seq = 0
        self._stop = threading.Event()

    def start(self) -> None:
        """Connect (a failing camera keeps trying in :meth:`read`, with backoff; :meth:`stop` ends that)."""
        self._stop.clear()
        self.state = SourceState.CONNECTING
        self._open()
        if self.state is SourceState.CONNECTING:
            self.state = SourceState.RUNNING

    def read(self, timeout: float) -> Optional[Capture]:
        """The next capture, None when none came within ``timeout`` seconds; :class:`EndOfSource` when done."""
        if self.state in (SourceState.ENDED, SourceState.STOPPED):
            raise EndOfSource(self.source_id)
        return self._grab(timeout)

    def stop(self) -> None:
        """Stop from any state (idempotent); a read or a connect in progress returns soon after."""
        self._stop.set()
        if self.state is not SourceState.STOPPED:
            self.state = SourceState.STOPPED
            self._close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def capture(self, image: np.ndarray, meta: Dict[str, str], timestamp: Optional[float] = None,
                error: Optional[str] = None, encoded: Optional[bytes] = None) -> Capture:
        """The next :class:`Capture` of this source (numbered), its frame stamped now unless ``timestamp``."""
        seq = self.next_seq()
        frame = Frame(image=image, frame_id=seq, timestamp=time.time() if timestamp is None else timestamp,
                      source_id=self.source_id)
        return Capture(frame=frame, seq=seq, error=error, encoded=encoded, meta=meta)

    def describe(self) -> Dict[str, object]:
        return {"kind": self.kind, "source_id": self.source_id, "state": self.state.value,
                "reconnects": self.reconnects, "lost": self.lost, "handed_over": self._seq}

    @abstractmethod
    def _open(self) -> None:
        """Connect or open; may leave the state CONNECTING/RECONNECTING for :meth:`_grab` to retry."""

    @abstractmethod
    def _grab(self, timeout: float) -> Optional[Capture]:
        """The next capture within ``timeout`` s, or None; raise :class:`EndOfSource` when done."""

    def _close(self) -> None:  # noqa: B027 (nothing to free for most sources)
        """Free the device or file."""


@dataclass
class Ack:
    """What a reject output confirmed: the value read back and how long write + read-back took."""

    sink: str
    value: bool
    attempts: int
    ms: float


class RejectSink(ABC):
    """One reject output (a PLC coil, an OPC UA node, a log line). :meth:`signal` writes the decision for one
    part (True = reject) and reads it back as the acknowledgement; it raises :class:`SignalError` when either
    fails. Called from one thread (its own worker); must not block longer than ``timeout``."""

    name = "?"

    def open(self) -> None:  # noqa: B027
        """Connect (may raise SignalError; signal() connects again on the next call)."""

    @abstractmethod
    def signal(self, reject: bool, part: Dict[str, object], timeout: float) -> bool:
        """Write ``reject`` for ``part`` (serial, frame id, decision, reason), read it back, return the read-back
        value; raise :class:`SignalError` on any failure."""

    def close(self) -> None:  # noqa: B027
        """Disconnect (idempotent)."""
