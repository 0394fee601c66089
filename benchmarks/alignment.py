"""Time the per-epoch re-alignment of N anchors to the star against the epoch it precedes (N = 5, 20, 50).

    python benchmarks/alignment.py            # the default demo: star-mlp [512, 512], batch 128, μ=0,
                                              # MNIST-1D with 4000 training samples, 3 epochs per N
    python benchmarks/alignment.py --quick    # 5 and 20 anchors, 2 epochs

Anchors are trained here first (``--anchor-epochs`` epochs of AdamW each, seeds 1..N; far shorter than the
demo's 20 epochs, so they are closer to their inits than real anchors). Then, per N, a real
``StarlightTrainer`` runs ``--epochs`` epochs with ``align_every=1``; ``align_anchors`` and every
``weight_matching`` call inside it are timed by wrappers. Epoch 0 aligns from the identity (the star is
its random init); later epochs start from the anchors as last aligned (the trainer keeps them in the
star's frame, so matching warm-starts from the identity). The trainer's
final alignment after the last epoch is reported separately.

Two processes: the trainer gives process r the anchors r, r+2, ...; the column "2 procs" is the larger of
the two slices' summed matching times (simulated from the one-process timings; the permutation exchange,
``gather_object`` of a few KB, is not included).
"""

from __future__ import annotations

import argparse
import statistics
import time


def train_anchors(model_config, data, n: int, epochs: int, batch: int, seed0: int = 1, progress=True):
    """N ordinary models (AdamW 1e-3, constant lr) trained on tensors directly; returns (name, state dict)."""
    import torch
    from tqdm.auto import tqdm

    from star_merge.modeling import build_model

    x = torch.tensor(data["train"]["input_values"])
    y = torch.tensor(data["train"]["labels"])
    out = []
    for i in tqdm(range(n), desc="training anchors", disable=not progress):
        model = build_model(model_config, seed=seed0 + i).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed0 + i)
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            for j in range(0, len(y), batch):
                idx = order[j:j + batch]
                loss = model(input_values=x[idx], labels=y[idx]).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        out.append((f"anchor-{i:02d}", {k: v.detach().clone() for k, v in model.state_dict().items()}))
    return out


def run(n: int, anchors, model_config, data, args) -> dict:
    """One Starlight run over the first ``n`` anchors; wall times of epochs, alignments and matchings."""
    from accelerate import Accelerator

    import star_merge.starlight.trainer as trainer_mod
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    config = StarlightConfig(num_train_epochs=args.epochs, star_ce_weight=args.mu, align_every=1,
                             per_device_train_batch_size=args.batch_size, seed=0)
    trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors[:n], train_dataset=data["train"], accelerator=Accelerator(cpu=True))
    aligns, matches = [], []
    real_align, real_match = trainer.align_anchors, trainer_mod.weight_matching

    def timed_align(*a, **k):
        start = time.perf_counter()
        matches.append([])
        real_align(*a, **k)
        aligns.append(time.perf_counter() - start)

    def timed_match(*a, **k):
        start = time.perf_counter()
        res = real_match(*a, **k)
        matches[-1].append((time.perf_counter() - start, res.iterations))
        return res

    trainer.align_anchors = timed_align
    trainer_mod.weight_matching = timed_match
    try:
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    finally:
        trainer_mod.weight_matching = real_match
    final = aligns[-1]
    train_only = (total - sum(aligns)) / args.epochs  # epoch time without its alignment (incl. BN/loader)
    per_epoch = aligns[:-1]

    def two_procs(ms):
        return max(sum(t for t, _ in ms[r::2]) for r in range(2))

    return {
        "N": n, "epoch_s": train_only, "align0_s": per_epoch[0],
        "align_warm_s": statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else float("nan"),
        "two0_s": two_procs(matches[0]),
        "two_warm_s": statistics.median(two_procs(m) for m in matches[1:-1]) if len(matches) > 2 else float("nan"),
        "iters0": statistics.mean(i for _, i in matches[0]),
        "iters_warm": statistics.mean(i for m in matches[1:-1] for _, i in m) if len(matches) > 2 else float("nan"),
        "final_s": final,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, nargs="+", default=[5, 20, 50], help="anchor counts to compare")
    parser.add_argument("--epochs", type=int, default=3, help="Starlight epochs per N (>= 2 to see warm starts)")
    parser.add_argument("--anchor-epochs", type=int, default=3, help="training epochs of each anchor")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="star-mlp hidden sizes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--mu", type=float, default=0.0, help="star_ce_weight (the demo's 0.0)")
    parser.add_argument("--num-samples", type=int, default=5000, help="MNIST-1D samples (80%% train)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="5 and 20 anchors, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.anchors, args.epochs = [5, 20], 2

    import torch

    from star_merge.data import load_mnist1d
    from star_merge.models import StarMLPConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s); star-mlp {args.hidden}, "
          f"batch {args.batch_size}, mu={args.mu:g}, {args.epochs} epochs per N")
    data = load_mnist1d(args.num_samples)
    model_config = StarMLPConfig(hidden_sizes=args.hidden)
    anchors = train_anchors(model_config, data, max(args.anchors), args.anchor_epochs, args.batch_size)
    print(f"{len(data['train'])} training samples, {-(-len(data['train']) // args.batch_size)} steps per epoch")
    rows = []
    for n in args.anchors:
        print(f"[N={n}] Starlight run ...", flush=True)
        rows.append(run(n, anchors, model_config, data, args))
    print()
    print("epoch = the epoch's training time without its alignment; align/(epoch+align) is the share of wall time")
    print(f"{'N':>3} {'epoch s':>8} {'align0 s':>9} {'sweeps0':>8} {'align s':>8} {'sweeps':>7} {'share':>6} "
          f"{'2 procs s':>10} {'share':>6} {'final s':>8}")
    for r in rows:
        share = r["align_warm_s"] / (r["epoch_s"] + r["align_warm_s"])
        share2 = r["two_warm_s"] / (r["epoch_s"] + r["two_warm_s"])
        print(f"{r['N']:>3} {r['epoch_s']:>8.3f} {r['align0_s']:>9.3f} {r['iters0']:>8.2f} {r['align_warm_s']:>8.3f} "
              f"{r['iters_warm']:>7.2f} {share:>6.1%} {r['two_warm_s']:>10.3f} {share2:>6.1%} {r['final_s']:>8.3f}")
    print("align0/sweeps0: epoch 0 (from the identity); align/sweeps: warm-started epochs (median); "
          "2 procs: simulated slice of the warm alignment")


if __name__ == "__main__":
    main()
