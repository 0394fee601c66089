"""Arguments for real, tiny Starlight runs in tests (MNIST-1D subsets, a few epochs)."""

from __future__ import annotations

from star_merge.data import DataArguments
from star_merge.starlight import StarlightConfig
from star_merge.population import PopulationArguments
from star_merge.pipeline import RunArguments
from star_merge.modeling import build_model  # noqa: F401  (re-exported for the tests)
from star_merge.population.training import save_checkpoint  # noqa: F401

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


# ---------------------------------------------------------------------- building and crashing trainers
# Tests written against the Starlight trainer build it through these helpers only, so a change of the
# trainer's constructor or loop structure is one edit here.
def make_trainer(config, model_config, anchors, dataset):
    """A StarlightTrainer of ``model_config``'s architecture for ``anchors`` ((name, state dict) pairs) on
    ``dataset["train"]`` (``dataset``: a DatasetDict)."""
    from star_merge.starlight import StarlightTrainer

    return StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"])


def train_star(config, model_config, anchors, dataset):
    """Train a star; returns the StarlightResult (``model``, ``perms``, ``history``)."""
    return make_trainer(config, model_config, anchors, dataset).train()


class SimulatedCrash(KeyboardInterrupt):
    """Raised by :func:`crash_before_batch` (a KeyboardInterrupt, like a user's Ctrl-C)."""


def crash_before_batch(monkeypatch, epoch: int, batch: int) -> None:
    """Make training die just before micro-batch ``batch`` of ``epoch`` (0-based, counted within the epoch).

    The trainer draws one (anchor, t) per micro-batch from ``sample_anchor_and_t(epoch, batch, rank)``; the
    crash is raised there, so everything up to the previous micro-batch (and its checkpoints) has happened.
    """
    from star_merge.starlight import StarlightTrainer

    original = StarlightTrainer.sample_anchor_and_t

    def crashing(self, e, b, rank):
        if (e, b) == (epoch, batch):
            raise SimulatedCrash(f"simulated crash before batch {b} of epoch {e}")
        return original(self, e, b, rank)

    monkeypatch.setattr(StarlightTrainer, "sample_anchor_and_t", crashing)


def recompute_bn_statistics(model, dataloader):
    """BatchNorm running statistics recomputed by hand: equal-weight averages of every batch's statistics.

    Written independently of ``star_merge.evaluation.reset_bn_stats`` (a reference for tests): the
    model runs in train mode with ``momentum=None`` (cumulative average) after the statistics are zeroed.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.num_batches_tracked.zero_()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for batch in dataloader:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    for bn, m in zip(bns, saved):
        bn.momentum = m
    return model.eval()


def permuted_copies(model, seeds):
    """``model``'s spec and flat layout, its flat weights θ, and one row per seed: θ's copy under the seeded
    random permutation (what the trainer's re-alignment sees when the anchors are permuted copies of the star)."""
    import torch

    import star_merge as sm
    from star_merge.starlight.flat import FlatLayout

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    spec = sm.spec_for(model).subset(params)
    layout = FlatLayout.of(model)
    rows = torch.stack([layout.flatten(sm.apply_permutation(spec, sm.random_permutation(spec, s), params))
                        for s in seeds])
    return spec, layout, layout.flatten(params), rows, params
