"""BMA over the star domain vs the deep ensemble at equal members: NLL / ECE / accuracy vs samples and p(t).

    python benchmarks/reproduce/bma.py outputs/reproduce/anchors_cnn1d/anchors_10 --out outputs/reproduce/bma_cnn1d
    python benchmarks/reproduce/bma.py RUN_DIR --samples 1 2 5 10 20 40 --seeds 0 1

For a finished run directory (star, anchors, anchor_permutations): the deep ensemble of its N anchors (and of
its first k anchors), and BMAs built with star_merge.bma.build_bma for every t distribution × number of
samples S × anchor choice (``random``: n drawn uniformly, as export_bma does; ``cycle``: n_s = s mod N, every
anchor equally often) × seed. BatchNorm models: statistics recomputed per sample (``per-sample``), and also
the star's own statistics for every sample (``star``). Sanity check: cycle + constant(1) at S = N must equal
the deep ensemble (t = 1 is the anchors themselves). Writes OUT/bma.json and OUT/bma.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json

DISTRIBUTIONS = ["uniform", "beta(2,2)", "constant(0.5)", "uniform(0.5,1)", "beta(2,1)"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, nargs="+", default=[1, 2, 5, 10, 20, 40])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--distributions", nargs="+", default=DISTRIBUTIONS)
    args = p.parse_args(argv)
    import torch

    from star_merge.bma import bma_predict_proba, build_bma
    from star_merge.bma.configuration_star_bma import draw_samples, parse_t_distribution
    from star_merge.data import make_dataloader
    from star_merge.batchnorm import has_batchnorm
    from star_merge.evaluation.metrics import classification_metrics
    from star_merge.rundir import RunDirectory

    rd = RunDirectory(args.run_dir)
    star = rd.load_star()
    anchors = rd.aligned_anchor_state_dicts()
    ds = rd.load_dataset()
    test = make_dataloader(ds["test"], 500)
    labels = torch.tensor(ds["test"]["labels"])
    bn = has_batchnorm(star)
    bn_loader = make_dataloader(ds["train"], 500) if bn else None
    n = len(anchors)

    def metrics(probs):
        m = classification_metrics(probs, labels)
        return {k: m[k] for k in ("accuracy", "nll", "ece", "brier")}

    member_probs = [bma_predict_proba(rd.load_member(m.name), test) for m in rd.anchors]
    ensemble = {str(k): metrics(torch.stack(member_probs[:k]).mean(0)) for k in range(1, n + 1)}
    result = {"run_dir": os.path.abspath(args.run_dir), "num_anchors": n, "batchnorm": bn,
              "star": metrics(bma_predict_proba(star, test)), "deep_ensemble": ensemble, "bma": []}
    star_sd = star.state_dict()
    bn_modes = ["per-sample", "star"] if bn else ["n/a"]
    for dist in args.distributions:
        name, params = parse_t_distribution(dist)
        for s in args.samples:
            for mode in ("random", "cycle"):
                for bn_mode in bn_modes:
                    runs = []
                    for seed in args.seeds:
                        pts = draw_samples(n, s, name, params, seed)
                        if mode == "cycle":
                            pts = [[i % n, t] for i, (_, t) in enumerate(pts)]
                        model = build_bma(star, anchors, num_samples=s, seed=seed, t_distribution=dist,
                                          bn_dataloader=bn_loader if bn_mode == "per-sample" else None, samples=pts) \
                            if bn_mode != "star" else _bma_with_star_stats(star, star_sd, anchors, s, seed, dist, pts, bn_loader)
                        runs.append(metrics(bma_predict_proba(model, test)))
                    row = {"t_distribution": dist, "samples": s, "anchors": mode, "bn_stats": bn_mode}
                    for k in runs[0]:
                        vals = [r[k] for r in runs]
                        row[k] = statistics.fmean(vals)
                        row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    result["bma"].append(row)
                    print(f"{dist:>15} S={s:>3} {mode:>6} bn={bn_mode:>10}: nll {row['nll']:.4f} ece {row['ece']:.4f} "
                          f"acc {row['accuracy']:.4f}", flush=True)
    # sanity: t = 1 at every anchor once is the deep ensemble
    check = build_bma(star, anchors, num_samples=n, samples=[[i, 1.0] for i in range(n)], bn_dataloader=bn_loader)
    result["check_t1_cycle_nll"] = metrics(bma_predict_proba(check, test))["nll"]
    result["check_ensemble_nll"] = ensemble[str(n)]["nll"]
    print(f"check: BMA t=1 over every anchor NLL {result['check_t1_cycle_nll']:.5f} vs deep ensemble "
          f"{result['check_ensemble_nll']:.5f}")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "bma.json"), result)
    plot(result, os.path.join(args.out, "bma.png"))
    print(f"wrote {os.path.join(args.out, 'bma.json')} and bma.png")


def _bma_with_star_stats(star, star_sd, anchors, s, seed, dist, pts, bn_loader):
    """A BMA whose every sample uses the star's own BatchNorm statistics (no per-sample recomputation)."""
    from star_merge.bma import build_bma

    model = build_bma(star, anchors, num_samples=s, seed=seed, t_distribution=dist, samples=pts,
                      bn_dataloader=bn_loader, bn_max_batches=1)  # statistics replaced below
    for i in range(s):
        model.bn_stats[i].fill({k: star_sd[k] for k in model.bn_buffer_names}, "the star's BatchNorm statistics")
    return model


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["num_anchors"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, key, label in zip(axes, ("nll", "ece", "accuracy"), ("test NLL", "test ECE", "test accuracy")):
        ks = sorted(int(k) for k in result["deep_ensemble"])
        ax.plot(ks, [result["deep_ensemble"][str(k)][key] for k in ks], "k.-", label="deep ensemble of k anchors")
        ax.axhline(result["deep_ensemble"][str(n)][key], color="k", ls="--",
                   lw=1, label=f"deep ensemble, all {n} anchors")
        ax.axhline(result["star"][key], color="gray", ls=":", label="star alone")
        for dist in dict.fromkeys(r["t_distribution"] for r in result["bma"]):
            for mode, style in (("cycle", "-"), ("random", ":")):
                rows = [r for r in result["bma"] if r["t_distribution"] == dist and r["anchors"] == mode
                        and r["bn_stats"] in ("per-sample", "n/a")]
                if rows:
                    ax.errorbar([r["samples"] for r in rows], [r[key] for r in rows], yerr=[r[f"{key}_std"] for r in rows],
                                ls=style, marker="o", ms=3, capsize=2, label=f"BMA t~{dist}, anchors {mode}")
        ax.set_xscale("log")
        ax.set_xlabel("members (BMA samples S / ensemble size k)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=1)
    fig.suptitle(f"BMA over the star domain vs deep ensemble: {os.path.basename(result['run_dir'])} "
                 f"({'BatchNorm: per-sample statistics' if result['batchnorm'] else 'no BatchNorm'})")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
