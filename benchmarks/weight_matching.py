"""Our ``weight_matching`` against ``rebasin==0.0.47`` (the Starlight paper code's matcher) on one pair of MLPs.

    pip install --no-deps rebasin==0.0.47 torchview graphviz   # the `bench` extra; optional
    python benchmarks/weight_matching.py                  # star-mlp 40-2048-2048-2048-10, random inits
    python benchmarks/weight_matching.py --quick          # width 512

Both align model B (seed 1) to model A (seed 0), random initialisations (untrained). Ours runs with its
default settings (``presolve="auto"``: on this MLP, a chain of permutations, a descent on the
incoming-weighted objective first, then on the objective); ``--presolve never`` times the former default,
the plain descent, instead, and unless ``--no-plain`` one plain descent (seed 0, untimed against rebasin)
is printed for reference. Time: ours includes
building the spec; rebasin's includes its graph tracing (``PermutationCoordinateDescent(...)``) and
``rebasin()``, which permutes B in place. Objective, both ways: Σ <A, B'> over the tensors our spec
permutes, B' being B after alignment. Repetitions alternate the two matchers; the ratio is the median of
the per-round ratios. rebasin visits permutations in ``torch.randperm`` order from the global RNG, seeded
here per round.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def objective(spec, sd_a, sd_b) -> float:
    from star_merge.matching.weight_matching import unique_tensors

    return sum(float((sd_a[k].double() * sd_b[k].double()).sum()) for k in unique_tensors(spec, sd_a))


def ours(model_a, model_b, max_iter: int, seed: int, presolve: str = "auto"):
    from star_merge import apply_permutation, spec_for, weight_matching
    from star_merge.matching.weight_matching import PRESOLVE_FLAGS

    start = time.perf_counter()
    spec = spec_for(model_a)
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    kwargs = {} if presolve == "auto" else {"presolve": PRESOLVE_FLAGS[presolve]}  # "auto": the default call
    res = weight_matching(spec, sd_a, sd_b, seed=seed, max_iter=max_iter, **kwargs)
    seconds = time.perf_counter() - start
    return seconds, objective(spec, sd_a, apply_permutation(spec, res.perm, sd_b)), res.iterations


def theirs(model_a, model_b, x, max_iter: int, seed: int):
    import torch
    from rebasin import PermutationCoordinateDescent

    from star_merge import spec_for

    model_b = copy.deepcopy(model_b)
    torch.manual_seed(seed)
    start = time.perf_counter()
    pcd = PermutationCoordinateDescent(model_a, model_b, x)
    pcd.rebasin(max_iterations=max_iter)
    seconds = time.perf_counter() - start
    spec = spec_for(model_a)
    return seconds, objective(spec, model_a.state_dict(), model_b.state_dict()), model_b


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048, help="hidden width (3 hidden layers)")
    parser.add_argument("--layers", type=int, default=3, help="hidden layers")
    parser.add_argument("--rounds", type=int, default=3, help="alternating repetitions")
    parser.add_argument("--max-iter", type=int, default=100, help="sweep limit for both")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="width 512, 3 rounds")
    parser.add_argument("--pair", type=int, nargs=2, default=[0, 1], metavar=("SEED_A", "SEED_B"),
                        help="init seeds of models A and B")
    parser.add_argument("--presolve", choices=["auto", "always", "never"], default="auto",
                        help="auto: weight_matching's default call; never: the plain descent (the former default)")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip the reference run of the plain descent")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.rounds = 512, 3

    import torch

    from star_merge.models import StarMLPConfig
    from star_merge.modeling import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = StarMLPConfig(hidden_sizes=[args.width] * args.layers)
    model_a, model_b = build_model(cfg, seed=args.pair[0]).eval(), build_model(cfg, seed=args.pair[1]).eval()
    n_params = sum(p.numel() for p in model_a.parameters())
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s); star-mlp 40-"
          f"{'-'.join([str(args.width)] * args.layers)}-10 ({n_params / 1e6:.2f}M params), "
          f"random inits (seeds {args.pair[0]}, {args.pair[1]})")
    try:
        import rebasin  # noqa: F401
    except ImportError as e:
        rebasin_error = f"rebasin is not importable ({e}); pip install --no-deps rebasin==0.0.47 torchview graphviz"
    else:
        rebasin_error = None
    x = torch.randn(4, cfg.input_size)
    t_ours, t_theirs, obj_ours, obj_theirs, iters = [], [], [], [], []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: star_merge.weight_matching ...", flush=True)
        s, o, it = ours(model_a, model_b, args.max_iter, seed=r, presolve=args.presolve)
        t_ours.append(s), obj_ours.append(o), iters.append(it)
        if rebasin_error is None:
            print(f"round {r + 1}/{args.rounds}: rebasin ...", flush=True)
            try:
                s, o, permuted = theirs(model_a, model_b, x, args.max_iter, seed=r)
            except Exception as e:  # noqa: BLE001  (third-party research code: say why, keep our figures)
                rebasin_error = f"rebasin failed: {type(e).__name__}: {e}"
                continue
            t_theirs.append(s), obj_theirs.append(o)
            with torch.no_grad():  # the permuted B must compute what B computes
                drift = float((permuted(input_values=x).logits - model_b(input_values=x).logits).abs().max())
    with torch.no_grad():
        from star_merge import spec_for

        identity = objective(spec_for(model_a), model_a.state_dict(), model_b.state_dict())
    print()
    print(f"{'matcher':<24} {'seconds (median)':>17} {'objective (median)':>19} {'sweeps':>7}")
    print(f"{'(no alignment)':<24} {'':>17} {identity:>19.4f}")
    if args.plain:
        s, o, it = ours(model_a, model_b, args.max_iter, seed=0, presolve="never")
        print(f"{'star_merge plain, seed 0':<24} {s:>17.3f} {o:>19.4f} {it:>7}")
    label = "star_merge default" if args.presolve == "auto" else f"star_merge presolve {args.presolve}"
    print(f"{label:<24} {statistics.median(t_ours):>17.3f} {statistics.median(obj_ours):>19.4f} "
          f"{statistics.median(iters):>7}")
    if t_theirs:
        print(f"{'rebasin 0.0.47':<24} {statistics.median(t_theirs):>17.3f} {statistics.median(obj_theirs):>19.4f}")
        ratio = statistics.median(b / a for a, b in zip(t_ours, t_theirs))
        for r, (a, b, oa, ob) in enumerate(zip(t_ours, t_theirs, obj_ours, obj_theirs)):
            print(f"  round {r} (seed {r}): ours {a:.3f} s {oa:.4f}, rebasin {b:.3f} s {ob:.4f}: {b / a:.1f}x, "
                  f"objective {'>=' if oa >= ob else '<'} rebasin's ({oa - ob:+.4f})")
        print(f"speed-up (rebasin time / ours, median of {len(t_theirs)} paired rounds): {ratio:.1f}x; "
              f"objective ours - rebasin: {statistics.median(obj_ours) - statistics.median(obj_theirs):+.4f}; "
              f"rebasin-permuted B vs B, max |Δlogits| = {drift:.1e}")
    if rebasin_error:
        print(rebasin_error)


if __name__ == "__main__":
    main()
