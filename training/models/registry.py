"""Model registry (timm style): ``@register_model`` factories, ``create_model``, configs, weights, GMACs.

    model = create_model("two_stream_lite0", num_classes=2, in_chans=1, img_size=224, weights="imagenet-lite0")
    again = create_model(**model_config(model))     # same architecture, no flags needed
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lineguard import LineguardError

from ...weights import IMAGENET_LITE0, load_backbone_weights, read_checkpoint

ImgSize = Union[int, Sequence[int]]
LITE0_BACKBONE = "tf_efficientnet_lite0"

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


class ModelError(LineguardError):
    """An unknown model name, a bad architecture setting or weights that do not fit the model."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name; it takes ``num_classes, in_chans, img_size, **options``."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model '{fn.__name__}' is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    img_size: ImgSize = 224,
    weights: Optional[Union[str, os.PathLike]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name``; ``weights``: None (random), ``"imagenet-lite0"`` (Lite0 backbones only) or a file.

    A file whose keys are exactly the model's (a lineguard checkpoint) loads into the whole model; any other
    file is read as a timm backbone checkpoint. Unknown ``kwargs`` raise ``TypeError``.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"unknown model '{name}'{hint} (models: {', '.join(list_models())})")
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    h, w = to_pair(img_size)
    model.arch = {"name": name, "num_classes": num_classes, "in_chans": in_chans,
                  "img_size": h if h == w else [h, w], **kwargs}  # fmt: skip
    if weights is not None:
        load_model_weights(model, weights)
    return model


def model_config(model: nn.Module) -> Dict[str, Any]:
    """Everything ``create_model(**config)`` needs to rebuild ``model``'s architecture."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict):
        raise ModelError(f"{type(model).__name__} was not built by create_model, so it has no config")
    return dict(arch)


def load_model_weights(model: nn.Module, weights: Union[str, os.PathLike]) -> None:
    """Load ``weights`` (see ``create_model``) into ``model`` in place."""
    if str(weights) == IMAGENET_LITE0:
        if model.backbone.model_name != LITE0_BACKBONE:
            raise ModelError(
                f"weights '{IMAGENET_LITE0}' fit only {LITE0_BACKBONE} backbones, "
                f"not {model.backbone.model_name}; use weights=None or a checkpoint file"
            )
        load_backbone_weights(model.backbone, IMAGENET_LITE0, in_chans=model.in_chans)
        return
    state = read_checkpoint(weights)
    if set(state) != set(model.state_dict()):
        load_backbone_weights(model.backbone, weights, in_chans=model.in_chans)
        return
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ModelError(f"{weights}: checkpoint does not fit this model's shapes ({detail})") from None


def count_gmacs(model: nn.Module, img_size: Optional[ImgSize] = None) -> float:
    """Multiply-accumulates (GMACs, FLOPs / 2 by ``FlopCounterMode``) of one eval forward pass at ``img_size``."""
    h, w = to_pair(img_size if img_size is not None else model.img_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, model.in_chans, h, w))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9


def to_pair(size: ImgSize) -> Tuple[int, int]:
    """``224`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(size, int):
        return size, size
    pair = tuple(int(s) for s in size)
    if len(pair) != 2:
        raise ModelError(f"img_size must be an int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]
