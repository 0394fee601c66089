"""Orthogonal symmetry everywhere alignment is used (issue 25): ``star-merge align --symmetry orthogonal``,
``barrier``, activation matching by Procrustes, and Starlight trained in folded form (the exported star loads with
``from_pretrained`` as the family's class and matches the trainer's in-memory star)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as T
from torch import nn

from lm_fixtures import build_tokenizer, neox_config, write_corpus
from star_merge import apply_permutation, random_permutation, spec_for
from star_merge.adapters.folding import fold_model, is_folded
from star_merge.cli import main
from star_merge.groups import ORTHOGONAL, load_maps
from star_merge.matching.activation_matching import activation_matching
from star_merge.matching.align import AlignmentError, align
from star_merge.spec import PermutationSpec

BLOCK = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _neox(seed: int, vocab: int = 64) -> T.GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    model = T.GPTNeoXForCausalLM(neox_config(vocab, hidden_size=16, intermediate_size=24)).eval()
    with torch.no_grad():  # norm weights away from 1: folding does something
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def _ids(vocab: int = 64) -> torch.Tensor:
    return torch.randint(1, vocab, (2, 9), generator=torch.Generator().manual_seed(5))


def test_cli_align_orthogonal_recovers_a_transformed_copy(tmp_path):
    """B = a random element of the orthogonal groups applied to A's folded form; `star-merge align A B
    --symmetry orthogonal` writes B folded in A's folded frame: equal to fold(A) (rel 1e-4), an ordinary
    GPTNeoXForCausalLM computing B's function, with its maps (an orthogonal 'residual') in safetensors."""
    a = _neox(0)
    fa = fold_model(a)
    spec = spec_for(fa, symmetry="orthogonal")
    b = fold_model(a)
    b.load_state_dict(apply_permutation(spec, random_permutation(spec, 7), fa.state_dict()))
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    out = tmp_path / "out"
    assert main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "--output_dir", str(out),
                 "--symmetry", "orthogonal"]) == 0
    got = T.GPTNeoXForCausalLM.from_pretrained(out).eval()
    assert is_folded(got.config, got.state_dict())
    sd, ref = got.state_dict(), fa.state_dict()
    err = math.sqrt(sum(float((sd[k] - ref[k]).double().square().sum()) for k in ref))
    assert err / math.sqrt(sum(float(ref[k].double().square().sum()) for k in ref)) <= 1e-4
    with torch.no_grad():
        assert torch.allclose(got(_ids()).logits, b(_ids()).logits, rtol=1e-4, atol=1e-5)
    maps = load_maps(str(out / "star_merge_maps.safetensors"))
    assert maps["residual"].shape == (16, 16) and maps["layers.0.mlp"].dtype == torch.int64
    assert json.loads((out / "star_merge_alignment.json").read_text())["symmetry"] == "orthogonal"


def test_align_orthogonal_needs_a_folded_reference():
    with pytest.raises(AlignmentError, match="folded form"):
        align(None, _neox(0), _neox(1), symmetry="orthogonal")


def test_orthogonal_alignment_beats_permutations_on_unrelated_models():
    """The orthogonal group contains the permutations (of the mean-free kind too), so its best alignment of two
    unrelated models reaches at least the permutation optimum's inner product with A (same folded weights)."""
    fa, fb = fold_model(_neox(0)), fold_model(_neox(1))
    ref = fa.state_dict()

    def inner(sd):
        return sum(float((sd[k].double() * ref[k].double()).sum()) for k in ref)

    perm_sd, _ = align(None, fa, fb, symmetry="permutation")
    orth_sd, record = align(None, fa, fb, symmetry="orthogonal")
    assert record.to_dict()["symmetry"] == "orthogonal"
    assert inner(orth_sd) > inner(perm_sd)


class _Linear(nn.Module):
    """x -> fc1 -> fc2 without a nonlinearity: its hidden units admit any orthogonal map."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x))


def test_activation_matching_solves_an_orthogonal_group_by_procrustes():
    a = _Linear(0)
    spec = PermutationSpec.from_axes({"fc1.weight": ("h", None), "fc1.bias": ("h",), "fc2.weight": (None, "h"),
                                      "fc2.bias": (None,)}, a.state_dict(), {"h": ORTHOGONAL})
    b = _Linear(0)
    q = random_permutation(spec, 3)
    b.load_state_dict(apply_permutation(spec, q, a.state_dict()))
    data = [{"x": torch.randn(64, 6, generator=torch.Generator().manual_seed(i))} for i in range(4)]
    res = activation_matching(spec, a, b, data, sites={"h": "fc1"}, progress=False)
    assert torch.allclose(res.perm["h"], q["h"].T, atol=1e-6)  # the inverse map takes B back to A


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    from star_merge.data import DataArguments, load_task_dataset
    from star_merge.tasks import task_for

    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    tok = build_tokenizer(64, bert_template=False)
    config = neox_config(len(tok), hidden_size=16, intermediate_size=24)
    task = task_for(config)
    data = load_task_dataset(DataArguments(dataset_name=corpus, block_size=BLOCK, max_train_samples=32,
                                           max_eval_samples=8), task=task, processor=tok)
    return config, task, data


def test_starlight_orthogonal_star_loads_as_the_family_class(tmp_path, lm_data):
    """Starlight with symmetry='orthogonal' trains the star in folded form, re-aligns anchors with orthogonal maps
    (stored in safetensors) and saves a plain GPTNeoXForCausalLM equal to the in-memory star."""
    from star_merge.rundir import load_permutations, save_permutations
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    config, task, data = lm_data
    anchors = [(f"anchor-{i}", _neox(i, config.vocab_size).state_dict()) for i in range(2)]
    args = StarlightConfig(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=16,
                           learning_rate=1e-3, seed=0, symmetry="orthogonal")
    trainer = StarlightTrainer(model=config, args=args, anchors=anchors, train_dataset=data["train"], task=task)
    result = trainer.train()
    assert is_folded(result.model.config, result.model.state_dict())
    assert all(result.perms[n]["residual"].shape == (16, 16) for n, _ in anchors)
    folder = trainer.save_model(str(tmp_path / "star"))
    loaded = T.GPTNeoXForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(_ids(config.vocab_size)).logits, result.model(_ids(config.vocab_size)).logits,
                              rtol=1e-5, atol=1e-6)
    save_permutations(str(tmp_path / "perms.safetensors"), result.perms)  # the run directory's file
    stored = load_permutations(str(tmp_path / "perms.safetensors"))
    assert torch.equal(stored["anchor-0"]["residual"], result.perms["anchor-0"]["residual"].double())
    # each anchor, folded and taken through its maps, still computes the anchor's function (in the star's frame)
    spec = spec_for(result.model, symmetry="orthogonal")
    for i, (name, sd) in enumerate(anchors):
        original = _neox(i, config.vocab_size)
        moved = fold_model(original)
        moved.load_state_dict(apply_permutation(spec, result.perms[name], moved.state_dict()))
        with torch.no_grad():
            ids = _ids(config.vocab_size)
            assert torch.allclose(moved(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-5)


def test_barrier_orthogonal_is_flat_on_a_rotated_copy(lm_data):
    """measure_barrier between A and a rotated copy of A's folded form: with symmetry 'orthogonal' every point of
    the path computes A's loss (the copy is aligned back exactly); with permutations the midpoint does not (no
    permutation undoes the rotation)."""
    from star_merge.evaluation.barrier import measure_barrier

    config, task, data = lm_data
    a = _neox(0, config.vocab_size)
    with torch.no_grad():
        a.lm_head.weight.mul_(30)  # confident predictions: the loss depends on the weights
    fa = fold_model(a)
    spec = spec_for(fa, symmetry="orthogonal")
    b = fold_model(a)
    b.load_state_dict(apply_permutation(spec, random_permutation(spec, 1), fa.state_dict()))
    small = {"train": data["train"].select(range(8)), "test": data["test"].select(range(8))}
    kw = dict(num_points=3, splits=("test",), batch_size=8, progress=False, task=task)
    ortho = measure_barrier(a, b, small, symmetry="orthogonal", **kw)
    perm = measure_barrier(a, b, small, symmetry="permutation", **kw)
    assert ortho.alignment["symmetry"] == "orthogonal"
    losses = ortho.curves["test"].losses  # every point of the path is A's function
    assert max(abs(x - losses[0]) for x in losses) < 1e-5 * losses[0]
    assert abs(perm.curves["test"].losses[1] - losses[0]) > 1e-3 * losses[0]
