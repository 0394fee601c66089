"""Record weight matching's results on a fixed set of problems, to compare two versions of the code bit for bit.

    PYTHONPATH=<checkout> python benchmarks/matching_identity.py --out a.json [--quick] [--old-defaults]
    python benchmarks/matching_identity.py --compare a.json b.json

Problems: the adapters' tiny test models (tests/test_adapters.py CASES: Llama, GPT-2, BERT, ViT, ResNet, ...)
and the built-in MLP / cnn1d / ResNet of tests/test_population.py, each as a permuted noisy copy and as two
unrelated random inits; options: the defaults, presolve, the colored order, solvers; plus align_rows
batched and per anchor. Each record keeps a hash of every permutation, the objective's float repr, the
sweeps and restarts. Uses only public entry points, so it runs on any version of the package.
``--old-defaults`` passes ``presolve=False`` to every call that does not set it (the default before
``presolve="auto"``; accepted by every ``weight_matching`` that has presolve, and passed to ``align_rows`` where it
takes it), so a version with the new default can be
compared bit for bit with one before it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys


def _digest(perm) -> str:
    h = hashlib.sha256()
    for p in sorted(perm):
        h.update(p.encode() + perm[p].cpu().numpy().astype("int64").tobytes())
    return h.hexdigest()[:16]


def _pairs(quick: bool):
    import torch

    import star_merge as sm
    sys.path.insert(0, "tests")
    import test_adapters as ta
    from test_population import tiny_models

    ids = [c.id for c in ta.CASES]
    if quick:
        ids = ["llama-causal-gqa2-tied", "gpt2-lm-tied", "bert-seqcls", "vit-imgcls", "resnet-basic-imgcls"]
    for cid in ids:
        p = ta.prepared(cid)
        sd = p.state_dict
        g = torch.Generator().manual_seed(1)
        noisy = sm.apply_permutation(p.spec, sm.random_permutation(p.spec, 3), sd)
        noisy = {k: (v + 0.2 * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype)
                 if v.is_floating_point() and v.numel() > 1 else v for k, v in noisy.items()}
        other = {k: (torch.randn(v.shape, generator=g) * v.float().std()).to(v.dtype)
                 if v.is_floating_point() and v.numel() > 1 else v for k, v in sd.items()}
        yield f"{cid}/copy", p.spec, sd, noisy
        yield f"{cid}/random", p.spec, sd, other
    for i, model in enumerate(tiny_models()):
        spec = sm.spec_for(model)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(2)
        other = {k: (torch.randn(v.shape, generator=g) * v.float().std()) if v.is_floating_point() and v.numel() > 1
                 else v for k, v in sd.items()}
        yield f"builtin{i}/random", spec, sd, other


OPTIONS = {
    "default": {},
    "presolve": {"presolve": True},
    "colored": {"order": "colored"},
    "scipy": {"solver": "scipy"},
    "norestart-seed3": {"restarts": 0, "seed": 3},
}


def record(quick: bool, old_defaults: bool = False) -> dict:
    import torch

    import star_merge as sm
    from star_merge.matching.population import align_rows
    sys.path.insert(0, "tests")
    from test_population import population, tiny_models

    torch.set_num_threads(1)
    out = {}
    for name, spec, a, b in _pairs(quick):
        for oname, opts in OPTIONS.items():
            if quick and oname not in ("default", "presolve", "colored"):
                continue
            counts: dict = {}
            r = sm.weight_matching(spec, a, b, counts=counts, **{**({"presolve": False} if old_defaults else {}),
                                                                  **opts})
            out[f"{name}/{oname}"] = [_digest(r.perm), repr(r.objective), r.iterations, r.restarts,
                                      sorted(counts.items())]
    import inspect

    rows_extra = {"presolve": False} if old_defaults and "presolve" in inspect.signature(align_rows).parameters else {}
    for i, model in enumerate(tiny_models()):
        spec, layout, theta, rows = population(model, 4, seed=5)
        for batched in (False, True):
            for order in ("random", "colored"):
                res = align_rows(spec, layout, theta, rows, [0, 1, 2, 3], [7, 8, 9, 10], batched=batched,
                                 order=order, solver="scipy", **rows_extra)
                out[f"align_rows{i}/batched={batched}/{order}"] = [[_digest(p) for p in res.perms], res.sweeps,
                                                                   res.solved, res.skipped, res.groups]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", nargs=2)
    ap.add_argument("--old-defaults", action="store_true", help="presolve=False wherever a call does not set it")
    args = ap.parse_args(argv)
    if args.compare:
        x, y = (json.load(open(f)) for f in args.compare)
        diff = [k for k in x if x[k] != y.get(k)]
        for k in diff:
            print(f"DIFF {k}: {x[k]} != {y.get(k)}")
        print(f"{len(x) - len(diff)}/{len(x)} records identical")
        return 1 if diff else 0
    res = record(args.quick, args.old_defaults)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=0)
    print(f"{len(res)} records -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
