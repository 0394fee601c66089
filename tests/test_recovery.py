"""Exact recovery of random permutations of every adapter's tiny test models, as initialised (no noise).

tests/test_adapters.py recovers permutations of randomised models (every weight perturbed). Here the
models keep their default initialisation, where norm weights are all one and biases often zero, and
only the parameters are matched (the trainer's case): weaker signals, in which plain coordinate
descent can stop in a local optimum; restarts must still find the copy exactly.
"""

import pytest
import torch
from test_adapters import CASES

from star_merge import apply_permutation, random_permutation, spec_for, weight_matching


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_default_init_parameters_are_recovered_exactly(case):
    torch.manual_seed(1)
    model = case.cls(case.config()).eval()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    spec = spec_for(model, **case.options).subset(params)
    for seed in (3, 4):
        perm = random_permutation(spec, seed)
        res = weight_matching(spec, params, apply_permutation(spec, perm, params), seed=seed)
        back = apply_permutation(spec, res.perm, apply_permutation(spec, perm, params))
        assert all(torch.equal(back[k], params[k]) for k in params), (case.id, seed, res.restarts)
