"""The procedural line simulator: 3C product surfaces seen by a line camera, with exact defect masks.

It makes the embedded default data set (``lineguard data simulate``) and is the line's virtual camera:
torch-free, Python 3.8, and a part is a pure function of (config, seed, index).

    part = render_part(SimulatorConfig(), seed=0, index=17)      # Part(image, mask, label), no disk
    ds = simulate_dataset("data/sim", n=2000, seed=0)            # a lineguard data set

Modules: ``config`` (:class:`SimulatorConfig`), ``scene`` (the product, its lighting and background),
``defects`` (scratch, stain, dent), ``sensor`` (noise and quantisation), ``render`` (one part), ``dataset``
(a data set folder), ``cli`` (``lineguard data simulate``).
"""

from .config import DEFECTS, OK, SIMULATOR_VERSION, SURFACES, SimulatorConfig
from .dataset import simulate_dataset
from .render import Part, render_part, render_with_reference

__all__ = ["DEFECTS", "OK", "SIMULATOR_VERSION", "SURFACES", "Part", "SimulatorConfig", "render_part",
           "render_with_reference", "simulate_dataset"]
