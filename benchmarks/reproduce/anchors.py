"""Barrier vs number of anchors (the paper's Fig.: 1 → 50 anchors), star-mlp or star-cnn1d on MNIST-1D.

    python benchmarks/reproduce/anchors.py --model cnn1d            # 1, 2, 5, 10, 20, 50 anchors
    python benchmarks/reproduce/anchors.py --model mlp --counts 1 10

One population (50 anchors + 5 held-out, seeded) is trained once and shared by every point; the point
with N anchors uses anchors 0..N-1. Every point is evaluated against the same held-out models, on
``--eval_pairs`` seeded anchor ↔ held-out pairs. Writes OUT/anchors.json and OUT/anchors.png.
"""

from __future__ import annotations

import os

from common import (
    CONFIGS,
    base_parser,
    ensure_population,
    extra_flags,
    is_done,
    plot_sweep,
    population_dir,
    record,
    run_points,
    summary_line,
    write_json,
)

MODELS = {"mlp": "mnist1d_mlp.yaml", "cnn1d": "mnist1d_cnn1d.yaml"}


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_out="outputs/reproduce/anchors_{model}")
    p.add_argument("--model", choices=sorted(MODELS), default="cnn1d")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    p.add_argument("--num_held_out", type=int, default=5)
    args = p.parse_args(argv)
    out = args.out.format(model=args.model)
    config = os.path.join(CONFIGS, MODELS[args.model])
    flags = {"skip_bma": "true", "eval_pairs": args.eval_pairs, "num_held_out": args.num_held_out, **extra_flags(args.set)}
    pop = population_dir(args.root, config, flags)
    counts = sorted(args.counts)
    points = [(os.path.join(out, f"anchors_{n:02d}"), {**flags, "num_anchors": n, "population_dir": pop}) for n in counts]
    if not all(is_done(d) for d, _ in points):
        ensure_population(config, flags, pop, max(counts), args.num_held_out, args.workers)
    reports = run_points(points[::-1], config, args.jobs)[::-1]  # the largest (slowest) points start first
    rows = [record(r, num_anchors=n) for n, r in zip(counts, reports)]
    write_json(os.path.join(out, "anchors.json"), {"model": args.model, "config": config, "flags": flags,
                                                    "population_dir": pop, "points": rows})
    for r in rows:
        print(summary_line(f"N={r['num_anchors']:>3}", r), flush=True)
    plot_sweep(rows, "num_anchors", "number of anchors", f"Barrier vs number of anchors: star-{args.model}, MNIST-1D",
               os.path.join(out, "anchors.png"), logx=True)
    print(f"wrote {os.path.join(out, 'anchors.json')} and anchors.png")


if __name__ == "__main__":
    main()
