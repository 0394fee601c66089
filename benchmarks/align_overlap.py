"""Effect of ``align_overlap`` (re-align in the background, one epoch stale) on wall time and barriers.

    python benchmarks/align_overlap.py            # star-mlp [256, 256], 10 anchors, 6 epochs, MNIST-1D 4000
    python benchmarks/align_overlap.py --quick    # 5 anchors, 4 epochs

Trains the anchors (``alignment.train_anchors``), then two Starlight runs with the same seed, one with the
ordinary schedule (every epoch starts by aligning the anchors to the current star) and one with
``align_overlap=True`` (epoch e >= 2 uses the alignment computed, during epoch e-1, against the star at
the start of epoch e-1). Reports each run's wall time and the mean loss barrier between the star and each
anchor aligned by the final permutations, on the test split, with the star's BN statistics recomputed
(none here: an MLP). Both runs end with the same synchronous final alignment.
"""

from __future__ import annotations

import argparse
import statistics
import time


def barriers(result, anchors, model_config, data, batch=1000):
    import torch

    from star_merge import apply_permutation, spec_for
    from star_merge.evaluation.connectivity import interpolation_curve
    from star_merge.data import make_dataloader
    from star_merge.modeling import build_model

    star = {k: v for k, v in result.model.state_dict().items()}
    model = build_model(model_config, seed=0)
    params = {k for k, _ in model.named_parameters()}
    spec = spec_for(model).subset(params)
    loader = make_dataloader(data["test"], batch)
    out = []
    for name, sd in anchors:
        sd = dict(sd)
        aligned = apply_permutation(spec, result.perms[name], {k: v for k, v in sd.items() if k in params})
        sd.update(aligned)
        with torch.no_grad():
            out.append(interpolation_curve(build_model(model_config, seed=0), star, sd, loader, num_points=9).loss_barrier)
    return statistics.mean(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--anchor-epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.anchors, args.epochs = 5, 4

    import torch
    from accelerate import Accelerator
    from alignment import train_anchors

    from star_merge.data import load_mnist1d
    from star_merge.models import StarMLPConfig
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s); star-mlp {args.hidden}, "
          f"{args.anchors} anchors, {args.epochs} epochs")
    data = load_mnist1d(args.num_samples)
    model_config = StarMLPConfig(hidden_sizes=args.hidden)
    anchors = train_anchors(model_config, data, args.anchors, args.anchor_epochs, 128)
    print(f"{'schedule':<10} {'wall s':>8} {'mean loss barrier':>18} {'final train loss':>17}")
    for overlap in (False, True):
        config = StarlightConfig(num_train_epochs=args.epochs, align_every=1, align_overlap=overlap, seed=0,
                                 star_ce_weight=0.0, per_device_train_batch_size=128)
        trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=data["train"],
                                   accelerator=Accelerator(cpu=True))
        start = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - start
        print(f"{'overlap' if overlap else 'ordinary':<10} {wall:>8.2f} {barriers(result, anchors, model_config, data):>18.4f} "
              f"{result.history[-1]['train_loss']:>17.4f}", flush=True)


if __name__ == "__main__":
    main()
