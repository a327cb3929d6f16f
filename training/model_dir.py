"""The model directory: the registry entry every later stage reads.

    model.yaml          ModelSpec: architecture, classes, preprocessing, threshold (torch-free)
    model.safetensors   weights (the EMA weights of the best val epoch)
    train.yaml          the resolved training config
    classes.yaml        the data set's class file
    metrics.json        val/test figures, history, timing
    curves.png, confusion.png, pr.png, MODEL_CARD.md
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from ..data.format import CLASSES_FILE, ClassFile
from ..data.modelspec import MODEL_FILE, SPEC_FILE, ModelSpec
from ..weights import WeightsError, load_weights, save_weights
from .models import ModelError, create_model, list_models

__all__ = ["LoadedModel", "build_model", "fit_weights", "load_model_dir", "save_model_files"]


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
    model = build_model(spec, Path(model_dir) / SPEC_FILE)
    weights = Path(model_dir) / spec.weights
    fit_weights(model, load_weights(weights), weights)
    model.eval()
    return LoadedModel(model, spec)


def _arch_reason(exc: BaseException) -> str:
    """What a factory's exception says about the arch, in the file's terms."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.search(r"unexpected keyword argument '(\w+)'", text)
    if m:
        return f"unknown key 'arch.{m.group(1)}'"
    m = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: (.+)$", text)
    if m:
        keys = ", ".join(f"'arch.{k}'" for k in re.findall(r"'(\w+)'", m.group(1)))
        return f"missing key {keys}"
    return re.sub(r"^\w+(\.\w+)*\(\) ", "", text)


def build_model(spec: ModelSpec, where: Union[str, Path]) -> torch.nn.Module:
    """The network ``spec.arch`` describes (random weights); a bad arch is a ``ModelError`` naming ``where``."""
    arch = dict(spec.arch)
    name = arch.pop("name")
    if name not in list_models():
        raise ModelError(f"{where}: arch.name '{name}' is not a model of this lineguard "
                         f"(models: {', '.join(list_models())})")
    if "weights" in arch:
        raise ModelError(f"{where}: unknown key 'arch.weights' (weights are the file named by 'weights')")
    arch.setdefault("num_classes", len(spec.classes))
    try:
        model = create_model(name, **arch)
    except ModelError as exc:
        raise ModelError(f"{where}: arch: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, OverflowError) as exc:
        raise ModelError(f"{where}: arch of '{name}' cannot be built: {_arch_reason(exc)}") from None
    pre = spec.preprocess
    got = tuple(getattr(model, "img_size", pre.size)), getattr(model, "in_chans", pre.channels)
    if got != (tuple(pre.size), pre.channels):
        raise ModelError(f"{where}: arch takes {got[0][0]}x{got[0][1]} px, {got[1]} channel(s) but preprocess "
                         f"gives {pre.size[0]}x{pre.size[1]} px, {pre.channels} channel(s)")
    return model


def fit_weights(model: torch.nn.Module, state, path: Union[str, Path]) -> None:
    """Load ``state`` (read from ``path``) into ``model`` exactly; missing, extra or misshapen tensors are a
    ``WeightsError`` naming the file and the first such key."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    shapes = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the model missing, e.g. '{missing[0]}'")
        if extra:
            parts.append(f"{len(extra)} tensor(s) the model lacks, e.g. '{extra[0]}'")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape, e.g. '{k}' {tuple(state[k].shape)} "
                         f"where the model has {tuple(target[k].shape)}")
        raise WeightsError(f"{path}: does not fit the architecture in {SPEC_FILE} ({'; '.join(parts)})")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise WeightsError(f"{path}: {len(broken)} tensor(s) hold NaN or infinite values, e.g. '{broken[0]}' "
                           "(a diverged run?)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise WeightsError(f"{path}: does not fit the architecture in {SPEC_FILE} ({detail})") from None
