"""The one device vocabulary of every verb and runtime: ``cpu``, ``cuda`` (= ``cuda:0``), ``cuda:N`` (GPU N),
``dla:N`` (DLA core N of a Jetson). Torch-free, Python 3.8.

    parse_device("cuda:1")                          # Device(kind="cuda", index=1)
    parse_device("dla:0", ("cpu", "cuda"), RunnerError)   # RunnerError: device 'dla:0': not one of cpu; cuda, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Type, Union

from . import LineguardError

__all__ = ["DEVICE_KINDS", "Device", "DeviceError", "parse_device"]


class DeviceError(LineguardError):
    """A device name outside the vocabulary, or of a kind not allowed (:func:`parse_device`'s default error;
    the runners raise :class:`~lineguard.edge.runners.RunnerError`, export :class:`ExportError` instead)."""


DEVICE_KINDS = ("cpu", "cuda", "dla")
_DEVICE_FORMS = {"cpu": "cpu", "cuda": "cuda, cuda:N (GPU N)", "dla": "dla:N (DLA core N)"}
_DEVICE = re.compile(r"(cpu)|(cuda)(?::([0-9]+))?|(dla):([0-9]+)")


@dataclass(frozen=True)
class Device:
    """``cpu``, ``cuda:N`` (GPU N) or ``dla:N`` (DLA core N; the GPU is device 0)."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind == "cpu" else f"{self.kind}:{self.index}"


def parse_device(value: Union[str, Device], allowed: Sequence[str] = DEVICE_KINDS,
                 error: Type[LineguardError] = DeviceError) -> Device:
    """``value`` (``cpu``, ``cuda`` = ``cuda:0``, ``cuda:N``, ``dla:N``) as a :class:`Device` whose kind is
    in ``allowed``; otherwise one ``error`` line (the caller's error type) listing what is allowed."""
    text = str(value) if isinstance(value, Device) else value
    match = _DEVICE.fullmatch(text) if isinstance(text, str) else None
    if match is not None:
        cpu, cuda, gpu, _, core = match.groups()
        if cpu:
            device = Device("cpu")
        elif cuda:
            device = Device("cuda", int(gpu or 0))
        else:
            device = Device("dla", int(core))
        if device.kind in allowed:
            return device
    forms = "; ".join(_DEVICE_FORMS[k] for k in allowed)
    raise error(f"device {text!r}: not one of {forms}")
