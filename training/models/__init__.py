"""The model layer: registered families (``two_stream``, ``cnn``) behind ``create_model``.

Every model maps a normalised (B, in_chans, H, W) tensor to ``{"logits": (B, num_classes),
"heatmap": (B, 1, H/8, W/8)}`` and exports to ONNX opset 17 without LayerNormalization (TensorRT 8.5).
"""

from . import cnn, two_stream  # noqa: F401  (fill the registry)
from .layers import CnnStream, DefectNet, LayerNorm
from .registry import (
    ModelError,
    count_gmacs,
    create_model,
    list_models,
    load_model_weights,
    model_config,
    register_model,
)

__all__ = [
    "CnnStream",
    "DefectNet",
    "LayerNorm",
    "ModelError",
    "count_gmacs",
    "create_model",
    "list_models",
    "load_model_weights",
    "model_config",
    "register_model",
]
