"""Does a star model exist for a population of language models? Tiny GPT-NeoX models trained here, then Starlight.

    python benchmarks/lm_population.py                      # 3 anchors + 2 held-out, whole corpus (not yet timed)
    python benchmarks/lm_population.py --quick --epochs 4 --starlight-epochs 2   # 256 blocks: 6.5 min on 2 CPU cores

Each member is a GPTNeoXForCausalLM (hidden 64, 2 layers, 4 heads, partial rotary, untied head) trained from its
own seed on a local corpus (the Python standard library's docstrings: real English) with a BPE tokenizer built
here, for ``--epochs`` epochs, so the anchors are trained models that differ by seed, not random inits. Starlight
then learns a star from the anchors (``recipes/star.py``, the same pipeline as a Hub population) and the run is
evaluated on the held-out text. Printed: star↔held-out vs anchor↔held-out per-token cross-entropy barriers
(test split, after weight matching), their ratio, and the star's perplexity next to the anchors' and the
held-out models'. Not a test: the numbers are whatever this run gives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the corpus, tokenizer and population builders of the tests


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_lm_population")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of every member")
    parser.add_argument("--starlight-epochs", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a few hundred blocks only")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import math

    import importlib.util

    from lm_fixtures import train_lm_population, write_corpus

    out = os.path.abspath(args.out)
    corpus = write_corpus(os.path.join(out, "corpus"))
    started = time.time()
    pop_dir = os.path.join(out, "population")
    limit = 256 if args.quick else None
    if not os.path.isdir(os.path.join(pop_dir, "seed4")):
        train_lm_population(pop_dir, corpus, "causal", seeds=range(5), epochs=args.epochs, block_size=args.block_size,
                            learning_rate=3e-3, vocab_size=512, max_train_samples=limit, hidden_size=args.hidden,
                            intermediate_size=4 * args.hidden, max_position_embeddings=max(64, args.block_size))
    train_s = time.time() - started
    members = [os.path.join(pop_dir, f"seed{i}") for i in range(5)]
    spec = importlib.util.spec_from_file_location("star_recipe", os.path.join(ROOT, "recipes", "star.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    flags = ["--anchors", *members[:3], "--held_out", *members[3:], "--dataset_name", corpus,
             "--block_size", str(args.block_size), "--num_train_epochs", str(args.starlight_epochs),
             "--per_device_train_batch_size", "32", "--learning_rate", "1e-3", "--max_eval_samples", "128",
             "--eval_num_points", "6", "--bma_samples", "4", "--output_dir", os.path.join(out, "run"),
             "--overwrite_output_dir"]
    if limit:
        flags += ["--max_train_samples", str(limit)]
    started = time.time()
    if recipe.main(flags) != 0:
        raise SystemExit("the Starlight run failed")
    star_s = time.time() - started
    with open(os.path.join(out, "run", "report.json")) as f:
        report = json.load(f)

    def mean(xs):
        return sum(xs) / len(xs)

    b = report["barriers"]
    star_h = mean([r["test"]["loss_barrier"] for r in b["star_vs_held_out"]])
    anchor_h = mean([r["test"]["loss_barrier"] for r in b["anchor_vs_held_out"]])
    models = report["models"]
    ppl = {role: mean([math.exp(m["test"]["nll"]) for m in models.values() if m["role"] == role])
           for role in ("star", "anchor", "held-out")}
    print()
    print(f"population: 3 anchors + 2 held-out GPT-NeoX, {args.epochs} epochs each ({train_s:.0f} s); "
          f"Starlight {args.starlight_epochs} epochs + evaluation ({star_s:.0f} s)")
    print(f"test per-token CE barrier  star<->held-out {star_h:.4f}   anchor<->held-out {anchor_h:.4f}   "
          f"ratio {star_h / anchor_h if anchor_h > 0 else float('nan'):.3f}")
    print(f"test perplexity            star {ppl['star']:.2f}   anchors {ppl['anchor']:.2f}   "
          f"held-out {ppl['held-out']:.2f}")
    de = report["ensembles"].get("deep_ensemble", {}).get("test")
    if de:
        print(f"deep ensemble perplexity   {math.exp(de['nll']):.2f}")


if __name__ == "__main__":
    main()
