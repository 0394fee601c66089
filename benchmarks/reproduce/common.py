"""Shared by the reproduction sweeps: one Starlight run per point (the recipe, resumable), records, plots.

Each point is ``recipes/star.py`` run in a subprocess into ``OUT/<point>/`` with a shared
``--population_dir`` (members are seeded and reused across points and sweeps). A point whose
``report.json`` already holds an evaluation ``summary`` is not run again, so an interrupted sweep resumes
where it stopped (an interrupted point is re-run with ``--overwrite_output_dir``; its population is kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "recipes", "star.py")
CONFIGS = os.path.join(ROOT, "recipes", "configs")
sys.path.insert(0, ROOT)


def is_done(out_dir: str) -> bool:
    """Whether OUT_DIR holds an evaluated run (report.json with a summary)."""
    try:
        with open(os.path.join(out_dir, "report.json")) as f:
            return "summary" in json.load(f)
    except (OSError, ValueError):
        return False


def run_point(out_dir: str, config: str, flags: dict, log=print) -> dict:
    """report.json of ``recipes/star.py --config CONFIG --output_dir OUT_DIR --k v ...`` (run only if missing)."""
    report_path = os.path.join(out_dir, "report.json")
    timing_path = os.path.join(os.path.dirname(os.path.abspath(out_dir)), os.path.basename(out_dir) + ".time.json")
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
        if "summary" in report:
            if os.path.isfile(timing_path):  # the wall/CPU seconds of the run that made it
                with open(timing_path) as f:
                    report.setdefault("training", {}).update(json.load(f))
            return report
    argv = [sys.executable, RECIPE, "--config", config, "--output_dir", out_dir]
    if os.path.isdir(out_dir):
        argv.append("--overwrite_output_dir")
    for k, v in flags.items():
        argv += [f"--{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    log(f"[run] {' '.join(argv[1:])}")
    started = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    log_path = os.path.join(os.path.dirname(os.path.abspath(out_dir)), os.path.basename(out_dir) + ".log")
    with open(log_path, "w") as log_file:  # beside the run (the recipe owns OUT_DIR's entries)
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # CPU time of the recipe and its children
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"point {out_dir} failed (exit {proc.returncode}; log {log_path}):\n{tail}")
    with open(report_path) as f:
        report = json.load(f)
    report.setdefault("training", {})["wall_seconds"] = round(time.time() - started, 1)
    report["training"]["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    write_json(timing_path, {k: report["training"][k] for k in ("wall_seconds", "cpu_seconds")})
    log(f"[done] {out_dir} in {time.time() - started:.0f}s")
    return report


def record(report: dict, **keys) -> dict:
    """The numbers a sweep plots: barriers (train/test, star vs ordinary), ratios, star and anchor metrics."""
    from star_merge.evaluation.verdict import judge_star

    s = report["summary"]
    out = dict(keys)
    for split in ("train", "test"):
        for group, short in (("star_vs_held_out", "star"), ("anchor_vs_held_out", "ordinary")):
            st = s[group][f"{split}_loss_barrier"]
            out[f"{short}_{split}_loss_barrier"] = st["mean"]
            out[f"{short}_{split}_loss_barrier_std"] = st["std"]
            out[f"{short}_{split}_loss_barrier_n"] = st["n"]
        out[f"{split}_loss_ratio"] = s["loss_barrier_ratio"][split]
    for k in ("star_test_accuracy", "star_test_nll", "star_train_loss", "mean_anchor_test_accuracy",
              "mean_anchor_test_nll", "mean_anchor_train_loss", "mean_held_out_test_accuracy", "mean_held_out_test_nll"):
        out[k] = s.get(k)
    ens = report.get("ensembles", {})
    for name in ("deep_ensemble", "bma"):
        if "test" in ens.get(name, {}):
            out[f"{name}_test"] = {k: ens[name]["test"][k] for k in ("accuracy", "nll", "ece")}
    out["star_is_good"] = judge_star(s).good
    out["verdict"] = judge_star(s).text
    out["train_seconds"] = report.get("training", {}).get("train_seconds")
    return out


def fmt(value, digits: int = 3) -> str:
    """A number for a printed line ('–' when it was not measured, e.g. a ratio over a zero ordinary barrier)."""
    return "–" if value is None else f"{value:.{digits}f}"


def summary_line(label: str, r: dict) -> str:
    return (f"{label}: train ratio {fmt(r['train_loss_ratio'])}, test ratio {fmt(r['test_loss_ratio'])}; "
            f"{r['verdict']}")


def write_json(path: str, payload: dict) -> None:
    from star_merge.io import atomic_write_json

    atomic_write_json(path, payload)


def plot_sweep(rows: list[dict], x: str, xlabel: str, title: str, path: str, logx: bool = False,
               categorical: bool = False) -> None:
    """Three panels: train-loss barrier, test-loss barrier (star vs ordinary ↔ held-out), star's own acc./NLL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(rows))) if categorical else [r[x] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, split in zip(axes[:2], ("train", "test")):
        for short, label, color in (("ordinary", "anchor ↔ held-out (ordinary)", "tab:red"),
                                    ("star", "star ↔ held-out", "tab:blue")):
            ys = [r[f"{short}_{split}_loss_barrier"] for r in rows]
            es = [r[f"{short}_{split}_loss_barrier_std"] or 0.0 for r in rows]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, color=color)
        for xi, r in zip(xs, rows):
            if r[f"{split}_loss_ratio"] is not None:
                ax.annotate(f"{r[f'{split}_loss_ratio']:.2f}", (xi, r[f"star_{split}_loss_barrier"]),
                            textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8, color="tab:blue")
        ax.set_title(f"{split}-loss barrier (numbers: star / ordinary)")
        ax.set_ylabel("loss barrier (nats)")
    ax = axes[2]
    ax.plot(xs, [100 * r["star_test_accuracy"] for r in rows], "o-", color="tab:blue", label="star test acc.")
    ax.plot(xs, [100 * r["mean_anchor_test_accuracy"] for r in rows], "s--", color="tab:gray", label="anchors' mean acc.")
    ax.set_ylabel("test accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["star_test_nll"] for r in rows], "o-", color="tab:orange", label="star test NLL")
    ax2.plot(xs, [r["mean_anchor_test_nll"] for r in rows], "s--", color="tab:brown", label="anchors' mean NLL")
    ax2.set_ylabel("test NLL")
    ax.set_title("the star's own test accuracy and NLL")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    for a in axes:
        a.set_xlabel(xlabel)
        if categorical:
            a.set_xticks(xs, [str(r[x]) for r in rows], fontsize=8, rotation=25, ha="right")
        elif logx:
            a.set_xscale("log")
            a.set_xticks(xs, [str(v) for v in xs])
            a.minorticks_off()
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


POPULATION_KEYS = ("model_type", "model_config", "population_epochs", "population_learning_rate",
                   "population_batch_size", "population_optimizer", "population_weight_decay", "population_seed",
                   "dataset_name", "num_samples", "dataset_seed")


def population_dir(root: str, config: str, flags: dict) -> str:
    """A population folder per distinct population recipe (members are reused only when trained alike)."""
    import hashlib

    import yaml

    with open(config) as f:
        values = {**(yaml.safe_load(f) or {}), **flags}
    if isinstance(values.get("model_config"), str):
        values["model_config"] = json.loads(values["model_config"])
    for k in ("population_epochs", "population_batch_size", "population_seed", "num_samples", "dataset_seed"):
        if values.get(k) is not None:
            values[k] = int(values[k])
    for k in ("population_learning_rate", "population_weight_decay"):
        if values.get(k) is not None:
            values[k] = float(values[k])
    key = json.dumps({k: values.get(k) for k in POPULATION_KEYS}, sort_keys=True, default=str)
    name = f"{values.get('model_type', 'model')}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    os.makedirs(os.path.join(root, "populations"), exist_ok=True)
    path = os.path.join(root, "populations", name)
    with open(os.path.join(root, "populations", name + ".json"), "w") as f:
        f.write(key)
    return path


def base_parser(description: str, default_out: str):
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=default_out, help="sweep folder (runs, JSON, PNG); re-running resumes")
    p.add_argument("--root", default="outputs/reproduce", help="shared folder of trained populations")
    p.add_argument("--eval_pairs", type=int, default=10, help="anchor <-> held-out pairs evaluated per point")
    p.add_argument("--jobs", type=int, default=1, help="points run at the same time (one process each)")
    p.add_argument("--workers", type=int, default=1, help="processes training population members")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe flags for every point (e.g. num_train_epochs=10)")
    return p


