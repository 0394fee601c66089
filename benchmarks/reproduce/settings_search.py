"""Demo settings search: population recipes (regularised anchors) × Starlight settings, judged by the verdict.

    python benchmarks/reproduce/settings_search.py --jobs 8 --workers 8
    python benchmarks/reproduce/settings_search.py --populations wd0.1_e20 --starlight anchor_ce1

A good demo: star test NLL ≤ anchors' mean, star test accuracy ≥ anchors' mean, train- and test-loss
barrier ratios ≤ 0.5. Writes OUT/settings.json (every combination, its wall time) and prints a table.
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
    population_dir,
    record,
    run_points,
    write_json,
)

POPULATIONS = {  # population recipes on top of the config (AdamW, lr 1e-3, batch 128)
    "config": {},
    "wd0.1_e20": {"population_epochs": 20, "population_weight_decay": 0.1},
    "wd1_e20": {"population_epochs": 20, "population_weight_decay": 1.0},
    "wd0.1_e10": {"population_epochs": 10, "population_weight_decay": 0.1},
    "wd0_e60": {"population_epochs": 60, "population_weight_decay": 0.0},
}
STARLIGHT = {  # Starlight settings on top of the config
    "anchor_ce0": {"init": "anchor", "star_ce_weight": 0.0, "num_train_epochs": 20},
    "anchor_ce1": {"init": "anchor", "star_ce_weight": 1.0, "num_train_epochs": 20},
    "random_ce1": {"init": "random", "star_ce_weight": 1.0, "num_train_epochs": 20},
    "random_ce1_wd0.1": {"init": "random", "star_ce_weight": 1.0, "num_train_epochs": 20, "weight_decay": 0.1},
}


def good_demo(r: dict) -> bool:
    ratios = (r["train_loss_ratio"], r["test_loss_ratio"])
    return (r["star_test_nll"] <= r["mean_anchor_test_nll"] and r["star_test_accuracy"] >= r["mean_anchor_test_accuracy"]
            and None not in ratios and max(ratios) <= 0.5)


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], default_out="outputs/reproduce/settings")
    p.add_argument("--config", default=os.path.join(CONFIGS, "mnist1d_mlp.yaml"))
    p.add_argument("--populations", nargs="+", default=list(POPULATIONS), choices=list(POPULATIONS))
    p.add_argument("--starlight", nargs="+", default=list(STARLIGHT), choices=list(STARLIGHT))
    args = p.parse_args(argv)
    base = {"skip_bma": "true", "eval_pairs": args.eval_pairs, **extra_flags(args.set)}
    points, names = [], []
    for pn in args.populations:
        flags = {**base, **POPULATIONS[pn]}
        pop = population_dir(args.root, args.config, flags)
        for sn in args.starlight:
            points.append((os.path.join(args.out, f"{pn}__{sn}"), {**flags, **STARLIGHT[sn], "population_dir": pop}))
            names.append((pn, sn))
        if not all(is_done(d) for d, _ in points[-len(args.starlight):]):
            ensure_population(args.config, flags, pop, int(flags.get("num_anchors", 10)),
                              int(flags.get("num_held_out", 5)), args.workers)
    reports = run_points(points, args.config, args.jobs)
    rows = []
    for (pn, sn), rep in zip(names, reports):
        r = record(rep, population=pn, starlight=sn, **POPULATIONS[pn], **STARLIGHT[sn])
        r["good_demo"] = good_demo(r)
        r["wall_seconds"] = rep.get("training", {}).get("wall_seconds")
        rows.append(r)
    write_json(os.path.join(args.out, "settings.json"), {"config": args.config, "flags": base, "points": rows})
    print(f"{'population':<12} {'starlight':<18} {'train r':>7} {'test r':>7} {'acc':>6} {'anc acc':>7} {'nll':>6} "
          f"{'anc nll':>7} good")
    for r in rows:
        print(f"{r['population']:<12} {r['starlight']:<18} {fmt(r['train_loss_ratio']):>7} {fmt(r['test_loss_ratio']):>7} "
              f"{100 * r['star_test_accuracy']:6.2f} {100 * r['mean_anchor_test_accuracy']:7.2f} {r['star_test_nll']:6.3f} "
              f"{r['mean_anchor_test_nll']:7.3f} {r['good_demo']}")


if __name__ == "__main__":
    main()
