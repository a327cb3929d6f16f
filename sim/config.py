"""What the simulator renders: :class:`SimulatorConfig` (``simulator.yaml`` beside a simulated data set)."""

from __future__ import annotations

from typing import List, Literal, Tuple

from pydantic import Field, field_validator

from ..config import StrictModel
from .defects import MAKERS, ScratchShape
from .scene import MATERIALS

__all__ = ["DEFECTS", "OK", "SIMULATOR_VERSION", "SURFACES", "SimulatorConfig"]

SIMULATOR_VERSION = "1"
DEFECTS: Tuple[str, ...] = tuple(MAKERS)  # scratch, stain, dent
SURFACES: Tuple[str, ...] = tuple(MATERIALS)  # brushed, anodized, glass
OK = "ok"


class SimulatorConfig(StrictModel):
    """What the simulator renders. Unknown keys are rejected."""

    size: int = Field(256, ge=64, le=2048, description="square image side in px")
    channels: Literal[1, 3] = Field(1, description="1 = gray, 3 = RGB")
    ok_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of OK parts")
    defects: List[str] = Field(default_factory=lambda: list(DEFECTS), description="defect classes drawn")
    surfaces: List[str] = Field(default_factory=lambda: list(SURFACES), description="surface kinds drawn")
    noise: float = Field(1.0, ge=0.0, le=5.0, description="sensor noise scale (0 = noise-free)")
    scratch: ScratchShape = Field(default_factory=ScratchShape, description="scratch length and direction")

    @field_validator("defects")
    @classmethod
    def _known_defects(cls, v: List[str]) -> List[str]:
        return _subset(v, DEFECTS, "defect")

    @field_validator("surfaces")
    @classmethod
    def _known_surfaces(cls, v: List[str]) -> List[str]:
        return _subset(v, SURFACES, "surface")

    @property
    def classes(self) -> List[str]:
        """The classes of a data set of this config, in index order: its defects (sorted), then OK."""
        return [*sorted(self.defects), OK]


def _subset(v: List[str], known: Tuple[str, ...], what: str) -> List[str]:
    unknown = [x for x in v if x not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}, known: {list(known)}")
    if not v or len(set(v)) != len(v):
        raise ValueError(f"{what}s must be a non-empty list without repeats, got {v}")
    return v
