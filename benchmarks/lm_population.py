"""Does a star model exist for a population of language models? Tiny GPT-NeoX models trained here, then Starlight.

    python benchmarks/lm_population.py --max-train-blocks 1000 --epochs 4 --starlight-epochs 6 --eval-points 5
                                                            # the CPU run of docs/language_models.md
    python benchmarks/lm_population.py --quick --epochs 4 --starlight-epochs 2   # tests' corpus, 256 blocks: ~6 min
    python benchmarks/lm_population.py --device cuda --anchors 5 --held-out 3 --hidden 256 --layers 4 ...  # GPU

Each member is a GPTNeoXForCausalLM (partial rotary, parallel residual, untied head) trained from its own seed on
a local corpus of real English (the Python standard library's docstrings and the language reference's help
topics, ``pydoc_data``) with a BPE tokenizer built here, for ``--epochs`` epochs, so the anchors are trained
models that differ by seed, not random inits. Every member's train/test per-token cross-entropy is printed per
epoch (has the loss flattened?). Starlight then learns a star from the anchors (``recipes/star.py``, the same
pipeline as a Hub population) and the run is evaluated on the held-out text. Printed: star↔held-out vs
anchor↔held-out per-token cross-entropy barriers (test split, after weight matching), their ratio, and the
star's perplexity next to the anchors' and the held-out models'. Not a test: the numbers are whatever this run
gives. A JSON summary is written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the corpus, tokenizer and configs of the tests

# A fixed list (not the interpreter's whole stdlib), so the corpus depends only on the Python version.
_MODULES = ("json", "os", "collections", "functools", "itertools", "textwrap", "random", "string", "re", "pathlib",
            "argparse", "inspect", "dataclasses", "shutil", "tempfile", "typing", "logging", "zlib", "heapq",
            "bisect", "asyncio", "subprocess", "threading", "multiprocessing", "socket", "email", "http.client",
            "urllib.request", "unittest", "doctest", "pickle", "csv", "sqlite3", "decimal", "fractions",
            "statistics", "datetime", "calendar", "io", "codecs", "difflib", "enum", "contextlib", "abc",
            "operator", "copy", "pprint", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets", "uuid",
            "base64", "struct", "array", "queue", "sched", "selectors", "signal", "mmap", "ast", "dis", "tokenize",
            "traceback", "warnings", "weakref", "types", "importlib", "pkgutil", "configparser", "getopt",
            "locale", "gettext", "xml.etree.ElementTree", "html.parser", "ftplib", "smtplib", "imaplib", "wave",
            "colorsys", "numbers", "math", "cmath", "glob", "fnmatch", "filecmp", "stat", "platform", "sysconfig")


def bench_corpus_lines() -> list[str]:
    """Paragraphs (one a line) of the help topics and of the docstrings of _MODULES, their public attributes and
    their classes' public members; deduplicated, in a fixed order. Which attributes a module has depends on the
    Python version and on what was imported before (``main`` always imports the same), so the corpus is the same
    in the same environment, not across Python versions."""
    from pydoc_data.topics import topics

    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # typing.io / typing.re on attribute access
    docs = [topics[k] for k in sorted(topics)]
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        objs += [getattr(o, a, None) for o in list(objs) if inspect.isclass(o)
                 for a in sorted(vars(o)) if not a.startswith("_")]
        docs += [d for d in (inspect.getdoc(o) for o in objs if o is not None) if d]
    seen, out = set(), []
    for doc in docs:
        for p in doc.split("\n\n"):
            line = " ".join(p.split())
            if len(line.split()) > 3 and line not in seen:
                seen.add(line)
                out.append(line)
    return out


def write_bench_corpus(folder: str, test_every: int = 10) -> str:
    """train.txt / test.txt (every ``test_every``-th paragraph is test text); the tokenizer is trained on train."""
    os.makedirs(folder, exist_ok=True)
    lines = bench_corpus_lines()
    parts = {"train.txt": [l for i, l in enumerate(lines) if i % test_every], "test.txt": lines[::test_every]}
    for name, part in parts.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(part) + "\n")
    return folder


def build_bench_tokenizer(corpus: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lm_fixtures import SPECIALS

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    with open(os.path.join(corpus, "train.txt")) as f:
        tok.train_from_iterator(f.read().splitlines(),
                                trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def train_population(args, pop_dir: str, corpus: str, tokenizer, seeds) -> dict:
    """Train one member per seed with star-merge's trainer, recording train/test CE after every epoch."""
    import torch

    from lm_fixtures import neox_config
    from star_merge.data import DataArguments, load_task_dataset, make_dataloader
    from star_merge.evaluation.engine import evaluate_loss_accuracy
    from star_merge.modeling import build_model
    from star_merge.population import save_checkpoint
    from star_merge.population.training import TrainArguments, train_classifier
    from star_merge.tasks import task_for

    config = neox_config(len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                         max_position_embeddings=args.block_size)
    task = task_for(config)
    data = load_task_dataset(DataArguments(dataset_name=corpus, block_size=args.block_size,
                                           max_train_samples=args.max_train_blocks), task=task, processor=tokenizer)
    n = min(len(data["train"]), len(data["test"]), args.max_eval_blocks)  # the same-size samples of both splits
    loaders = {s: make_dataloader(data[s].select(range(n)), 256) for s in ("train", "test")}
    device = torch.device(args.device)
    curves = {}
    train_args = TrainArguments(num_train_epochs=args.epochs, learning_rate=args.lr,
                                per_device_train_batch_size=args.batch_size, weight_decay=0.01)
    print(f"data: {len(data['train'])} train / {len(data['test'])} test blocks of {args.block_size} tokens, "
          f"vocab {len(tokenizer)}; model {sum(p.numel() for p in build_model(config, 0).parameters())} parameters")
    for seed in seeds:
        rows = []

        def record(epoch, model, rows=rows):
            ce = {s: evaluate_loss_accuracy(model, loader, device, task=task)[0] for s, loader in loaders.items()}
            rows.append(ce)
            print(f"  seed {seed} epoch {epoch + 1:2d}: train CE {ce['train']:.4f}  test CE {ce['test']:.4f}", flush=True)

        started = time.time()
        model, _ = train_classifier(build_model(config, seed), data, train_args, seed=seed, device=device,
                                    progress=False, task=task, on_epoch_end=record)
        save_checkpoint(model.cpu(), os.path.join(pop_dir, f"seed{seed}"), processor=tokenizer)
        curves[f"seed{seed}"] = rows
        print(f"seed {seed} trained in {time.time() - started:.0f} s", flush=True)
    return curves


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_lm_population")
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of every member")
    parser.add_argument("--lr", type=float, default=3e-3, help="members' peak learning rate (AdamW, cosine)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--starlight-epochs", type=int, default=4)
    parser.add_argument("--starlight-lr", type=float, default=1e-3)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--max-train-blocks", type=int, default=None, help="cap on training blocks (default: all)")
    parser.add_argument("--max-eval-blocks", type=int, default=256,
                        help="test blocks scored in the report (and per epoch, with as many training blocks)")
    parser.add_argument("--eval-points", type=int, default=6)
    parser.add_argument("--device", default="cpu", help="device the members are trained on (Starlight: accelerate's)")
    parser.add_argument("--quick", action="store_true", help="the tests' small corpus and 256 training blocks")
    parser.add_argument("--symmetries", default="permutation",
                        help="comma-separated: permutation and/or orthogonal (Starlight and every barrier with that "
                             "symmetry, on the same population; orthogonal = folded form, docs/concepts.md)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_fixtures import build_tokenizer, write_corpus

    out = os.path.abspath(args.out)
    n = args.anchors + args.held_out
    started = time.time()
    if args.quick:
        corpus = write_corpus(os.path.join(out, "corpus"))
        tokenizer = build_tokenizer(args.vocab, bert_template=False)
        args.max_train_blocks = args.max_train_blocks or 256
    else:
        corpus = write_bench_corpus(os.path.join(out, "corpus"))
        tokenizer = build_bench_tokenizer(corpus, args.vocab)
    pop_dir = os.path.join(out, "population")
    curves_path = os.path.join(out, "learning_curves.json")
    if not os.path.isfile(curves_path):
        curves = train_population(args, pop_dir, corpus, tokenizer, range(n))
        with open(curves_path, "w") as f:
            json.dump(curves, f, indent=1)
    with open(curves_path) as f:
        curves = json.load(f)
    train_s = time.time() - started
    members = [os.path.join(pop_dir, f"seed{i}") for i in range(n)]
    symmetries = [x.strip() for x in args.symmetries.split(",") if x.strip()]
    results = {}
    for symmetry in symmetries:
        run_dir = os.path.join(out, "run" if symmetries == ["permutation"] else f"run-{symmetry}")
        results[symmetry] = run_starlight(args, corpus, members, run_dir, symmetry, curves, train_s)
    summary = results[symmetries[0]] if len(symmetries) == 1 else {"args": vars(args), "by_symmetry": results}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print()
    print(f"population: {args.anchors} anchors + {args.held_out} held-out GPT-NeoX (hidden {args.hidden}, "
          f"{args.layers} layers), {args.epochs} epochs each ({train_s:.0f} s); Starlight {args.starlight_epochs} "
          f"epochs + evaluation")
    first = {k: v[0] for k, v in curves.items()}
    last = {k: v[-1] for k, v in curves.items()}
    for k in curves:
        print(f"  {k}: train CE {first[k]['train']:.3f} -> {last[k]['train']:.3f}   test CE {first[k]['test']:.3f} -> "
              f"{last[k]['test']:.3f}   (last epoch's test CE change {curves[k][-1]['test'] - curves[k][-2]['test']:+.4f})"
              if len(curves[k]) > 1 else f"  {k}: {last[k]}")
    print_table(results)


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def alignment_seconds(members, anchors: int, symmetry: str) -> float:
    """Mean wall time of weight matching one anchor to one held-out model (folded first for ``orthogonal``)."""
    from star_merge.matching.align import align, in_symmetry_form
    from star_merge.modeling import load_checkpoint

    times = []
    for a in members[:anchors]:
        for h in members[anchors:]:
            ma, mh = (in_symmetry_form(load_checkpoint(p), symmetry) for p in (a, h))
            started = time.perf_counter()
            align(None, ma, mh, symmetry=symmetry)
            times.append(time.perf_counter() - started)
    return _mean(times)


def run_starlight(args, corpus, members, run_dir, symmetry, curves, train_s) -> dict:
    """One Starlight run (``recipes/star.py --symmetry S``) and its evaluation; the numbers of its report."""
    spec = importlib.util.spec_from_file_location("star_recipe", os.path.join(ROOT, "recipes", "star.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    flags = ["--anchors", *members[:args.anchors], "--held_out", *members[args.anchors:], "--dataset_name", corpus,
             "--block_size", str(args.block_size), "--num_train_epochs", str(args.starlight_epochs),
             "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.starlight_lr),
             "--max_eval_samples", str(args.max_eval_blocks), "--eval_num_points", str(args.eval_points),
             "--bma_samples", "4", "--output_dir", run_dir, "--overwrite_output_dir", "--symmetry", symmetry]
    if args.max_train_blocks:
        flags += ["--max_train_samples", str(args.max_train_blocks)]
    started = time.time()
    if recipe.main(flags) != 0:
        raise SystemExit("the Starlight run failed")
    return summarize_run(args, members, run_dir, symmetry, curves, train_s, time.time() - started)


def summarize_run(args, members, run_dir, symmetry, curves, train_s, star_s) -> dict:
    """The numbers of one run's report.json (and the alignment time of its symmetry)."""
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    b = report["barriers"]
    barrier = {g: _mean([r["test"]["loss_barrier"] for r in b[g]])
               for g in ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor")}
    path_max = {g: _mean([max(r["test"]["losses"]) for r in b[g]]) for g in ("star_vs_held_out", "anchor_vs_held_out")}
    models = report["models"]
    ppl = {role: _mean([math.exp(m["test"]["nll"]) for m in models.values() if m["role"] == role])
           for role in ("star", "anchor", "held-out")}
    acc = {role: _mean([m["test"]["accuracy"] for m in models.values() if m["role"] == role])
           for role in ("star", "anchor", "held-out")}
    star_h, anchor_h = barrier["star_vs_held_out"], barrier["anchor_vs_held_out"]
    summary = {"args": vars(args), "symmetry": symmetry, "train_s": train_s, "starlight_and_eval_s": star_s,
               "star_vs_held_out_barrier": star_h, "anchor_vs_held_out_barrier": anchor_h,
               "star_vs_anchor_barrier": barrier["star_vs_anchor"],
               "ratio": star_h / anchor_h if anchor_h > 0 else None, "perplexity": ppl, "token_accuracy": acc,
               "path_max_perplexity": {g: math.exp(v) for g, v in path_max.items()},
               "alignment_s_per_pair": alignment_seconds(members, args.anchors, symmetry),
               "members_final_ce": {k: v[-1] for k, v in curves.items()}, "report_summary": report.get("summary")}
    de = report["ensembles"].get("deep_ensemble", {}).get("test")
    if de:
        summary["deep_ensemble_perplexity"] = math.exp(de["nll"])
    return summary


def print_table(results: dict) -> None:
    """The side-by-side table (one column per symmetry) of what each run measured."""
    names = list(results)
    rows = [("test CE barrier star<->held-out", "star_vs_held_out_barrier", "{:.4f}"),
            ("test CE barrier anchor<->held-out", "anchor_vs_held_out_barrier", "{:.4f}"),
            ("ratio star / anchor (<->held-out)", "ratio", "{:.3f}"),
            ("test CE barrier star<->anchor", "star_vs_anchor_barrier", "{:.4f}")]
    print("\n| | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(results[s][key] or float("nan")) for s in names) + " |")
    for role in ("star", "anchor", "held-out"):
        print(f"| test perplexity {role} | " + " | ".join(f"{results[s]['perplexity'][role]:.2f}" for s in names) + " |")
        print(f"| test token accuracy {role} | "
              + " | ".join(f"{100 * results[s]['token_accuracy'][role]:.2f} %" for s in names) + " |")
    print("| highest test perplexity on path star<->held-out | "
          + " | ".join(f"{results[s]['path_max_perplexity']['star_vs_held_out']:.2f}" for s in names) + " |")
    print("| alignment time per anchor<->held-out pair | "
          + " | ".join(f"{results[s]['alignment_s_per_pair']:.2f} s" for s in names) + " |")
    print("| Starlight + evaluation time | " + " | ".join(f"{results[s]['starlight_and_eval_s']:.0f} s" for s in names)
          + " |")


if __name__ == "__main__":
    main()
