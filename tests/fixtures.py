"""Arguments for real, tiny Starlight runs in tests (MNIST-1D subsets, a few epochs)."""

from __future__ import annotations

from star_merge.data import DataArguments
from star_merge.starlight import StarlightConfig
from star_merge.population import PopulationArguments
from star_merge.starlight.pipeline import RunArguments

TINY_DATA = dict(dataset_name="mnist1d", num_samples=1000)


def tiny_arguments(output_dir: str, model_type: str = "star-mlp", **overrides):
    """(StarlightConfig, DataArguments, PopulationArguments, RunArguments) for a run of a few seconds."""
    model_config = '{"hidden_sizes": [32, 32]}' if model_type == "star-mlp" else '{"channels": [8, 8]}'
    groups = {
        "config": dict(output_dir=output_dir, num_train_epochs=3, per_device_train_batch_size=64,
                       learning_rate=3e-3, seed=0, star_ce_weight=1.0),
        "data": dict(TINY_DATA),
        "pop": dict(model_type=model_type, model_config=model_config, num_anchors=3, num_held_out=2,
                    population_epochs=4, population_learning_rate=3e-3, population_batch_size=64),
        "run": dict(bma_samples=4, eval_pairs="all"),
    }
    fields = {
        "config": StarlightConfig.__dataclass_fields__, "data": DataArguments.__dataclass_fields__,
        "pop": PopulationArguments.__dataclass_fields__, "run": RunArguments.__dataclass_fields__,
    }
    for k, v in overrides.items():
        group = next((g for g, f in fields.items() if k in f), None)
        if group is None:
            raise TypeError(f"unknown argument {k!r}")
        groups[group][k] = v
    return (StarlightConfig(**groups["config"]), DataArguments(**groups["data"]),
            PopulationArguments(**groups["pop"]), RunArguments(**groups["run"]))
