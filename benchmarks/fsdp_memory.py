"""Memory per process of Starlight's FSDP2 mode for 1, 2 and 4 processes: counted for a 1B-sized star, measured
for a small one (the check of the count).

    python benchmarks/fsdp_memory.py                 # both parts (the measured one: 3 launches of a 25.5M star)
    python benchmarks/fsdp_memory.py --counted       # the 1B count only (meta device: no memory, a second)
    python benchmarks/fsdp_memory.py --measured      # the small star under accelerate launch, 1 / 2 / 4 processes

Counted (``--counted``): a Pythia-1b-sized ``GPTNeoXForCausalLM`` (1.01 B parameters) is built on the meta
device; the trainer's own :class:`~star_merge.starlight.fsdp.ShardLayout` gives every process's shard sizes, and
the wrap policy of ``recipes/accelerate_configs/fsdp2.yaml`` (one FSDP group per ``GPTNeoXLayer``, the rest in
the root) the largest group. Bytes per process, with L = the process's shard of the P parameters:

- device, resident between steps (float32): θ, AdamW's two moments, the model's sharded interpolated weights and
  their reduce-scattered gradient: 20 L;
- device, peak in a step: + θ.grad, the sampled anchor's shard cast to float32 and the flat gradient read from the
  shards (12 L), + the all-gathered weights and unsharded gradient of the group running and of the one
  prefetched (4 * 2 * 2 * the largest group; none with one process); activations not counted;
- host, resident: the N anchors' shards in the population dtype (bf16: 2 N L);
- host, transient at a re-alignment: the gathered θ and one gathered anchor in float32 (8 P); on process 0 at a
  checkpoint: the gathered θ and AdamW moments (12 P).

The data-parallel trainer (one process per device, everything whole) is the row ``DP``: 20 P device bytes
resident (θ, 2 moments, flat weights and gradient), 28 P at the peak (+ θ.grad, the anchor row) and 2 N P host
bytes per process.

Measured (``--measured``): a real StarlightTrainer under ``accelerate launch --config_file
recipes/accelerate_configs/fsdp2.yaml --num_processes K`` on this machine's CPU (so device = host), a 25.5 M
GPT-NeoX star, 9 bf16 anchors, two Starlight steps on 64-token blocks; each process reports its peak resident
set above its resident set before the trainer existed (``VmHWM`` / ``VmRSS``), next to the count for that star.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from anchor_scaling import status_kib  # noqa: E402  (benchmarks/ is the script's folder)

GIB, MIB = 2**30, 2**20


def pythia_config(size: str):
    from transformers import GPTNeoXConfig

    dims = {"1b": (2048, 16, 8, 8192, 50304), "26m": (512, 4, 8, 2048, 50304 // 4)}[size]
    hidden, layers, heads, inter, vocab = dims
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=inter, max_position_embeddings=2048, rotary_pct=0.25,
                         use_parallel_residual=True, tie_word_embeddings=False, architectures=["GPTNeoXForCausalLM"])


def count(config, world: int, anchors: int, anchor_bytes: int = 2) -> dict:
    """Bytes per process (the largest shard's process) of FSDP2 mode on ``world`` processes, by the trainer's layout."""
    import torch

    from star_merge.modeling import build_model
    from star_merge.starlight import FlatLayout
    from star_merge.starlight.fsdp import ShardLayout

    with torch.device("meta"):
        model = build_model(config)
    layout = FlatLayout.of(model)
    local = max(ShardLayout(layout, r, world).total for r in range(world))
    groups = [sum(p.numel() for p in m.parameters()) for m in model.modules()
              if type(m).__name__ in (model._no_split_modules or [])]
    root = layout.total - sum(groups)
    largest = max([root, *groups])
    unsharded = 0 if world == 1 else 4 * 2 * 2 * largest  # weights + gradient, running + prefetched group
    return {"world": world, "params": layout.total, "local": local,
            "device_resident": 20 * local, "device_peak": 32 * local + unsharded,
            "host_resident": anchor_bytes * anchors * local, "host_align": 8 * layout.total,
            "host_checkpoint_rank0": 12 * layout.total}


def counted_main(args) -> None:
    config = pythia_config("1b")
    rows = [count(config, w, args.anchors) for w in (1, 2, 4)]
    p = rows[0]["params"]
    print(f"Pythia-1b-sized star: {p:,} parameters, {args.anchors} bf16 anchors; bytes counted per process "
          f"(ShardLayout of the real model on the meta device; GiB = 2**30)")
    print(f"{'mode':<8} {'shard (M)':>10} {'device resident':>16} {'device peak':>12} {'host anchors':>13} "
          f"{'host +align':>12} {'rank 0 +ckpt':>13}")
    dp = {"device_resident": 20 * p, "device_peak": 28 * p, "host_resident": 2 * args.anchors * p}
    print(f"{'DP':<8} {p / 1e6:>10.1f} {dp['device_resident'] / GIB:>16.2f} {dp['device_peak'] / GIB:>12.2f} "
          f"{dp['host_resident'] / GIB:>13.2f} {'-':>12} {'-':>13}")
    for r in rows:
        print(f"{'FSDP2 x' + str(r['world']):<8} {r['local'] / 1e6:>10.1f} {r['device_resident'] / GIB:>16.2f} "
              f"{r['device_peak'] / GIB:>12.2f} {r['host_resident'] / GIB:>13.2f} {r['host_align'] / GIB:>12.2f} "
              f"{r['host_checkpoint_rank0'] / GIB:>13.2f}")


WORKER = "--measure-worker"


def worker(args) -> None:
    """One process of the measured run (under accelerate launch); prints one RESULT line."""
    import functools

    import torch
    from datasets import Dataset

    from star_merge.modeling import build_model
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    torch.set_num_threads(1)
    cfg = pythia_config("26m")
    base = build_model(cfg, seed=1).state_dict()

    def load(i):  # a fresh bf16 copy per anchor, as load_checkpoint hands a bf16 population over
        return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).clone() for k, v in base.items()}

    anchors = [(f"anchor-{i}", functools.partial(load, i)) for i in range(args.anchors)]
    base_kib = status_kib("VmRSS")
    data = Dataset.from_dict({"input_ids": [[(7 * i + j) % cfg.vocab_size for j in range(64)] for i in range(8)]})
    config = StarlightConfig(num_train_epochs=1, per_device_train_batch_size=1, align_every=0)
    trainer = StarlightTrainer(model=cfg, args=config, anchors=anchors, train_dataset=data)
    trainer._setup()  # the steps of train(), without its alignments
    for _, batch in zip(range(2), trainer.train_loader):
        trainer._step(0, batch)
    acc = trainer.accelerator
    print("RESULT " + json.dumps({
        "rank": acc.process_index, "world": acc.num_processes, "fsdp": trainer.fsdp,
        "host_peak": (status_kib("VmHWM") - base_kib) * 1024, "host_now": (status_kib("VmRSS") - base_kib) * 1024,
        "anchor_rows": trainer.anchors.numel() * trainer.anchors.element_size(),
        "device_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}), flush=True)


def measured_main(args) -> None:
    cfg = pythia_config("26m")
    print(f"measured: 25.5M GPT-NeoX star, {args.anchors} bf16 anchors, FSDP2 on CPU (gloo), two steps; MiB = 2**20")
    print(f"{'processes':>9} {'rank':>4} {'anchor rows':>12} {'peak above start':>17} {'resident after':>15} "
          f"{'counted resident':>17} {'counted peak':>13}")
    for world in (1, 2, 4):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(ROOT, "recipes", "accelerate_configs", "fsdp2.yaml"), "--num_processes", str(world),
               "--main_process_port", str(29700 + world), os.path.abspath(__file__), WORKER,
               "--anchors", str(args.anchors)]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        results = sorted((json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")),
                         key=lambda r: r["rank"])
        if proc.returncode or len(results) != world:
            raise SystemExit(f"{world} processes failed:\n{proc.stderr[-3000:]}")
        c = count(cfg, world, args.anchors)
        for r in results:
            assert r["fsdp"], "the run was not in FSDP2 mode"
            print(f"{world:>9} {r['rank']:>4} {r['anchor_rows'] / MIB:>12.1f} {r['host_peak'] / MIB:>17.1f} "
                  f"{r['host_now'] / MIB:>15.1f} {(c['device_resident'] + c['host_resident']) / MIB:>17.1f} "
                  f"{(c['device_peak'] + c['host_resident']) / MIB:>13.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counted", action="store_true", help="the 1B count only")
    parser.add_argument("--measured", action="store_true", help="the measured small star only")
    parser.add_argument("--anchors", type=int, default=9)
    parser.add_argument(WORKER, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_worker:
        return worker(args)
    if not args.measured:
        counted_main(args)
    if not args.counted:
        measured_main(args)


if __name__ == "__main__":
    main()
