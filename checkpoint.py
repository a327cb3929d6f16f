"""The trainers' torch plumbing (the defect GAN's and the inspection model's): the device to run on, and
checkpoints: one file with everything a resume needs, written atomically, read strictly.

    device = torch_device("cuda:1")       # cpu | cuda | cuda:N, checked against what torch sees here

    save_checkpoint(path, {"model": model.state_dict(), ...}, cfg, "lineguard-train", 1)
    ck = load_checkpoint(path, "lineguard-train", 1, keys=("model", ...))
    check_settings(path, ck["config"], cfg, keys=("img_size", ...))   # the run's settings, unchanged
    with restoring(path):
        model.load_state_dict(ck["model"])

A checkpoint is a ``torch.save`` dict of tensors and plain values (read back with ``weights_only=True``):
``format`` and ``version`` (what wrote it), ``config`` (the run's config as JSON values) and the trainer's
own keys. Every way it can fail to resume (missing, truncated, foreign, of another format, started with
other settings, tensors that do not fit) is one :class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Sequence, Union

import torch
from pydantic import BaseModel, ValidationError

from . import LineguardError
from .config import describe
from .devices import parse_device
from .files import atomic_path

__all__ = ["CheckpointError", "check_settings", "load_checkpoint", "restoring", "save_checkpoint", "torch_device",
           "unreadable"]

PathLike = Union[str, Path]
# what ``load_state_dict`` of a module, an optimiser or a scheduler raises on state that does not fit
_MISFIT = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError)


class CheckpointError(LineguardError):
    """A checkpoint that cannot be resumed from; the message names the file and what to do."""


def unreadable(path: PathLike, why: str) -> CheckpointError:
    """The error for a file that is not a checkpoint this trainer can resume: ``why`` says how."""
    return CheckpointError(f"{path}: unreadable checkpoint ({why}); delete it to start over or restore it")


def save_checkpoint(path: PathLike, state: Mapping[str, Any], config: BaseModel, fmt: str, version: int) -> None:
    """Write ``state`` with ``config`` and the format ``fmt`` of ``version`` to ``path`` atomically: a kill
    during the write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": fmt, "version": version, "config": config.model_dump(mode="json"), **state}, tmp)


def load_checkpoint(path: PathLike, fmt: str, version: int, keys: Sequence[str] = (),
                    unversioned: bool = False) -> Dict[str, Any]:
    """The checkpoint at ``path``, on the CPU: a dict of format ``fmt`` and ``version`` with a ``config``
    mapping and ``keys``. ``unversioned`` also accepts a file without format and version (written before
    checkpoints had them). Anything else is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from; start the run without --resume")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, garbage, foreign pickle: torch raises many kinds
        raise unreadable(path, f"truncated or not a {fmt} checkpoint") from None
    if not isinstance(ck, dict):
        raise unreadable(path, f"not a {fmt} checkpoint")
    if "format" not in ck and not unversioned:
        raise unreadable(path, f"not a {fmt} checkpoint: no format")
    if "format" in ck and (ck["format"], ck.get("version")) != (fmt, version):
        raise CheckpointError(f"{path}: a {ck['format']} checkpoint of version {ck.get('version')}, this lineguard "
                              f"resumes {fmt} version {version}; train into a new folder")
    missing = [k for k in ("config", *keys) if k not in ck]
    if missing:
        raise unreadable(path, f"keys {missing} missing")
    if not isinstance(ck["config"], dict):
        raise unreadable(path, "its config is not a mapping")
    return ck


def check_settings(path: PathLike, saved: Mapping[str, Any], config: BaseModel, keys: Iterable[str],
                   what: str = "settings") -> None:
    """Refuse to resume with ``config`` when one of its ``keys`` differs from the ``saved`` config the run
    was started with. ``saved`` is read as today's ``type(config)``: a renamed key (a validation alias)
    or a setting added since with its default value is no difference."""
    try:
        before = type(config).model_validate(dict(saved)).model_dump(mode="json")
    except ValidationError as e:
        raise CheckpointError(f"{path}: the run's settings do not load in this lineguard "
                              f"({describe(e, type(config), limit=3)}); train into a new folder") from None
    now = config.model_dump(mode="json")
    differ = [k for k in keys if before.get(k) != now.get(k)]
    if differ:
        raise CheckpointError(f"{path}: the run was started with other {what} ({', '.join(differ)}); "
                              "resume with the same values or train into a new folder")


@contextmanager
def restoring(path: PathLike) -> Iterator[None]:
    """Around the ``load_state_dict`` calls of a resume: state that does not fit the model, optimiser or
    scheduler (other shapes, missing or foreign entries) becomes a :class:`CheckpointError` naming ``path``."""
    try:
        yield
    except _MISFIT as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # torch: a heading, then the cause
        raise unreadable(path, f"does not fit this model: {reason}") from None


def torch_device(name: Union[str, torch.device]) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:N``: ``lineguard.devices``); one clear line when it
    is not one or torch cannot use it here."""
    device = parse_device(str(name), ("cpu", "cuda"), LineguardError)
    if device.kind == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise LineguardError(f"device '{name}': torch sees no CUDA device here; use cpu")
    if device.index >= count:
        raise LineguardError(f"device '{name}': torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", device.index)
