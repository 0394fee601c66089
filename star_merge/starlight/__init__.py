"""Starlight: learning a star model linearly connected to a population of anchors (on Accelerate)."""

from .config import StarlightConfig
from .flat import FlatLayout, FlatStar
from .trainer import StarlightResult, StarlightState, StarlightTrainer, find_latest_checkpoint

__all__ = [
    "StarlightConfig",
    "StarlightTrainer",
    "StarlightResult",
    "StarlightState",
    "FlatLayout",
    "FlatStar",
    "find_latest_checkpoint",
]
