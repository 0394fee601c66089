"""Time the per-epoch re-alignment of N anchors against the training epoch it precedes.

    python benchmarks/alignment.py                    # the default demo's model and settings, N = 5, 20, 50
    python benchmarks/alignment.py --population mlp512   # the former demo, star-mlp [512, 512] (continuity)
    python benchmarks/alignment.py --quick            # demo, 5 and 20 anchors, 2 epochs
    python benchmarks/alignment.py --population resnet18                 # ResNet-18 sized, CPU, N = 10
    python benchmarks/alignment.py --population resnet18 --device cuda   # on a GPU, N = 10 and 50 (< 4 min)

``--population demo``: the default demo's configuration, read from ``recipes/configs/mnist1d_cnn1d_demo.yaml``
(the file ``recipes/star.py`` runs without arguments): its model (star-cnn1d), Starlight settings (μ, t
sampling, optimizer, learning rate, init, batch size) and MNIST-1D size. ``--population mlp512``: the former
demo, star-mlp [512, 512] with ``StarlightConfig`` defaults, μ=``--mu`` and ``--batch-size`` (the figures
before the demo changed). For both, anchors are trained here first (``--anchor-epochs`` epochs of AdamW each,
seeds 1..N; far shorter than the demo's 20 epochs, so they are closer to their inits than real anchors). Then,
per N, a real ``StarlightTrainer`` runs ``--epochs`` epochs with ``align_every=1``; ``align_anchors`` and
the population alignment inside it (``matching.population.align_rows``) are timed by wrappers. Epoch 0
aligns from the identity (the star is its random init); later epochs start from the anchors as last
aligned (the trainer keeps them in the star's frame, so matching warm-starts from the identity). The
trainer's final alignment after the last epoch is reported separately. The "2 procs" column is the larger
of the two slices' times (process r aligns anchors r, r+2, ...), simulated by aligning each slice alone.

``--population resnet18``: transformers ``ResNetConfig`` at ResNet-18 widths (64-128-256-512, depths 2-2-2-2,
11.2M parameters, 12 permutations), CIFAR-sized inputs (3x32x32, 10 classes). Anchors are made cheaply:
one random model θ0, anchor i = a random permutation of θ0 + ``--noise``·(per-tensor std)·noise. The star
starts at θ0 + noise; "cold" aligns every anchor from its random frame (epoch 0), "warm" moves the star by
a small step (``--drift``, in per-tensor stds; one warm phase ``wD`` per value, each from the cold result) and
re-aligns the already aligned anchors (every later epoch). Plain training of the demo's star-cnn1d moves
its weight tensors by a median 0.39 / 0.27 / 0.12 / 0.05 stds over epochs 1 / 2 / 5 / 10 (RMS change over
the tensor's std), hence the defaults 0.5 (an early epoch) and 0.1 (mid-training). "epoch" is one epoch of
plain training on 50,000 samples at ``--batch-size`` (median step time of a few AdamW steps on random data,
times the steps per epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def train_anchors(model_config, data, n: int, epochs: int, batch: int, seed0: int = 1, progress=True, lr=1e-3):
    """N ordinary models (AdamW ``lr``, constant) trained on tensors directly; returns (name, state dict)."""
    import torch
    from tqdm.auto import tqdm

    from star_merge.modeling import build_model

    x = torch.tensor(data["train"]["input_values"])
    y = torch.tensor(data["train"]["labels"])
    out = []
    for i in tqdm(range(n), desc="training anchors", disable=not progress):
        model = build_model(model_config, seed=seed0 + i).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
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


def run(n: int, anchors, model_config, data, args, config) -> dict:
    """One Starlight run (``config``, a ``StarlightConfig``) over the first ``n`` anchors; wall times of epochs,
    alignments and matchings."""
    from accelerate import Accelerator

    import star_merge.matching.population as population_mod
    from star_merge.starlight import StarlightTrainer

    trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors[:n], train_dataset=data["train"],
                               accelerator=Accelerator(cpu=True))
    trainer.args.matching_solver = args.solver
    aligns, matches = [], []
    real_align, real_rows = trainer.align_anchors, population_mod.align_rows

    def timed_align(*a, **k):
        start = time.perf_counter()
        real_align(*a, **k)
        aligns.append(time.perf_counter() - start)

    def timed_rows(spec, layout, theta, rows, indices, seeds, max_iter=100, solver="auto", **k):
        k = {**k, "max_iter": max_iter, "solver": solver, "batched": BATCHED[args.batched]}
        # the real alignment of all anchors, then each 2-process slice alone (simulated processes)
        start = time.perf_counter()
        res = real_rows(spec, layout, theta, rows, indices, seeds, **k)
        one = time.perf_counter() - start
        start = time.perf_counter()  # side by side: the same alignment with scipy's solver (as before)
        real_rows(spec, layout, theta, rows, indices, seeds, **{**k, "solver": "scipy"})
        scipy_s = time.perf_counter() - start
        slices = []
        for r in range(2):
            start = time.perf_counter()
            real_rows(spec, layout, theta, rows, indices[r::2], seeds[r::2], **k)
            slices.append(time.perf_counter() - start)
        matches.append((one, max(slices), statistics.mean(res.sweeps), res.solved, dict(res.solvers), sum(slices) + scipy_s, scipy_s))
        return res

    trainer.align_anchors = timed_align
    population_mod.align_rows = timed_rows
    try:
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    finally:
        population_mod.align_rows = real_rows
    train_only = (total - sum(aligns)) / args.epochs  # epoch time without its alignment (incl. BN/loader)
    # align_anchors' wall time includes the two simulated slices: take them out again
    aligns = [a - m[5] for a, m in zip(aligns, matches)]
    final = aligns[-1]
    per_epoch = aligns[:-1]
    return {
        "N": n, "epoch_s": train_only, "align0_s": per_epoch[0],
        "align_warm_s": statistics.median(per_epoch[1:]) if len(per_epoch) > 1 else float("nan"),
        "two0_s": matches[0][1],
        "two_warm_s": statistics.median(m[1] for m in matches[1:-1]) if len(matches) > 2 else float("nan"),
        "iters0": matches[0][2],
        "iters_warm": statistics.mean(m[2] for m in matches[1:-1]) if len(matches) > 2 else float("nan"),
        "final_s": final, "solvers": matches[-1][4],
        "scipy_warm_s": statistics.median(m[6] for m in matches[1:-1]) if len(matches) > 2 else float("nan"),
    }


BATCHED = {"auto": None, "yes": True, "no": False}
DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "recipes", "configs",
                           "mnist1d_cnn1d_demo.yaml")


def population_settings(args):
    """(StarlightConfig, model config, MNIST-1D samples, anchor learning rate, description) of the population."""
    from star_merge.starlight import StarlightConfig

    if args.population == "mlp512":
        from star_merge.models import StarMLPConfig

        config = StarlightConfig(num_train_epochs=args.epochs, star_ce_weight=args.mu, align_every=1,
                                 per_device_train_batch_size=args.batch_size, seed=0)
        return config, StarMLPConfig(hidden_sizes=args.hidden), args.num_samples, 1e-3, f"star-mlp {args.hidden}"
    # the demo: every setting from its YAML (what `recipes/star.py` runs with no arguments), no copy here
    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.population import PopulationArguments
    from star_merge.pipeline import RunArguments

    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments], prog="alignment.py")
    (config, data_args, pop, _run_args), _ = parser.parse(["--config", args.config])
    if data_args.dataset_name != "mnist1d":
        raise SystemExit(f"alignment.py: {args.config} uses dataset {data_args.dataset_name!r}; only mnist1d is supported")
    config.num_train_epochs, config.align_every, config.seed = args.epochs, 1, 0
    config.align_overlap = False
    what = f"{pop.model_type} {pop.model_config} from {os.path.relpath(args.config)}"
    return config, pop.build_config(num_labels=10), data_args.num_samples, pop.population_learning_rate, what


def resnet18_population(args) -> None:
    """Alignment of 10 / 50 ResNet-18 anchors (cold and warm) against one epoch of plain training."""
    import torch
    import transformers as T

    from star_merge import apply_permutation, random_permutation, spec_for
    from star_merge.matching.population import align_rows
    from star_merge.matching.weight_matching import perm_objective
    from star_merge.starlight.flat import FlatLayout

    nan = float("nan")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = T.ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic", num_labels=10)
    torch.manual_seed(0)
    model = T.ResNetForImageClassification(cfg).to(device)
    layout = FlatLayout.of(model)
    spec = spec_for(model).subset(layout.names)
    print(f"ResNet-18 sized: {layout.total / 1e6:.1f}M parameters, {len(spec.perm_sizes)} permutations; "
          f"device {device}; solver {args.solver}; noise {args.noise}, drift {args.drift}")

    # one epoch of plain training (50,000 CIFAR-sized samples), from the median of a few steps
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    steps = []
    for i in range(args.train_steps + 1):
        sync()
        start = time.perf_counter()
        loss = model(pixel_values=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i:  # the first step warms up
            steps.append(time.perf_counter() - start)
    epoch_s = statistics.median(steps) * -(-50000 // args.batch_size)
    print(f"plain training: {statistics.median(steps) * 1e3:.1f} ms/step at batch {args.batch_size} -> "
          f"{epoch_s:.2f} s per 50,000-sample epoch")

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        theta0 = layout.flatten(dict(model.named_parameters())).cpu()
        std = torch.cat([torch.full((k,), float(v.std()) if v.numel() > 1 else 0.01)
                         for k, v in zip(layout.numels, layout.views(theta0).values())])

        def noisy(scale, seed):
            return theta0 + scale * std * torch.randn(theta0.shape, generator=torch.Generator().manual_seed(seed))

        n_max = max(args.anchors)
        rows = torch.empty(n_max, layout.total, device=device if args.anchor_device == "device" else "cpu",
                           pin_memory=device.type == "cuda" and args.anchor_device == "cpu")
        for i in range(n_max):
            sd = apply_permutation(spec, random_permutation(spec, 100 + i), layout.views(noisy(args.noise, 10 + i)))
            rows[i].copy_(layout.flatten(sd))
        star = noisy(args.noise, 0).to(device)
    del g
    if device.type == "cuda" and args.solver in ("auto", "cuda"):  # compile the Triton solver for every size first
        from star_merge.matching.solvers import available_solvers, solve_batch

        if "cuda" in available_solvers():
            for n in sorted(set(spec.perm_sizes.values())):
                solve_batch(torch.randn(2, n, n, device=device, dtype=torch.float64), "cuda")
            sync()
    print(f"{'N':>3} {'order':>7} {'phase':>5} {'align s':>8} {'x epoch':>8} {'sweeps':>7} {'max':>4} {'solved':>7} "
          f"{'costs s':>8} {'solve s':>8} {'groups':>7} {'cos':>9}  solvers")
    for n, order in [(n, o) for n in args.anchors for o in args.order]:
        idx, seeds = list(range(n)), list(range(n))
        work = rows[:n].clone()
        for phase, drift in [("cold", 0.0)] + [(f"w{d:g}", d) for d in args.drift]:
            theta = star if phase == "cold" else star + drift * std.to(device) * torch.randn(
                star.shape, generator=torch.Generator().manual_seed(7)).to(device)
            sync()
            start = time.perf_counter()
            res = align_rows(spec, layout, theta, work, idx, seeds, solver=args.solver, batched=BATCHED[args.batched],
                             order=order, chunk_elements=args.chunk_elements, max_iter=args.max_iter)
            sync()
            took = time.perf_counter() - start
            # the objective reached: mean over anchors of <θ, π(row)> / (|θ| |row|) over the matched tensors
            cos = statistics.mean(
                perm_objective(spec, p, layout.views(theta), layout.views(work[i].to(device)))
                / float(theta.norm() * work[i].norm()) for i, p in enumerate(res.perms))
            print(f"{n:>3} {order:>7} {phase:>5} {took:>8.2f} {took / epoch_s:>8.3f} {statistics.mean(res.sweeps):>7.2f} {max(res.sweeps):>4} "
                  f"{res.solved:>7} {res.seconds.get('costs', nan):>8.2f} {res.seconds.get('solve', nan):>8.2f} "
                  f"{res.groups:>7} {cos:>9.6f}  {res.solvers}", flush=True)
            if phase == "cold":  # keep the rows in the star's frame, as the trainer does
                for i, p in enumerate(res.perms):
                    work[i].copy_(layout.flatten(apply_permutation(spec, p, layout.views(work[i])), device=work.device))
    print("x epoch: alignment time / one plain training epoch (target on CUDA, warm, N=50: <= 0.10); costs s / "
          "solve s: the batched path's time building cost matrices / solving and accepting (nan: per-anchor path); "
          "groups: batched solves (rounds); cos: mean <θ, π(anchor)> / (|θ| |anchor|), the objective reached; "
          "solvers: problems per backend, 'argmax' = rows' maxima formed a permutation (optimal without a solver)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, nargs="+", default=[5, 20, 50], help="anchor counts to compare")
    parser.add_argument("--epochs", type=int, default=3, help="Starlight epochs per N (>= 2 to see warm starts)")
    parser.add_argument("--anchor-epochs", type=int, default=3, help="training epochs of each anchor")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="mlp512: star-mlp hidden sizes")
    parser.add_argument("--batch-size", type=int, default=128, help="mlp512 and resnet18 (demo: the config's)")
    parser.add_argument("--mu", type=float, default=0.0, help="mlp512: star_ce_weight")
    parser.add_argument("--num-samples", type=int, default=5000, help="mlp512: MNIST-1D samples (80%% train)")
    parser.add_argument("--config", default=DEMO_CONFIG, help="demo: the YAML config (default: the built-in demo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="5 and 20 anchors, 2 epochs")
    parser.add_argument("--solver", default="auto", choices=["auto", "scipy", "lapjv", "cuda"],
                        help="matching_solver of the alignment")
    parser.add_argument("--population", default="demo", choices=["demo", "mlp512", "resnet18"],
                        help="demo: the default demo's config (recipes/configs/mnist1d_cnn1d_demo.yaml); mlp512: the "
                             "former demo, star-mlp [512, 512]; resnet18: a ResNet-18 sized population")
    parser.add_argument("--batched", default="auto", choices=sorted(BATCHED),
                        help="align_rows(batched=): auto = batched on a GPU only, per-anchor weight_matching on a CPU")
    parser.add_argument("--device", default="cpu", help="resnet18: cpu | cuda (where θ and the anchors live)")
    parser.add_argument("--anchor-device", default="device", choices=["device", "cpu"],
                        help="resnet18: anchors on --device, or pinned on the host and moved a chunk at a time")
    parser.add_argument("--noise", type=float, default=2.0, help="resnet18: anchor noise, in per-tensor stds")
    parser.add_argument("--drift", type=float, nargs="+", default=[0.5, 0.1],
                        help="resnet18: star steps (per-tensor stds) before each warm alignment (phase wD)")
    parser.add_argument("--train-steps", type=int, default=5, help="resnet18: timed plain training steps")
    parser.add_argument("--max-iter", type=int, default=100,
                        help="resnet18: matching_max_iter, the sweep limit of each anchor's descent (a cap on the rounds)")
    parser.add_argument("--chunk-elements", type=int, default=None,
                        help="resnet18: align_rows(chunk_elements=), anchor numbers per batched chunk (default: "
                             "its own; each chunk is scheduled alone, so one chunk = the fewest rounds)")
    parser.add_argument("--order", nargs="+", default=None, choices=["random", "colored"],
                        help="visiting order(s) of the descent (matching_order); resnet18 default: both, side by "
                             "side; demo/mlp512 default: the config's")
    args = parser.parse_args(argv)
    if args.quick:
        args.anchors, args.epochs = [5, 20], 2
    if args.population == "resnet18":
        if args.anchors == [5, 20, 50]:
            args.anchors = [10, 50] if args.device.startswith("cuda") else [10]
        if args.batch_size == 128:
            args.batch_size = 512 if args.device.startswith("cuda") else 64
        args.order = args.order or ["random", "colored"]
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        return resnet18_population(args)

    import torch

    from star_merge.data import load_mnist1d

    if args.threads:
        torch.set_num_threads(args.threads)
    config, model_config, num_samples, anchor_lr, what = population_settings(args)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s); {what}; "
          f"batch {config.per_device_train_batch_size}, mu={config.star_ce_weight:g}, t {config.t_sampling}, "
          f"{args.epochs} epochs per N, solver {args.solver}")
    data = load_mnist1d(num_samples)
    anchors = train_anchors(model_config, data, max(args.anchors), args.anchor_epochs,
                            config.per_device_train_batch_size, lr=anchor_lr)
    print(f"{len(data['train'])} training samples, {-(-len(data['train']) // config.per_device_train_batch_size)} steps per epoch")
    rows = []
    for n in args.anchors:
        print(f"[N={n}] Starlight run ...", flush=True)
        rows.append(run(n, anchors, model_config, data, args, config))
    print()
    print("epoch = the epoch's training time without its alignment; align/(epoch+align) is the share of wall time")
    print(f"{'N':>3} {'epoch s':>8} {'align0 s':>9} {'sweeps0':>8} {'align s':>8} {'sweeps':>7} {'x epoch':>8} "
          f"{'share':>6} {'scipy s':>8} {'x scipy':>8} {'2 procs s':>10} {'final s':>8}")
    for r in rows:
        share = r["align_warm_s"] / (r["epoch_s"] + r["align_warm_s"])
        print(f"{r['N']:>3} {r['epoch_s']:>8.3f} {r['align0_s']:>9.3f} {r['iters0']:>8.2f} {r['align_warm_s']:>8.3f} "
              f"{r['iters_warm']:>7.2f} {r['align_warm_s'] / r['epoch_s']:>8.2f} {share:>6.1%} "
              f"{r['scipy_warm_s']:>8.3f} {r['scipy_warm_s'] / r['align_warm_s']:>8.2f} {r['two_warm_s']:>10.3f} "
              f"{r['final_s']:>8.3f}")
        print(f"    assignment problems of the final alignment by backend: {r['solvers']}")
    print("align0/sweeps0: epoch 0 (from the identity); align/sweeps: warm-started epochs (median); x epoch: align / "
          "epoch (target <= 2 at N=50); scipy s: the same alignment with --solver scipy, side by side; "
          "2 procs: simulated slice of the warm alignment")


if __name__ == "__main__":
    main()
