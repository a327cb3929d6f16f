"""The model directory: the registry entry every later stage reads.

    model.yaml          ModelSpec: architecture, classes, preprocessing, threshold (torch-free)
    model.safetensors   weights (the EMA weights of the best val epoch)
    train.yaml          the resolved training config
    classes.yaml        the data set's class file
    metrics.json        val/test figures, history, timing
    curves.png, confusion.png, pr.png, MODEL_CARD.md
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from ..data.format import CLASSES_FILE, ClassFile
from ..data.modelspec import MODEL_FILE, ModelSpec
from .models import create_model
from .weights import load_weights, save_weights

__all__ = ["LoadedModel", "load_model_dir", "save_model_files"]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    spec: ModelSpec


def save_model_files(out: Union[str, Path], model: torch.nn.Module, spec: ModelSpec, classes: ClassFile) -> None:
    """Weights, model.yaml and classes.yaml (the rest is written by the trainer)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), out / MODEL_FILE)
    spec.save(out)
    classes.save(out / CLASSES_FILE)


def load_model_dir(model_dir: Union[str, Path]) -> LoadedModel:
    """Rebuild the network from model.yaml and load its weights (eval mode)."""
    spec = ModelSpec.load(model_dir)
    model = create_model(**spec.arch)
    model.load_state_dict(load_weights(Path(model_dir) / spec.weights))
    model.eval()
    return LoadedModel(model, spec)