def extra_flags(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        if "=" not in item:
            raise SystemExit(f"error: --set takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _recipe_args(config: str, flags: dict):
    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.population import PopulationArguments
    from star_merge.starlight import StarlightConfig
    from star_merge.pipeline import RunArguments

    argv = ["--config", config]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments])
    (_, data_args, pop, _), _ = parser.parse(argv)
    return data_args, pop


def _train_member(job) -> str:
    """Train one population member as star_merge.population.train_population does (same seed, same files)."""
    import torch

    torch.set_num_threads(1)
    config, flags, path, member_seed = job
    from star_merge.data import load_task_dataset
    from star_merge.modeling import build_model
    from star_merge.population import member_is_complete, save_checkpoint, train_classifier

    if member_is_complete(path):
        return path
    data_args, pop = _recipe_args(config, flags)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config(num_labels=dataset["train"].features["labels"].num_classes)
    args = pop.train_args()
    device = "cuda" if torch.cuda.is_available() else None  # CUDA_VISIBLE_DEVICES="" keeps members on the CPU
    model, metrics = train_classifier(build_model(model_config, member_seed), dataset, args, member_seed, device=device,
                                      progress=False)
    save_checkpoint(model.to("cpu"), path, extra_json={**metrics, "train_args": args.__dict__}, overwrite=os.path.exists(path))
    return path


def ensure_population(config: str, flags: dict, pop_dir: str, num_anchors: int, num_held_out: int, workers: int) -> None:
    """Train the missing members of ``pop_dir`` in ``workers`` processes (the recipe then finds them complete)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from star_merge.population import HELD_OUT_SEED_OFFSET, member_is_complete

    _, pop = _recipe_args(config, flags)
    plan = [(f"anchor-{i:02d}", pop.population_seed + i) for i in range(num_anchors)]
    plan += [(f"held-out-{j:02d}", pop.population_seed + HELD_OUT_SEED_OFFSET + j) for j in range(num_held_out)]
    jobs = [(config, flags, os.path.join(pop_dir, name), seed) for name, seed in plan
            if not member_is_complete(os.path.join(pop_dir, name))]
    if not jobs:
        return
    started = time.time()
    if workers <= 1:
        for job in jobs:
            _train_member(job)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_train_member, jobs))
    print(f"[population] {len(jobs)} members of {pop_dir} in {time.time() - started:.0f}s", flush=True)


def run_points(points: list[tuple[str, dict]], config: str, jobs: int) -> list[dict]:
    """run_point for each (out_dir, flags), ``jobs`` at a time (each is its own process); reports in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, jobs)) as ex:
        return list(ex.map(lambda p: run_point(p[0], config, p[1]), points))
