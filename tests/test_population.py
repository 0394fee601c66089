"""Population alignment (matching/population.py) against a loop of weight_matching, the reference."""

import pytest
import torch
import transformers as T
from transformers import AutoModelForSequenceClassification

import star_merge as sm
from star_merge.matching.population import align_rows
from star_merge.models import StarCNN1dConfig, StarMLPConfig
from star_merge.starlight.flat import FlatLayout


def population(model, n, seed):
    """Flat star + n anchors: half independent inits, half permuted noisy copies of the star."""
    layout = FlatLayout.of(model)
    spec = sm.spec_for(model).subset(layout.names)
    star = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        if i % 2:
            sd = sm.apply_permutation(spec, sm.random_permutation(spec, seed + i), star)
            sd = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        else:
            sd = {k: torch.randn(v.shape, generator=g) * v.std() for k, v in star.items()}
        rows.append(layout.flatten(sd))
    return spec, layout, layout.flatten(star), torch.stack(rows)


def tiny_models():
    torch.manual_seed(0)
    resnet = T.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 2],
                            layer_type="bottleneck", num_labels=3)
    return [
        AutoModelForSequenceClassification.from_config(StarMLPConfig(hidden_sizes=[48, 40, 32])),
        AutoModelForSequenceClassification.from_config(StarCNN1dConfig(channels=[6, 10, 12])),
        T.ResNetForImageClassification(resnet),
    ]


@pytest.mark.parametrize("solver", ["scipy", "lapjv", "auto"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_align_rows_equals_weight_matching_per_anchor(which, solver):
    model = tiny_models()[which]
    spec, layout, theta, rows = population(model, 6, seed=which)
    indices = [5, 0, 2, 3]  # a subset, out of order
    res = align_rows(spec, layout, theta, rows, indices, seeds=[10 + i for i in indices], solver=solver, batched=True,
                     chunk_elements=3 * layout.total)  # two chunks
    assert res.solved > 0
    for j, i in enumerate(indices):
        ref = sm.weight_matching(spec, layout.views(theta), layout.views(rows[i]), seed=10 + i, restarts=0,
                                 solver="scipy")
        assert res.sweeps[j] == ref.iterations
        for p in ref.perm:
            assert torch.equal(res.perms[j][p], ref.perm[p]), (i, p)


@pytest.mark.parametrize("which", [0, 2])
def test_batched_and_per_anchor_paths_agree(which):
    model = tiny_models()[which]
    spec, layout, theta, rows = population(model, 5, seed=which + 3)
    idx = list(range(5))
    one = align_rows(spec, layout, theta, rows, idx, seeds=idx, batched=True)
    two = align_rows(spec, layout, theta, rows, idx, seeds=idx, batched=False)
    assert one.sweeps == two.sweeps and one.solved == two.solved
    assert all(torch.equal(a[p], b[p]) for a, b in zip(one.perms, two.perms) for p in a)


def test_align_overlap_aligns_to_the_previous_epochs_star():
    """align_overlap: epoch e >= 2 starts from the alignment computed (in the background) against the star
    as it was at the start of epoch e-1; the final alignment is the ordinary synchronous one."""
    from fixtures import tiny_arguments

    from star_merge.data import load_task_dataset
    from star_merge.starlight import StarlightTrainer
    from star_merge.modeling import build_model

    config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=4, align_overlap=True)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]
    trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"])
    seen, applied = [], []
    real_rows, real_align = trainer._align_rows, trainer.align_anchors

    def rows(theta, *args, **kwargs):
        seen.append(theta.detach().clone())
        return real_rows(theta, *args, **kwargs)

    def align(theta, state, progress, found=None, **kwargs):
        applied.append((state.epoch, found is not None, theta.detach().clone()))
        return real_align(theta, state, progress, found=found, **kwargs)

    trainer._align_rows, trainer.align_anchors = rows, align
    result = trainer.train()
    # epoch 0 and the final alignment run synchronously; epochs 1 and 2 each start one in the background
    # (epoch 3 does not: no later epoch would apply it), which epochs 2 and 3 apply
    assert [(e, f) for e, f, _ in applied] == [(0, False), (2, True), (3, True), (4, False)]
    assert len(seen) == 1 + 2 + 1
    starts = {e: t for e, _, t in applied}
    # the background alignments saw snapshots of the stars at the start of epochs 1 and 2; the one applied
    # at epoch 2 was computed against epoch 1's star, an older one
    assert torch.equal(seen[2], starts[2]) and torch.equal(seen[3], starts[4])
    assert not torch.equal(seen[1], starts[2])
    for name, perm in result.perms.items():
        assert set(perm) == set(trainer.match_spec.perm_sizes)
