"""The PyTorch reference runner: the model directory itself behind the :class:`Runner` interface.

For parity tests and ``lineguard bench --backend torch``; needs torch (never on the line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from .runners.base import OUTPUTS, Runner
from .torch2onnx import frame_model

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """``model_dir`` in eval mode on ``device`` (cpu | cuda), optionally under FP16 autocast (CUDA)."""

    backend = "torch"
    batch_range = (1, 64)

    def __init__(self, model_dir: Union[str, Path], device: str = "cpu", half: bool = False,
                 threads: Optional[int] = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model, self.spec = frame_model(model_dir)
        self.device = torch.device(device)
        self.half = half
        self.model.to(self.device)

    @torch.no_grad()
    def _infer(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        x = torch.from_numpy(frames).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            out = self.model(x)
        return {k: v.float().cpu().numpy() for k, v in zip(OUTPUTS, out)}

    def describe(self) -> Dict[str, object]:
        return {**super().describe(), "device": str(self.device), "half": self.half,
                "threads": torch.get_num_threads()}
