"""``model.yaml``: what a model directory promises to every later stage (torch-free, Python 3.8).

Training writes it; evaluation, export and the line runners read it: the architecture to rebuild,
the classes and the OK class, the shared preprocessing, the decision rule's settings (the OK/NG threshold,
an uncertain band around it, per-defect-class thresholds; ``lineguard.edge.verdict`` applies them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Set, Union

import yaml
from pydantic import Field, model_validator

from ..config import StrictModel, read_mapping, validated
from ..files import atomic_write
from .format import DatasetError
from .preprocess import Preprocess

__all__ = ["MAX_SIDE", "MODEL_FILE", "SPEC_FILE", "ModelSpec", "decision_error"]

SPEC_FILE = "model.yaml"
MODEL_FILE = "model.safetensors"
SPEC_VERSION = 1
MAX_SIDE = 4096  # px per side of a model input; larger sizes are typos (60000 px would need gigabytes)
MAX_SPEC_BYTES = 1 << 20  # a model.yaml is a few hundred bytes


def _side_error(what: str, size: Any) -> str:
    """Why ``size`` (an int or [height, width]) is not a usable input size, or '' when it is."""
    sides = [size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(sides, (list, tuple)) or len(sides) not in (1, 2) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in sides):
        return f"{what} must be an int or [height, width], got {size!r}"
    if not all(1 <= s <= MAX_SIDE for s in sides):
        return f"{what} {size!r} is outside 1..{MAX_SIDE} px per side"
    return ""


def _non_finite(value: Any, key: str = "", seen: Optional[Set[int]] = None) -> Optional[str]:
    """The dotted key of the first NaN or infinite number in ``value`` (shared YAML aliases visited once)."""
    seen = set() if seen is None else seen
    if isinstance(value, float):
        return None if math.isfinite(value) else key or "value"
    if id(value) in seen or not isinstance(value, (dict, list)):
        return None
    seen.add(id(value))
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        bad = _non_finite(v, f"{key}.{k}" if key else str(k), seen)
        if bad is not None:
            return bad
    return None


def decision_error(threshold: float, uncertain_band: float, class_thresholds: Dict[str, float],
                   defect_classes: Optional[List[str]] = None) -> str:
    """Why these decision settings are unusable, or '' when they are: ``threshold`` and every class threshold
    in 0..1 (NaN fails), ``uncertain_band`` finite and >= 0, class thresholds only for ``defect_classes``
    (when given)."""
    if not 0.0 <= threshold <= 1.0:
        return f"threshold must be in 0..1, got {threshold}"
    if not (math.isfinite(uncertain_band) and uncertain_band >= 0.0):
        return f"uncertain_band must be a finite number >= 0, got {uncertain_band}"
    bad = {c: p for c, p in class_thresholds.items() if not 0.0 <= p <= 1.0}
    if bad:
        return f"class_thresholds must be in 0..1, got {bad}"
    unknown = sorted(set(class_thresholds) - set(defect_classes)) if defect_classes is not None else []
    return f"class_thresholds names {unknown}, not defect classes {defect_classes}" if unknown else ""


class ModelSpec(StrictModel):
    format: Literal["lineguard-model"] = "lineguard-model"
    version: int = SPEC_VERSION
    arch: Dict[str, Any]  # create_model(**arch) rebuilds the network
    classes: List[str]
    ok_class: Optional[str] = None  # None: a defect-type model (no OK/NG decision; see ``decides_ok_ng``)
    multi_label: bool = False  # independent per-class probabilities (sigmoid); NG score = the highest defect class's
    preprocess: Preprocess
    threshold: float = 0.5  # NG when the NG score (1 - p(OK); multi-label: max defect p) >= threshold
    uncertain_band: float = 0.0  # UNCERTAIN when threshold - band <= 1 - p(OK) < threshold + band
    class_thresholds: Dict[str, float] = Field(default_factory=dict)  # defect class -> NG when its p reaches this
    weights: str = MODEL_FILE

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.ok_class is not None and self.ok_class not in self.classes:
            raise ValueError(f"ok_class '{self.ok_class}' is not one of {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique: {self.classes}")
        why = decision_error(self.threshold, self.uncertain_band, self.class_thresholds, self.defect_classes)
        if why:
            raise ValueError(why)
        bad = _non_finite(self.arch)
        if bad is not None:
            raise ValueError(f"arch.{bad} is not a finite number")
        if self.version != SPEC_VERSION:
            raise ValueError(f"model format version {self.version}; this lineguard reads {SPEC_VERSION}")
        name = self.arch.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"arch needs a model 'name' (a string), got {name!r}")
        why = _side_error("preprocess.size", list(self.preprocess.size))
        if not why and "img_size" in self.arch:
            why = _side_error("arch.img_size", self.arch["img_size"])
        if why:
            raise ValueError(why)
        chans = self.arch.get("in_chans", self.preprocess.channels)
        if chans != self.preprocess.channels or isinstance(chans, bool):
            raise ValueError(f"arch.in_chans is {chans!r} but preprocess.channels is {self.preprocess.channels}")
        n = self.arch.get("num_classes", len(self.classes))
        if n != len(self.classes) or isinstance(n, bool):
            raise ValueError(f"arch.num_classes is {n!r} but there are {len(self.classes)} classes {self.classes}")
        return self

    @property
    def ok_index(self) -> Optional[int]:
        """The OK class's index; None for a defect-type model."""
        return None if self.ok_class is None else self.classes.index(self.ok_class)

    @property
    def decides_ok_ng(self) -> bool:
        """Whether the model has an OK class: a defect-type model (trained on defective parts only) tells the
        defect's type, and its runners call every part NG (p(OK) = 0)."""
        return self.ok_class is not None

    @property
    def defect_classes(self) -> List[str]:
        """The classes but the OK class, in order."""
        return [c for c in self.classes if c != self.ok_class]

    @classmethod
    def load(cls, model_dir: Union[str, Path]) -> ModelSpec:
        path = Path(model_dir) / SPEC_FILE
        if not path.is_file():
            raise DatasetError(f"{model_dir}: not a lineguard model directory ({SPEC_FILE} missing)")
        return validated(cls, read_mapping(path, DatasetError, MAX_SPEC_BYTES), str(path), DatasetError)

    def save(self, model_dir: Union[str, Path]) -> None:
        atomic_write(Path(model_dir, SPEC_FILE), yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
