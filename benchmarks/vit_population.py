"""A star of a small ViT population, modulo permutations vs modulo orthogonal maps (issue 25), side by side.

    python benchmarks/vit_population.py --symmetries permutation,orthogonal     # CPU, a few minutes

Every member is a ViTForImageClassification (LayerNorm, pre-LN; hidden 32, 2 layers, 2 heads, 2x2 patches) trained
from its own seed on the built-in ``digits`` task (scikit-learn's 8x8 handwritten digits, 1 438 train / 359 test
images). Starlight (``recipes/star.py``) then learns a star from the anchors once per symmetry, on the same
population, and the run is evaluated: test CE / accuracy barriers (star<->held-out, anchor<->held-out,
star<->anchor, after weight matching with that symmetry), the star's test accuracy, the mean time of aligning one
anchor to one held-out model. With ``orthogonal`` the star is trained in folded form (norm weights 1) and the
residual stream is aligned by orthogonal maps with Q·1 = 1 (docs/concepts.md). Not a test: the numbers are
whatever this run gives. A JSON summary is written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def vit_config(args):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     intermediate_size=2 * args.hidden, image_size=8, patch_size=2, num_channels=1, num_labels=10,
                     architectures=["ViTForImageClassification"])


def train_population(args, pop_dir: str) -> dict:
    from star_merge.data import DataArguments, load_task_dataset
    from star_merge.modeling import build_model
    from star_merge.population import save_checkpoint
    from star_merge.population.training import TrainArguments, train_classifier
    from star_merge.tasks import task_for

    config = vit_config(args)
    task = task_for(config)
    data = load_task_dataset(DataArguments(dataset_name="digits"), task=task)
    train_args = TrainArguments(num_train_epochs=args.epochs, learning_rate=args.lr, per_device_train_batch_size=64,
                                weight_decay=0.01)
    seconds = {}
    for seed in range(args.anchors + args.held_out):
        started = time.time()
        model, _ = train_classifier(build_model(config, seed), data, train_args, seed=seed, progress=False, task=task)
        save_checkpoint(model.cpu(), os.path.join(pop_dir, f"seed{seed}"))
        seconds[f"seed{seed}"] = time.time() - started
        print(f"seed {seed} trained in {seconds[f'seed{seed}']:.0f} s", flush=True)
    return seconds


def run_starlight(args, members, run_dir: str, symmetry: str) -> dict:
    from lm_population import alignment_seconds

    spec = importlib.util.spec_from_file_location("star_recipe", os.path.join(ROOT, "recipes", "star.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    flags = ["--anchors", *members[:args.anchors], "--held_out", *members[args.anchors:], "--dataset_name", "digits",
             "--num_train_epochs", str(args.starlight_epochs), "--per_device_train_batch_size", "64",
             "--learning_rate", str(args.starlight_lr), "--eval_num_points", str(args.eval_points),
             "--bma_samples", "4", "--output_dir", run_dir, "--overwrite_output_dir", "--symmetry", symmetry]
    started = time.time()
    if recipe.main(flags) != 0:
        raise SystemExit("the Starlight run failed")
    star_s = time.time() - started
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    b, models = report["barriers"], report["models"]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    out = {"symmetry": symmetry, "starlight_and_eval_s": star_s,
           "alignment_s_per_pair": alignment_seconds(members, args.anchors, symmetry)}
    for g in ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor"):
        out[f"{g}_loss_barrier"] = mean([r["test"]["loss_barrier"] for r in b[g]])
        out[f"{g}_accuracy_barrier"] = mean([r["test"]["accuracy_barrier"] for r in b[g]])
    a = out["anchor_vs_held_out_loss_barrier"]
    out["ratio"] = out["star_vs_held_out_loss_barrier"] / a if a > 0 else None
    for role in ("star", "anchor", "held-out"):
        out[f"{role}_test_accuracy"] = mean([m["test"]["accuracy"] for m in models.values() if m["role"] == role])
    return out


def print_table(results: dict) -> None:
    names = list(results)
    print("\n| | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    rows = [(f"test CE barrier {g.replace('_vs_', '<->').replace('_', '-')}", f"{g}_loss_barrier", "{:.4f}")
            for g in ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor")]
    rows += [("ratio star / anchor (<->held-out)", "ratio", "{:.3f}")]
    rows += [(f"test accuracy barrier {g.replace('_vs_', '<->').replace('_', '-')} (pts)", f"{g}_accuracy_barrier",
              "{:.2%}") for g in ("star_vs_held_out", "anchor_vs_held_out")]
    rows += [(f"test accuracy {r}", f"{r}_test_accuracy", "{:.2%}") for r in ("star", "anchor", "held-out")]
    rows += [("alignment time per anchor<->held-out pair (s)", "alignment_s_per_pair", "{:.2f}"),
             ("Starlight + evaluation time (s)", "starlight_and_eval_s", "{:.0f}")]
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(results[s][key] if results[s][key] is not None else float("nan"))
                                          for s in names) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_vit_population")
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--starlight-epochs", type=int, default=10)
    parser.add_argument("--starlight-lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--eval-points", type=int, default=5)
    parser.add_argument("--symmetries", default="permutation,orthogonal")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = os.path.abspath(args.out)
    pop_dir = os.path.join(out, "population")
    members = [os.path.join(pop_dir, f"seed{i}") for i in range(args.anchors + args.held_out)]
    started = time.time()
    if not all(os.path.isdir(m) for m in members):
        train_population(args, pop_dir)
    train_s = time.time() - started
    results = {s: run_starlight(args, members, os.path.join(out, f"run-{s}"), s)
               for s in [x.strip() for x in args.symmetries.split(",") if x.strip()]}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"args": vars(args), "train_s": train_s, "by_symmetry": results}, f, indent=1)
    print(f"\npopulation: {args.anchors} anchors + {args.held_out} held-out ViT (hidden {args.hidden}, {args.layers} "
          f"layers) on digits, {args.epochs} epochs each ({train_s:.0f} s); Starlight {args.starlight_epochs} epochs")
    print_table(results)


if __name__ == "__main__":
    main()
