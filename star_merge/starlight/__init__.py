"""Starlight: learning a star model linearly connected to a population of anchors (on Accelerate)."""

from .checkpoint import StarlightState, find_latest_checkpoint
from .config import StarlightConfig
from .flat import FlatLayout, FlatStar
from .trainer import StarlightResult, StarlightTrainer

__all__ = [
    "StarlightConfig",
    "StarlightTrainer",
    "StarlightResult",
    "StarlightState",
    "FlatLayout",
    "FlatStar",
    "find_latest_checkpoint",
]
