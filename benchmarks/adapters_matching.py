"""Time weight matching between two random initialisations of transformer-sized models.

    python benchmarks/adapters_matching.py                 # GPT-2 small and a Llama-style model
    python benchmarks/adapters_matching.py --models gpt2   # one of them
    OMP_NUM_THREADS=1 python benchmarks/adapters_matching.py --threads 1

Prints, per model: parameter count, the spec's permutations, seconds spent in ``weight_matching``
(models built and initialised beforehand) and the number of coordinate-descent sweeps.

Reference runs (torch 2.13 CPU): one thread on a shared 2-core machine, before the matching speed-ups:
GPT-2 small (124M params, 25 permutations) 109 s, Llama-style (156M params, 17 permutations) 168 s, 3 sweeps
each. Two threads on a quiet 2-core machine, after them: GPT-2 small 24.4 s, Llama-style 16.1 s.
"""

from __future__ import annotations

import argparse
import time


def _configs():
    import transformers as T

    return {
        # GPT-2 small: 768 hidden, 12 layers, 12 heads, MLP 3072, 50257-token vocabulary.
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(n_embd=768, n_layer=12, n_head=12)),
        # Llama-style: 1024 hidden, 8 layers, 16 query / 4 key-value heads, gated MLP 2816, 32k vocabulary.
        "llama": (
            T.LlamaForCausalLM,
            T.LlamaConfig(
                hidden_size=1024,
                num_hidden_layers=8,
                num_attention_heads=16,
                num_key_value_heads=4,
                intermediate_size=2816,
                vocab_size=32000,
                tie_word_embeddings=False,
            ),
        ),
    }


def benchmark(name: str, max_iter: int, seed: int) -> dict:
    """Build two random inits of model ``name``, weight-match the second to the first, time it."""
    import torch

    from star_merge import spec_for, weight_matching

    cls, config = _configs()[name]
    state_dicts = []
    for init_seed in (0, 1):
        torch.manual_seed(init_seed)
        state_dicts.append(cls(config).eval().state_dict())
    with torch.device("meta"):
        spec = spec_for(cls(config))
    start = time.perf_counter()
    res = weight_matching(spec, state_dicts[0], state_dicts[1], seed=seed, max_iter=max_iter)
    seconds = time.perf_counter() - start
    return {
        "model": name,
        "params_M": sum({v.data_ptr(): v.numel() for v in state_dicts[0].values()}.values())
        / 1e6,  # tied once
        "permutations": len(spec.perm_sizes),
        "seconds": seconds,
        "iterations": res.iterations,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["gpt2", "llama"], default=["gpt2", "llama"])
    parser.add_argument("--max-iter", type=int, default=100, help="cap on coordinate-descent sweeps")
    parser.add_argument("--seed", type=int, default=0, help="order in which permutations are visited")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in args.models:
        r = benchmark(name, args.max_iter, args.seed)
        print(
            f"{r['model']:6s} {r['params_M']:7.1f}M params  {r['permutations']:3d} permutations  "
            f"{r['seconds']:8.1f} s  {r['iterations']:3d} iterations  "
            f"({r['seconds'] / r['iterations']:.1f} s/iteration)",
            flush=True,
        )


if __name__ == "__main__":
    main()
