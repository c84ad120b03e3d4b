"""Analysis before running: hardware presets and topology (hardware.py), the α-β collective model
(collectives.py), per-device memory (memory.py), activation recomputation (recompute.py) and
`analyze` (analyze.py), which puts them together into FLOPs, memory, communication and a modeled
step time; `extrapolate` (depth.py) reads a deep model's analysis off two shallow ones. No
framework imports."""
from . import hardware
from .analyze import Analysis, analyze
from .depth import extrapolate

__all__ = ["Analysis", "analyze", "extrapolate", "hardware"]
