"""Weight matching's settings side by side (presolve, visiting order, solver) on every test pair: which is fastest at an objective at least as high.

    python benchmarks/matching_defaults.py                      # adapters' test models, built-ins, star-mlp 3x512
    python benchmarks/matching_defaults.py --population outputs/mnist1d_cnn1d_demo/population   # + trained pairs
    python benchmarks/matching_defaults.py --quick              # five adapter cases (and the rest)

Pairs: every pair of ``benchmarks/matching_identity.py`` (each adapter test model as a permuted noisy copy and
against an unrelated random init; the built-in MLP / cnn1d / ResNet of tests/test_population.py against a random
init), star-mlp 40-512-512-512-10 and the demo's star-cnn1d [32, 64, 64] random inits (seeds 0/1 and 2/3), and
with ``--population`` anchor 0 of a trained population against each other member (the trainer's first,
cold alignment). Each setting runs once per pair, the settings interleaved, one thread; time is the
``weight_matching`` call. Per setting: total and median time ratio against the former default
(``presolve=False``, random order, auto solver), and on how many pairs its objective is higher / lower.
Rows group the pairs: ``chain`` (untrained pairs whose permutations form a chain, :func:`is_chain`: MLP, plain
CNN), ``trained`` (the ``--population`` pairs), ``other`` (residual streams: transformers, ResNets).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SETTINGS = {
    "former default": {"presolve": False},
    "presolve auto": {"presolve": "auto"},
    "presolve on": {"presolve": True},
    "colored": {"presolve": False, "order": "colored"},
    "colored+presolve": {"presolve": True, "order": "colored"},
    "scipy": {"presolve": False, "solver": "scipy"},
    "lapjv": {"presolve": False, "solver": "lapjv"},
}
BASE = "former default"


def _extra_pairs(population: str | None):
    import star_merge as sm
    from star_merge.modeling import build_model
    from star_merge.models import StarCNN1dConfig, StarMLPConfig

    for name, cfg in (("star-mlp 3x512", StarMLPConfig(hidden_sizes=[512] * 3)),
                      ("star-cnn1d 32-64-64", StarCNN1dConfig(channels=[32, 64, 64]))):
        for a, b in ((0, 1), (2, 3)):
            ma, mb = build_model(cfg, seed=a), build_model(cfg, seed=b)
            yield f"{name}/random{a}{b}", sm.spec_for(ma), ma.state_dict(), mb.state_dict()
    if population:
        from star_merge.modeling import load_checkpoint

        members = sorted(d for d in os.listdir(population) if os.path.isdir(os.path.join(population, d)))
        models = [load_checkpoint(os.path.join(population, d)) for d in members]
        spec = sm.spec_for(models[0])
        sds = [{k: v.detach() for k, v in m.state_dict().items()} for m in models]
        for j in range(1, len(sds)):
            yield f"trained/{members[0]}~{members[j]}", spec, sds[0], sds[j]


def measure(pairs, settings) -> list[dict]:
    import star_merge as sm
    from star_merge.matching.terms import neighbours
    from star_merge.matching.weight_matching import is_chain

    rows = []
    for name, spec, a, b in pairs:
        chain = is_chain(neighbours(spec, spec.perm_to_axes))
        row = {"pair": name, "chain": chain, "group": "trained" if name.startswith("trained/") else
               ("chain" if chain else "other")}
        for label, opts in settings.items():
            start = time.perf_counter()
            r = sm.weight_matching(spec, a, b, **opts)
            row[label] = (time.perf_counter() - start, r.objective, r.iterations)
        rows.append(row)
        cells = "  ".join(f"{label} {s * 1e3:7.1f} ms {o:.6g}" for label, (s, o, _) in
                          ((k, row[k]) for k in settings))
        print(f"{name:<48} {'chain' if row['chain'] else '     '}  {cells}", flush=True)
    return rows


def summarise(rows, settings) -> None:
    print()
    print(f"{'group':<7} {'setting':<18} {'pairs':>5} {'total s':>8} {'x former':>8} {'median x':>8} "
          f"{'higher':>6} {'lower':>6} {'mean Δobj %':>11} {'min Δobj %':>10}")
    for group in ("chain", "trained", "other"):
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            continue
        base_total = sum(r[BASE][0] for r in sel)
        for label in settings:
            total = sum(r[label][0] for r in sel)
            ratios = [r[label][0] / r[BASE][0] for r in sel]
            rel = [100 * (r[label][1] - r[BASE][1]) / abs(r[BASE][1]) for r in sel]
            tol = [1e-7 * abs(r[BASE][1]) for r in sel]
            higher = sum(r[label][1] > r[BASE][1] + t for r, t in zip(sel, tol))
            lower = sum(r[label][1] < r[BASE][1] - t for r, t in zip(sel, tol))
            print(f"{group:<7} {label:<18} {len(sel):>5} {total:>8.2f} {total / base_total:>8.2f} "
                  f"{statistics.median(ratios):>8.2f} {higher:>6} {lower:>6} {statistics.mean(rel):>+11.3f} "
                  f"{min(rel):>+10.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="five of the adapter cases (matching_identity's --quick)")
    ap.add_argument("--population", help="a population folder (members as checkpoints): anchor 0 vs each other")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from matching_identity import _pairs

    settings = {k: SETTINGS[k] for k in dict.fromkeys([BASE, *args.settings])}
    pairs = list(_pairs(args.quick)) + list(_extra_pairs(args.population))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {len(pairs)} pairs; settings: "
          + "; ".join(f"{k} {v}" for k, v in settings.items()))
    summarise(measure(pairs, settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
