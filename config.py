"""Typed configuration: pydantic models loaded from YAML, overridden from the command line.

Every verb has one config model. Unknown keys are rejected with a suggestion::

    cfg = load_config(SimulatorConfig, "sim.yaml", {"size": 128})
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from . import LineguardError
from .files import FileError, atomic_write, read_regular

__all__ = ["ConfigError", "StrictModel", "describe", "dump_config", "load_config", "read_mapping", "read_yaml",
           "validated"]

M = TypeVar("M", bound="StrictModel")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of YAML


class ConfigError(LineguardError):
    """A configuration file or override that cannot be used; the message names the cause."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _suggest(key: str, model: Type[BaseModel]) -> str:
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(err: ValidationError, model: Optional[Type[BaseModel]] = None, quote: bool = True,
             limit: Optional[int] = None) -> str:
    """A pydantic error as one line: ``'loc': msg; ...`` (``loc: msg`` without ``quote``), unknown keys as
    ``unknown key 'loc'`` with a suggestion from ``model``'s fields; at most ``limit`` errors shown."""
    errs = err.errors()
    parts = []
    for e in errs[:limit]:
        loc = ".".join(str(p) for p in e["loc"])
        msg = " ".join(str(e["msg"]).replace("Value error, ", "", 1).split())
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'{_suggest(str(e['loc'][-1]), model) if model else ''}")
        elif loc:
            parts.append(f"'{loc}': {msg}" if quote else f"{loc}: {msg}")
        else:
            parts.append(msg)
    more = len(errs) - len(parts)
    return "; ".join(parts) + (f"; ... and {more} more" if more > 0 else "")


def read_yaml(path: Union[str, Path], error: Type[LineguardError] = ConfigError,
              max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The YAML document in the regular file ``path`` (at most ``max_bytes``); anything that keeps it from
    loading (unreadable, not UTF-8, not YAML, nested too deeply) is one ``error`` line naming the file."""
    try:
        text = read_regular(path, max_bytes).decode("utf-8")
    except FileError as e:
        raise error(str(e)) from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise error(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise error(f"{path}: not valid YAML ({problem}{where})") from None


def read_mapping(path: Union[str, Path], error: Type[LineguardError] = ConfigError,
                 max_bytes: int = MAX_CONFIG_BYTES, empty: bool = False) -> Dict[str, Any]:
    """:func:`read_yaml` of a file that must hold a mapping of keys; an empty file is an empty mapping with
    ``empty`` (a config: all defaults), else an error like any other non-mapping."""
    data = read_yaml(path, error, max_bytes)
    if (data is not None or not empty) and not isinstance(data, dict):
        raise error(f"{path}: must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def validated(model: Type[M], data: Mapping[str, Any], where: str, error: Type[LineguardError] = ConfigError) -> M:
    """``model`` built from ``data``; what does not fit is one ``error`` line starting with ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{where}: {describe(e, model)}") from None


def load_config(
    model: Type[M],
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> M:
    """Build ``model`` from an optional YAML file, then apply ``overrides`` (``None`` values skipped)."""
    data = read_mapping(path, empty=True) if path is not None else {}
    origin = "defaults" if path is None else str(path)
    set_overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if set_overrides:
        origin += " + command line"
    return validated(model, {**data, **set_overrides}, origin)


def dump_config(cfg: BaseModel, path: Union[str, Path]) -> None:
    """Write the resolved config beside an artefact, so it can be reproduced."""
    atomic_write(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
