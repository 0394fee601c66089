"""Free merges of a run's anchors next to its star, deep ensemble and BMA (the table of docs/merging.md).

    accelerate launch recipes/star.py --output_dir /work/demo-merge        # the demo run (10 anchors, 5 held-out)
    python benchmarks/merging_demo.py /work/demo-merge                     # then this

For every method (``reference``, ``mergemany``, ``cycle``), with and without ``--repair``, runs
``star-merge merge RUN --method M [--repair] --output_dir RUN/merged-M[-repair]`` (the CLI itself, so the
seconds are the command's), plus the naive average of the unaligned anchors; scores each on the test split
(NLL, accuracy, ECE) and measures its loss barriers to the held-out models (each weight-matched to the merge,
seed i, 11 points, BatchNorm statistics recomputed at every point for BatchNorm models as everywhere in
the report — so a BatchNorm merge's barriers do not depend on ``--repair``; its own test metrics do). The
star, anchor, deep-ensemble and BMA rows are read from RUN/report.json (``star-merge evaluate``). Writes
RUN/merging.json and RUN/merging.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _score(name, model, run, data, task):
    from star_merge.evaluation.streaming import score_models

    return score_models({name: model}, data.prepared["test"], task, data.accelerator)[name].metrics()


def _barriers(model, run, data, task, num_points):
    from star_merge import spec_for
    from star_merge.evaluation.connectivity import interpolation_curves
    from star_merge.matching.align import align

    sd_m = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    spec = spec_for(model)
    rows = []
    for i, h in enumerate(run.held_out):
        held = run.load_member(h.name)
        sd_h, _ = align(spec, sd_m, held.state_dict(), "weight", seed=i)
        curves = interpolation_curves(model, sd_m, sd_h, data, num_points, task=task)
        rows.append({s: c.loss_barrier for s, c in curves.items()})
    model.load_state_dict(sd_m)
    return {s: statistics.fmean(r[s] for r in rows) for s in rows[0]}


def _naive(run, repair, data, task):
    from star_merge.batchnorm import has_batchnorm, reset_bn_stats
    from star_merge.matching.merge import average_state_dicts

    models = [run.load_member(m.name) for m in run.anchors]
    model = models[0]
    model.load_state_dict(average_state_dicts([m.state_dict() for m in models], [1 / len(models)] * len(models)))
    if repair and has_batchnorm(model):
        reset_bn_stats(model, data.bn_loader, 20, task=task)
    return model


def _reported(report):
    s = report["summary"]
    rows = {"star": (report["models"]["star"]["test"], s["star_vs_held_out"]["test_loss_barrier"]["mean"],
                     s["star_vs_held_out"]["train_loss_barrier"]["mean"]),
            "anchors (mean)": ({k: statistics.fmean(m["test"][k] for m in report["models"].values() if m["role"] == "anchor")
                                for k in ("nll", "accuracy", "ece")},
                               s["anchor_vs_held_out"]["test_loss_barrier"]["mean"],
                               s["anchor_vs_held_out"]["train_loss_barrier"]["mean"])}
    for key, label in (("deep_ensemble", "deep ensemble"), ("bma", "BMA")):
        if "test" in report["ensembles"].get(key, {}):
            rows[label] = (report["ensembles"][key]["test"], None, None)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--methods", nargs="+", default=["reference", "mergemany", "cycle"])
    parser.add_argument("--num_points", type=int, default=11)
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    from star_merge.batchnorm import has_batchnorm
    from star_merge.cli import main as cli
    from star_merge.evaluation.engine import EvalData
    from star_merge.modeling import load_checkpoint
    from star_merge.rundir import RunDirectory

    run = RunDirectory(args.run_dir)
    dataset, collate_fn = run.load_data()
    data = EvalData(dataset, Accelerator(), 512, ("train", "test"), collate_fn=collate_fn)
    task = run.task()
    table, barrier_cache = {}, {}
    for method in ["naive"] + args.methods:
        for repair in (False, True):
            name = f"merged-{method}" + ("-repair" if repair else "")
            start = time.perf_counter()
            if method == "naive":
                model, info = _naive(run, repair, data, task), {"seconds": 0.0}
            else:
                out = os.path.join(run.path, name)
                cli(["merge", run.path, "--method", method, "--output_dir", out, "--overwrite", "--no_progress",
                     *(["--repair"] if repair else [])])
                model = load_checkpoint(out)
                with open(os.path.join(out, "star_merge_merge.json")) as f:
                    info = json.load(f)
            seconds = time.perf_counter() - start
            key = (method, repair and not has_batchnorm(model))
            if key not in barrier_cache:  # BatchNorm: every point's statistics are recomputed, repair or not
                barrier_cache[key] = _barriers(model, run, data, task, args.num_points)
            table[name] = {"test": _score(name, model, run, data, task), "barrier": barrier_cache[key],
                           "seconds": seconds, "iterations": info.get("iterations"), "repair": info.get("repair")}
            print(name, json.dumps(table[name]), flush=True)
    with open(run.report_json) as f:
        reported = _reported(json.load(f))
    lines = ["| model | test NLL | test acc | test ECE | held-out test-loss barrier | held-out train-loss barrier | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, (test, bt, btr) in reported.items():
        fmt = (lambda v: "—" if v is None else f"{v:.4f}")
        lines.append(f"| {label} | {test['nll']:.4f} | {100 * test['accuracy']:.2f}% | {test['ece']:.4f} | {fmt(bt)} | {fmt(btr)} | — |")
    for name, row in table.items():
        t, b = row["test"], row["barrier"]
        lines.append(f"| {name} | {t['nll']:.4f} | {100 * t['accuracy']:.2f}% | {t['ece']:.4f} | {b['test']:.4f} | "
                     f"{b['train']:.4f} | {row['seconds']:.1f} |")
    best = min((n for n in table if not n.startswith("merged-naive")), key=lambda n: table[n]["barrier"]["test"])
    best_nll = min((n for n in table if not n.startswith("merged-naive")), key=lambda n: table[n]["test"]["nll"])
    star_test, star_barrier, _ = reported["star"]
    verdict = (f"star vs best free merge: held-out test-loss barrier {star_barrier:.4f} vs {table[best]['barrier']['test']:.4f} "
               f"({best}); test NLL {star_test['nll']:.4f} vs {table[best_nll]['test']['nll']:.4f} ({best_nll})")
    text = "\n".join(lines) + "\n\n" + verdict + "\n"
    print(text)
    with open(os.path.join(run.path, "merging.json"), "w") as f:
        json.dump({"merges": table, "verdict": verdict}, f, indent=2)
    with open(os.path.join(run.path, "merging.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
