"""Merging modulo orthogonal maps (issue 24 x 25): ``merge_models(..., symmetry="orthogonal")`` and
``star-merge merge --symmetry orthogonal``.

Three members are random elements of the orthogonal groups (and permutations) applied to one tiny model's folded
form (member 0 is the original, unfolded: the merge folds it). Merged modulo orthogonal maps they give back the
original's logits (relative 1e-4); merged modulo permutations only (negative control) they do not. The written merge
is an ordinary folded checkpoint of the family's class; ``cycle`` refuses orthogonal maps in one line.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from test_adapters import relative_error, run
from test_orthogonal import folded

from star_merge import apply_permutation, random_permutation
from star_merge.adapters.folding import is_folded
from star_merge.cli import main
from star_merge.matching.merge import MergeError, merge_models

pytestmark = pytest.mark.usefixtures("one_thread")
CASES = ("gpt_neox-causal-parallel", "llama-causal-gqa2-tied")


def _members(case_id: str):
    """(original model, its folded copy, inputs, reference outputs, output names, [3 members])."""
    model, f, inputs, ref, spec, names = folded(case_id)
    members = [model]
    for seed in (11, 12):
        m = type(f)(f.config).eval()
        m.load_state_dict(apply_permutation(spec, random_permutation(spec, seed), f.state_dict()))
        members.append(m)
    return model, f, inputs, ref, names, members


def _outputs_of(container, sd, inputs, names):
    m = type(container)(container.config).eval()
    m.load_state_dict(sd)
    return run(m, inputs, names)


@pytest.mark.parametrize("method", ["reference", "mergemany"])
@pytest.mark.parametrize("case_id", CASES)
def test_orthogonal_merge_of_transformed_copies_is_the_original(case_id, method):
    model, f, inputs, ref, names, members = _members(case_id)
    spec = folded(case_id)[4]
    for m in members[1:]:  # the members really differ from the original's folded weights
        sd, ref_sd = m.state_dict(), f.state_dict()
        assert max(relative_error(sd[k], ref_sd[k]) for k in spec.permuted_tensors) > 0.5
    merged, record = merge_models(members, method=method, symmetry="orthogonal", seed=0)
    assert record.symmetry == "orthogonal" and record.to_dict()["symmetry"] == "orthogonal"
    assert is_folded(f.config, merged)
    out = _outputs_of(f, merged, inputs, names)
    assert max(relative_error(out[k], ref[k]) for k in ref) <= 1e-4
    # negative control: modulo permutations only, the same members do not merge back
    plain, _ = merge_models(members, method=method, symmetry="permutation", seed=0)
    out = _outputs_of(f, plain, inputs, names)
    assert max(relative_error(out[k], ref[k]) for k in ref) > 0.05


def test_cycle_refuses_orthogonal_maps():
    *_, members = _members(CASES[0])
    with pytest.raises(MergeError, match="method 'cycle' merges modulo permutations only"):
        merge_models(members, method="cycle", symmetry="orthogonal")


def test_merge_command_orthogonal_writes_an_ordinary_folded_checkpoint(tmp_path):
    model, f, inputs, ref, names, members = _members(CASES[0])
    paths = []
    for i, m in enumerate(members):
        m.save_pretrained(tmp_path / f"m{i}")
        paths.append(str(tmp_path / f"m{i}"))
    out = tmp_path / "merged"
    assert main(["merge", *paths, "--method", "mergemany", "--symmetry", "orthogonal", "--output_dir", str(out),
                 "--no_progress"]) == 0
    got = T.GPTNeoXForCausalLM.from_pretrained(out).eval()
    assert is_folded(got.config, got.state_dict())
    assert max(relative_error(v, ref[k]) for k, v in run(got, inputs, names).items()) <= 1e-4
    assert json.loads((out / "star_merge_merge.json").read_text())["symmetry"] == "orthogonal"
    bad = tmp_path / "cycle"
    assert main(["merge", *paths, "--method", "cycle", "--symmetry", "orthogonal", "--output_dir", str(bad),
                 "--no_progress"]) == 2
    assert not bad.exists()
