"""``model.yaml``: what a model directory promises to every later stage (torch-free, Python 3.8).

Training writes it; evaluation, export and the line runners read it: the architecture to rebuild,
the classes and the OK class, the shared preprocessing, the OK/NG threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Union

import yaml
from pydantic import ValidationError, model_validator

from ..config import StrictModel
from ..files import atomic_write
from .format import DatasetError
from .preprocess import Preprocess

__all__ = ["MODEL_FILE", "SPEC_FILE", "ModelSpec"]

SPEC_FILE = "model.yaml"
MODEL_FILE = "model.safetensors"
SPEC_VERSION = 1


class ModelSpec(StrictModel):
    format: Literal["lineguard-model"] = "lineguard-model"
    version: int = SPEC_VERSION
    arch: Dict[str, Any]  # create_model(**arch) rebuilds the network
    classes: List[str]
    ok_class: str
    preprocess: Preprocess
    threshold: float = 0.5  # NG when 1 - p(OK) >= threshold
    weights: str = MODEL_FILE

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.ok_class not in self.classes:
            raise ValueError(f"ok_class '{self.ok_class}' is not one of {self.classes}")
        if self.version != SPEC_VERSION:
            raise ValueError(f"model format version {self.version}; this lineguard reads {SPEC_VERSION}")
        return self

    @property
    def ok_index(self) -> int:
        return self.classes.index(self.ok_class)

    @classmethod
    def load(cls, model_dir: Union[str, Path]) -> ModelSpec:
        path = Path(model_dir) / SPEC_FILE
        if not path.is_file():
            raise DatasetError(f"{model_dir}: not a lineguard model directory ({SPEC_FILE} missing)")
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()))
        except (ValidationError, yaml.YAMLError) as e:
            raise DatasetError(f"{path}: {e}") from None

    def save(self, model_dir: Union[str, Path]) -> None:
        atomic_write(Path(model_dir, SPEC_FILE), yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
