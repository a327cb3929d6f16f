"""The model the line decides with, and its hot-swap: a new export in the model path is loaded and warmed up
beside the running one, checked (same classes, same input), then swapped in between two batches. A corrupt,
foreign or incompatible file is refused with one log line and a metric, and the old model keeps deciding.

    live = load_live(cfg.model, cfg.policy)            # LiveModel: runner, spec, policy, version
    watcher = ModelWatcher(cfg.model, cfg.policy, live, on_refused=print)
    new = watcher.poll()                               # a checked, warmed-up LiveModel, or None

Torch-free, Python 3.8.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from lineguard import LineguardError
from lineguard.data.modelspec import ModelSpec
from lineguard.edge.formats import export_format, file_format
from lineguard.edge.runners import Runner, load_runner, resolve_model_file
from lineguard.edge.runners.base import WEIGHTS_KEY
from lineguard.edge.verdict import DecisionPolicy

from .base import InspectError
from .config import ModelConfig, PolicyConfig

__all__ = ["LiveModel", "ModelWatcher", "load_live"]

log = logging.getLogger("lineguard.inspect")
Signature = Tuple[int, int, int]  # (inode, size, mtime_ns) of the model file


@dataclass
class LiveModel:
    runner: Runner
    policy: DecisionPolicy
    file: Path
    signature: Signature
    version: str  # sha256 of the weights it was exported from ("unknown" where the export recorded none)

    @property
    def spec(self) -> ModelSpec:
        return self.runner.spec

    def describe(self) -> dict:
        return {"version": self.version, "file": str(self.file), "backend": self.runner.backend,
                "classes": ",".join(self.spec.classes)}


def _signature(path: Path) -> Signature:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _version(runner: Runner) -> str:
    meta = getattr(runner, "metadata", None)  # ONNX Runtime: the ONNX metadata
    side = getattr(runner, "sidecar", None)  # TensorRT: the engine's side-car
    found = meta.get(WEIGHTS_KEY) if isinstance(meta, dict) else getattr(side, "weights_sha256", None)
    return found or "unknown"


def load_live(cfg: ModelConfig, overrides: PolicyConfig, warmup: int = 3) -> LiveModel:
    """Load, check the policy against the model's classes, and warm up (``warmup`` calls at the largest batch)."""
    try:
        file = resolve_model_file(cfg.path, _backend(cfg), cfg.key)
        signature = _signature(file)
        runner = load_runner(file, _backend(cfg), device=cfg.device, threads=cfg.threads)
    except OSError as e:
        raise InspectError(f"{cfg.path}: {e.strerror or e}") from None
    try:
        if not runner.spec.decides_ok_ng:
            raise InspectError(f"{file}: a defect-type model (classes {runner.spec.classes}, no OK class) cannot "
                               "decide OK/NG on a line; train it with an OK class (or run it as a later typing "
                               "stage)")
        policy = DecisionPolicy.of(runner.spec, **overrides.model_dump())
        frames = np.zeros((runner.batch_range[1], *runner.input_shape), np.uint8)
        for _ in range(warmup):
            runner.predict(frames)
    except BaseException:
        runner.close()
        raise
    return LiveModel(runner, policy, file, signature, _version(runner))


def _backend(cfg: ModelConfig) -> str:
    """The backend ``auto`` means: a file's by its name; a folder's engine with a key; else the precision the export
    chose: its INT8 model where the export kept one and measured it faster on this machine, else model.onnx."""
    if cfg.backend != "auto":
        return cfg.backend
    if not Path(cfg.path).is_dir():
        return file_format(cfg.path).backend
    if cfg.key:
        return "trt"
    int8 = export_format("onnx-int8").path(cfg.path)
    report = Path(f"{int8}.report.json")
    try:
        faster = json.loads(report.read_text()).get("faster") if int8.is_file() else None
    except (OSError, ValueError, AttributeError):
        faster = None  # no readable report: the FP32 model
    return "ort-int8" if faster == "int8" else "ort"


def compatible(old: LiveModel, new: LiveModel) -> Optional[str]:
    """Why ``new`` cannot replace ``old`` on this line, or None."""
    a, b = old.spec, new.spec
    if a.classes != b.classes or a.ok_class != b.ok_class:
        return f"classes {b.classes} (OK: {b.ok_class}) differ from the running model's {a.classes} (OK: {a.ok_class})"
    if old.runner.input_shape != new.runner.input_shape:
        return f"input {new.runner.input_shape} differs from the running model's {old.runner.input_shape}"
    return None


class ModelWatcher:
    """Looks at the model file between batches (every ``cfg.watch_s``); a changed file that stays the same over
    two looks (a copy has finished) is loaded beside the running model. Runs in its own thread (the daemon's):
    loading and warming up never stall the frame loop."""

    def __init__(self, cfg: ModelConfig, overrides: PolicyConfig, live: LiveModel,
                 on_refused: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.current = live.signature
        self.running = live
        self.on_refused = on_refused
        self._seen: Optional[Signature] = None

    def poll(self) -> Optional[LiveModel]:
        """A new, checked, warmed-up model when the file changed and settled, else None."""
        try:
            file = resolve_model_file(self.cfg.path, _backend(self.cfg), self.cfg.key)
            sig = _signature(file)
        except (OSError, LineguardError):
            return None  # mid-copy or removed: the running model stays; look again later
        if sig == self.current:
            self._seen = None
            return None
        if sig != self._seen:  # changed since the last look: wait for it to settle
            self._seen = sig
            return None
        self.current = sig  # judged once: a refused file is not retried until it changes again
        try:
            new = load_live(self.cfg, self.overrides)
        except (LineguardError, OSError) as e:
            self.on_refused(f"{file}: refused, the running model stays ({e})")
            return None
        why = compatible(self.running, new)
        if why:
            new.runner.close()
            self.on_refused(f"{file}: refused, the running model stays ({why})")
            return None
        self.running = new
        return new
