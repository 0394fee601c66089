"""Named Starlight settings × numbers of anchors on one shared population (candidate search, in parallel).

    python benchmarks/reproduce/variants.py --config recipes/configs/mnist1d_cnn1d.yaml --counts 10 50 \
        --variant "beta2_e60 t_sampling=beta t_beta=2 num_train_epochs=60" \
        --variant "beta4_e60 t_sampling=beta t_beta=4 num_train_epochs=60" --jobs 4 --workers 8

Each ``--variant`` is a name followed by recipe flags (KEY=VALUE) on top of the config and ``--set``.
The population (max(counts) anchors + --num_held_out held-out, seeded) is trained once, shared by every
point; the point with N anchors uses anchors 0..N-1 and the same held-out models. ``--bma`` also exports
and evaluates the BMA (the demo does). Each point records its wall and CPU seconds (the recipe process
and its children). Writes OUT/variants.json and OUT/variants.png; re-running resumes. ``--population_only``
trains the population and stops (several sweeps can then share it at once); ``--collect`` runs nothing and
writes the JSON/PNG of the finished points (after an interrupted or time-limited sweep).
"""

from __future__ import annotations

import os

from common import (
    CONFIGS,
    base_parser,
    ensure_population,
    extra_flags,
    fmt,
    is_done,
    plot_sweep,
    population_dir,
    record,
    run_points,
    write_json,
)


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name k=v k=v"`` → (name, {k: v}); a one-line error for anything else."""
    parts = text.split()
    if not parts or "=" in parts[0]:
        raise SystemExit(f"error: --variant takes 'NAME KEY=VALUE ...' (a name first), got {text!r}")
    return parts[0], extra_flags(parts[1:])


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_out="outputs/reproduce/variants")
    p.add_argument("--config", default=os.path.join(CONFIGS, "mnist1d_cnn1d.yaml"))
    p.add_argument("--variant", action="append", required=True, metavar="'NAME KEY=VALUE ...'")
    p.add_argument("--counts", type=int, nargs="+", default=[10], help="numbers of anchors")
    p.add_argument("--num_held_out", type=int, default=5)
    p.add_argument("--bma", action="store_true", help="export and evaluate the BMA at every point")
    p.add_argument("--population_only", action="store_true", help="train the population, run no point")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: write the JSON/PNG of the points already finished (others are left out)")
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: variant names must differ, got {names}; rename the repeated one")
    base = {"eval_pairs": args.eval_pairs, "num_held_out": args.num_held_out, **extra_flags(args.set)}
    if not args.bma:
        base["skip_bma"] = "true"
    pop = population_dir(args.root, args.config, base)
    counts = sorted(args.counts)
    points, keys = [], []
    for name, flags in variants:  # the largest (slowest) points first
        for n in counts[::-1]:
            points.append((os.path.join(args.out, f"{name}_n{n:02d}"),
                           {**base, **flags, "num_anchors": n, "population_dir": pop}))
            keys.append({"variant": name, "num_anchors": n, **flags})
    if args.collect:
        kept = [i for i, (d, _) in enumerate(points) if is_done(d)]
        if not kept:
            raise SystemExit(f"error: no finished point under {args.out}; run without --collect first")
        points, keys = [points[i] for i in kept], [keys[i] for i in kept]
    elif args.population_only or not all(is_done(d) for d, _ in points):
        ensure_population(args.config, base, pop, max(counts), args.num_held_out, args.workers)
        if args.population_only:
            return
    reports = run_points(points, args.config, args.jobs)
    rows = []
    for key, rep in zip(keys, reports):
        r = record(rep, **key, label=f"{key['variant']} N={key['num_anchors']}")
        for k in ("wall_seconds", "cpu_seconds"):
            r[k] = rep.get("training", {}).get(k)
        rows.append(r)
    write_json(os.path.join(args.out, "variants.json"), {"config": args.config, "flags": base, "population_dir": pop,
                                                          "points": rows})
    print(f"{'point':<28} {'train r':>7} {'test r':>7} {'star tr':>7} {'ord tr':>7} {'acc':>6} {'anc acc':>7} "
          f"{'nll':>6} {'anc nll':>7} {'wall':>6} {'cpu':>6} good")
    for r in rows:
        print(f"{r['label']:<28} {fmt(r['train_loss_ratio']):>7} {fmt(r['test_loss_ratio']):>7} "
              f"{fmt(r['star_train_loss_barrier']):>7} {fmt(r['ordinary_train_loss_barrier']):>7} "
              f"{100 * r['star_test_accuracy']:6.2f} {100 * r['mean_anchor_test_accuracy']:7.2f} "
              f"{r['star_test_nll']:6.3f} {r['mean_anchor_test_nll']:7.3f} {fmt(r['wall_seconds'], 0):>6} "
              f"{fmt(r['cpu_seconds'], 0):>6} {r['star_is_good']}", flush=True)
    plot_sweep(rows, "label", "setting, number of anchors", f"Starlight settings: {os.path.basename(args.config)}",
               os.path.join(args.out, "variants.png"), categorical=True)
    print(f"wrote {os.path.join(args.out, 'variants.json')} and variants.png")


if __name__ == "__main__":
    main()
