"""Barrier vs width (the paper's "wider is easier"): star-mlp with two hidden layers of width 32 → 2048, MNIST-1D.

    python benchmarks/reproduce/width.py                        # widths 32 64 128 256 512 1024 2048
    python benchmarks/reproduce/width.py --widths 32 512 --set num_train_epochs=10

Each width trains its own population (--num_anchors anchors + --num_held_out held-out, seeded, reused
on re-runs) with the demo's population recipe, then runs Starlight with the demo's settings.
Writes OUT/width.json and OUT/width.png.
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


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_out="outputs/reproduce/width")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--num_anchors", type=int, default=10)
    p.add_argument("--num_held_out", type=int, default=5)
    p.add_argument("--config", default=os.path.join(CONFIGS, "mnist1d_mlp.yaml"))
    args = p.parse_args(argv)
    base = {"skip_bma": "true", "eval_pairs": args.eval_pairs, "num_anchors": args.num_anchors,
            "num_held_out": args.num_held_out, **extra_flags(args.set)}
    widths = sorted(args.widths)
    points = []
    for w in widths:
        flags = {**base, "model_config": f'{{"hidden_sizes": [{w}, {w}]}}'}
        pop = population_dir(args.root, args.config, flags)
        points.append((os.path.join(args.out, f"width_{w:04d}"), {**flags, "population_dir": pop}))
        if not is_done(points[-1][0]):
            ensure_population(args.config, flags, pop, args.num_anchors, args.num_held_out, args.workers)
    rows = [record(r, width=w) for w, r in zip(widths, run_points(points, args.config, args.jobs))]
    write_json(os.path.join(args.out, "width.json"), {"config": args.config, "flags": base, "points": rows})
    for r in rows:
        print(summary_line(f"width {r['width']:>5}", r), flush=True)
    plot_sweep(rows, "width", "hidden width (2 layers)", "Barrier vs width: star-mlp, MNIST-1D",
               os.path.join(args.out, "width.png"), logx=True)
    print(f"wrote {os.path.join(args.out, 'width.json')} and width.png")


if __name__ == "__main__":
    main()
