"""Importers from public data set layouts into the lineguard format, one module per layout."""

from . import imagefolder, magnetic_tile, mvtec, voc, yolo  # noqa: F401  (each registers itself)
from .base import IMPORTERS, ImportReport, detect_format, import_dataset

__all__ = ["IMPORTERS", "ImportReport", "detect_format", "import_dataset"]
