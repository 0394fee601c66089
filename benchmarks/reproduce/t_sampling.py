"""Starlight's p(t) and "star + CE": uniform, Beta(2,2), constant 0.5, and uniform with μ = 1, on one population.

    python benchmarks/reproduce/t_sampling.py                   # the MLP demo's population
    python benchmarks/reproduce/t_sampling.py --config recipes/configs/mnist1d_cnn1d.yaml --out outputs/reproduce/t_cnn1d

Every variant starts from the config's settings and changes only p(t) (and μ for star + CE).
Writes OUT/t_sampling.json and OUT/t_sampling.png.
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

VARIANTS = {
    "uniform": {"t_sampling": "uniform", "star_ce_weight": 0.0},
    "beta(2,2)": {"t_sampling": "beta", "t_beta": 2.0, "star_ce_weight": 0.0},
    "constant 0.5": {"t_sampling": "constant", "t_constant": 0.5, "star_ce_weight": 0.0},
    "uniform + CE (μ=1)": {"t_sampling": "uniform", "star_ce_weight": 1.0},
}


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_out="outputs/reproduce/t_sampling")
    p.add_argument("--config", default=os.path.join(CONFIGS, "mnist1d_mlp.yaml"))
    args = p.parse_args(argv)
    import yaml

    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    base = {"skip_bma": "true", "eval_pairs": args.eval_pairs, **extra_flags(args.set)}
    pop = population_dir(args.root, args.config, base)
    names = list(VARIANTS)
    points = [(os.path.join(args.out, f"t_{i}"), {**base, **VARIANTS[n], "population_dir": pop}) for i, n in enumerate(names)]
    if not all(is_done(d) for d, _ in points):
        ensure_population(args.config, base, pop, int(base.get("num_anchors", cfg.get("num_anchors", 10))),
                          int(base.get("num_held_out", cfg.get("num_held_out", 5))), args.workers)
    rows = [record(r, variant=n, **VARIANTS[n]) for n, r in zip(names, run_points(points, args.config, args.jobs))]
    write_json(os.path.join(args.out, "t_sampling.json"), {"config": args.config, "flags": base, "points": rows})
    for r in rows:
        print(summary_line(f"{r['variant']:>20}", r), flush=True)
    plot_sweep(rows, "variant", "p(t) / objective", f"p(t) and star + CE: {os.path.basename(args.config)}",
               os.path.join(args.out, "t_sampling.png"), categorical=True)
    print(f"wrote {os.path.join(args.out, 't_sampling.json')} and t_sampling.png")


if __name__ == "__main__":
    main()
