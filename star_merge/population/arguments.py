"""What population a run uses: given (Hub ids, local folders, a population file) or trained by the recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import UserError
from .training import TrainArguments

__all__ = ["PopulationArguments", "PopulationArgumentsError"]


class PopulationArgumentsError(UserError):
    """Population arguments that cannot work (no anchors, a model config that is not JSON)."""


@dataclass
class PopulationArguments:
    """The population: given (Hub ids, local folders, a population file) or trained by the recipe."""

    anchors: list[str] | None = field(
        default=None, metadata={"help": "Anchor models: org/name[@revision], local folders or a population file."}
    )
    held_out: list[str] | None = field(
        default=None, metadata={"help": "Held-out models for evaluation (never shown to Starlight), same forms."}
    )
    model_type: str = field(default="star-mlp", metadata={"help": "Architecture of a trained population."})
    model_config: str = field(
        default='{"hidden_sizes": [512, 512]}', metadata={"help": "JSON of config fields for a trained population."}
    )
    num_anchors: int = field(default=10, metadata={"help": "Anchors to train when --anchors is not given."})
    num_held_out: int = field(default=5, metadata={"help": "Held-out models to train when --held_out is not given."})
    population_dir: str | None = field(default=None, metadata={"help": "Where to train it (default RUN/population)."})
    population_seed: int = field(default=0, metadata={"help": "Anchor i uses seed+i, held-out j seed+1000+j."})
    population_epochs: int = field(default=20, metadata={"help": "Epochs per trained member."})
    population_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of trained members (default: per architecture, 1e-3 or 0.1)."})
    population_batch_size: int = field(default=128, metadata={"help": "Batch size of trained members."})
    population_optimizer: str | None = field(
        default=None, metadata={"help": "adamw | sgd (default: per architecture, population/defaults.py)."})
    population_weight_decay: float | None = field(
        default=None, metadata={"help": "Weight decay of trained members (default: per architecture, 0 or 5e-4)."})

    def __post_init__(self):
        from .defaults import recipe_defaults

        for name, value in recipe_defaults(self.model_type).items():  # unset fields: the architecture's recipe
            if hasattr(self, name) and getattr(self, name) is None:
                setattr(self, name, value)
        if self.num_anchors < 1:
            raise PopulationArgumentsError("num_anchors must be >= 1 (Starlight needs at least one anchor)")
        if self.num_held_out < 0:
            raise PopulationArgumentsError("num_held_out must be >= 0")
        if self.population_epochs < 1 or self.population_batch_size < 1 or not self.population_learning_rate > 0:
            raise PopulationArgumentsError(
                "population_epochs and population_batch_size must be >= 1 and population_learning_rate > 0")
        try:
            cfg = json.loads(self.model_config) if isinstance(self.model_config, str) else self.model_config
        except json.JSONDecodeError as e:
            raise PopulationArgumentsError(f"--model_config is not valid JSON ({e}); e.g. '{{\"hidden_sizes\": [512, 512]}}'") from None
        if not isinstance(cfg, dict):
            raise PopulationArgumentsError("--model_config must be a JSON object of config fields")
        self.model_config = json.dumps(cfg)
        self.train_args()  # validates the population's optimizer before any work

    def train_args(self) -> TrainArguments:
        return TrainArguments(
            num_train_epochs=self.population_epochs,
            learning_rate=self.population_learning_rate,
            per_device_train_batch_size=self.population_batch_size,
            optimizer=self.population_optimizer,
            weight_decay=self.population_weight_decay,
        )

    def build_config(self, num_labels: int | None = None, label_names: list[str] | None = None):
        """The members' config: ``--model_type`` with ``--model_config``; the head sized for the dataset
        (``num_labels``; ``label_names`` of its ClassLabel become ``id2label`` / ``label2id``) unless
        ``--model_config`` sets it."""
        from transformers import AutoConfig

        from ..models import register_builtin_models

        register_builtin_models()
        kwargs = json.loads(self.model_config)
        if label_names and "id2label" not in kwargs and kwargs.get("num_labels", len(label_names)) == len(label_names):
            kwargs.setdefault("id2label", dict(enumerate(label_names)))
            kwargs.setdefault("label2id", {name: i for i, name in enumerate(label_names)})
        if num_labels is not None:
            kwargs.setdefault("num_labels", num_labels)
        try:
            return AutoConfig.for_model(self.model_type, **kwargs)
        except (ValueError, TypeError) as e:
            raise PopulationArgumentsError(f"cannot build a {self.model_type!r} config from {kwargs}: {str(e).splitlines()[0]}") from None
