"""The population stage: ordinary training of anchors and held-out models (no Starlight involved).

:class:`PopulationArguments` say which population a run uses; :func:`train_population` trains (or reuses) the
members with :func:`train_classifier`, one seed each, as HF checkpoints.
"""

from .arguments import PopulationArguments, PopulationArgumentsError
from .members import HELD_OUT_SEED_OFFSET, member_is_complete, train_population
from .training import TrainArguments, make_optimizer, make_scheduler, save_checkpoint, train_classifier

__all__ = [
    "HELD_OUT_SEED_OFFSET",
    "PopulationArguments",
    "PopulationArgumentsError",
    "TrainArguments",
    "make_optimizer",
    "make_scheduler",
    "member_is_complete",
    "save_checkpoint",
    "train_classifier",
    "train_population",
]
