"""Time one Starlight optimizer step against one ordinary training step of the same model, batch and device.

    python benchmarks/starlight_step.py                      # star-mlp, star-cnn1d, the digits ResNet (CPU)
    python benchmarks/starlight_step.py --quick              # fewer repetitions
    python benchmarks/starlight_step.py --device cuda --models resnet18   # ResNet-18 sized, batch 512

Variants, all through one Accelerator exactly as ``StarlightTrainer.train`` drives them (``prepare``,
``accumulate``, ``autocast``, ``backward``, AdamW, cosine LambdaLR):

- ``plain``: ``model(**batch).loss`` backward, ``optimizer.step()`` (ordinary training, the baseline);
- ``starlight``: the trainer's step: seeded (anchor, t) draw, ``FlatStar`` (one fused ``lerp`` over the
  flat θ) + ``torch.func.functional_call`` + cross-entropy + backward + step (``--mu`` > 0 adds the
  "star + CE" term, i.e. a second forward/backward through θ itself; the default demo uses μ=1);
- ``dict-lerp``: one ``lerp`` per parameter tensor (θ kept as ordinary parameters) + ``functional_call``;
- ``copy-model``: the research code's way: copy the interpolated weights into a second model, run it,
  and hand its gradient (times 1-t) back to θ.

Repetitions are interleaved (every variant once per round, order rotated) and the ratio to ``plain`` is
the median over rounds of the ratio measured within each round. A one-step check first confirms that the
Starlight variants produce the same update of θ.
"""

from __future__ import annotations

import argparse
import statistics
import time

MODEL_CHOICES = ("mlp", "cnn1d", "resnet", "resnet18")


def model_setup(name: str, batch_size: int | None = None):
    """(config, batch size, input name, input shape) of a benchmark model."""
    import transformers as T

    from star_merge.models import StarCNN1dConfig, StarMLPConfig

    if name == "mlp":  # the default demo (recipes/configs/mnist1d_mlp.yaml): 40-512-512-10, batch 128
        return StarMLPConfig(hidden_sizes=[512, 512]), batch_size or 128, "input_values", (40,)
    if name == "cnn1d":  # recipes/configs/mnist1d_cnn1d.yaml
        return StarCNN1dConfig(channels=[32, 64, 64]), batch_size or 128, "input_values", (40,)
    if name == "resnet":  # recipes/configs/digits_resnet.yaml (transformers ResNetForImageClassification)
        cfg = T.ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                             layer_type="basic", downsample_in_first_stage=False, num_labels=10,
                             architectures=["ResNetForImageClassification"])
        return cfg, batch_size or 64, "pixel_values", (1, 8, 8)
    if name == "resnet18":  # ResNet-18 sized (11.2M parameters) on CIFAR-sized images, the GPU target
        cfg = T.ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                             layer_type="basic", downsample_in_first_stage=False, num_labels=10,
                             architectures=["ResNetForImageClassification"])
        return cfg, batch_size or 512, "pixel_values", (3, 32, 32)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_CHOICES)}")


def make_accelerator(device: str):
    from accelerate import Accelerator

    return Accelerator(cpu=(device == "cpu"))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One model, its anchors and a fixed batch; builds each variant's ``step()`` closure."""

    def __init__(self, name: str, num_anchors: int, device: str, batch_size: int | None = None, seed: int = 0,
                 anchor_device: str = "cpu", anchors=None):
        """``anchors``: a ready [N, P] stack (e.g. the trainer's ``anchors`` matrix); default N random inits."""
        import torch

        from star_merge.starlight.flat import FlatLayout
        from star_merge.modeling import build_model

        self.config, self.batch_size, self.input_name, shape = model_setup(name, batch_size)
        self.acc = make_accelerator(device)
        self.device = self.acc.device
        self.init = build_model(self.config, seed=seed).state_dict()
        self.layout = FlatLayout.of(build_model(self.config, seed=seed))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.batch_size, *shape, generator=g)
        y = torch.randint(self.config.num_labels, (self.batch_size,), generator=g)
        self.batch = {self.input_name: x.to(self.device), "labels": y.to(self.device)}
        if anchors is None:
            anchors = torch.stack([self.layout.flatten(build_model(self.config, seed=seed + 1 + i).state_dict())
                                   for i in range(num_anchors)])
            if self.device.type != "cpu":  # as the trainer's anchor matrix
                anchors = anchors.to(self.device) if anchor_device == "accelerator" else anchors.pin_memory()
        self.anchors = anchors
        self.num_params = self.layout.total

    def draw(self, step: int) -> tuple[int, float]:
        """The trainer's sample_anchor_and_t (a fresh seeded generator per minibatch)."""
        import torch

        from star_merge.seeding import mix_seed as _mix_seed

        g = torch.Generator().manual_seed(_mix_seed(0, 0, step, 0))
        n = int(torch.randint(len(self.anchors), (1,), generator=g))
        return n, float(torch.rand((), generator=g))

    def _model(self):
        from star_merge.modeling import build_model

        model = build_model(self.config, seed=0)
        model.load_state_dict(self.init)
        return model.to(self.device).train()

    def _opt_sched(self, params):
        from star_merge.population.training import make_optimizer, make_scheduler

        opt = make_optimizer(params, "adamw", 1e-3, 0.0)
        return opt, make_scheduler(opt, "cosine", 10_000)

    # ------------------------------------------------------------------ variants
    def plain(self):
        acc, batch = self.acc, self.batch
        model = self._model()
        opt, sched = self._opt_sched(model.parameters())
        model, opt = acc.prepare(model, opt)

        def step(i: int) -> float:
            with acc.accumulate(model):
                with acc.autocast():
                    loss = model(**batch).loss
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return step, lambda: self.layout.flatten(dict(acc.unwrap_model(model).named_parameters())).detach()

    def starlight(self, mu: float = 0.0):
        """The inner loop of ``StarlightTrainer.train`` (trainer.py), line for line."""
        import torch
        from torch import nn

        from star_merge.starlight.flat import FlatBoundModel, FlatStar

        acc, batch, layout, device, anchors = self.acc, self.batch, self.layout, self.device, self.anchors
        model = self._model()
        flat_star = FlatStar(layout.flatten(model.state_dict()).to(device))
        bound = FlatBoundModel(model, layout, device)
        opt, sched = self._opt_sched([flat_star.theta])
        opt = acc.prepare(opt)
        theta_param = flat_star.theta
        inputs = {self.input_name: batch[self.input_name]}
        labels = batch["labels"]

        def step(i: int) -> float:
            n, t = self.draw(i)
            with acc.accumulate(flat_star):
                anchor = anchors[n].to(device, non_blocking=True)
                with torch.no_grad():
                    torch.lerp(theta_param, anchor, t, out=bound.weights)
                bound.grads.zero_()
                with acc.autocast():
                    loss = nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
                acc.backward(loss)
                grad = bound.grads.mul(1.0 - t)
                if mu > 0:
                    with torch.no_grad():
                        bound.weights.copy_(theta_param)
                    bound.grads.zero_()
                    with acc.autocast():
                        star_loss = mu * nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
                    acc.backward(star_loss)
                    grad += bound.grads
                    loss = loss + star_loss
                theta_param.grad = grad if theta_param.grad is None else theta_param.grad.add_(grad)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return step, lambda: theta_param.detach().clone()

    def dict_lerp(self):
        """θ as ordinary parameters, one lerp per tensor, functional_call."""
        import torch
        from torch import nn
        from torch.func import functional_call

        acc, batch, layout, device, anchors = self.acc, self.batch, self.layout, self.device, self.anchors
        model = self._model()
        params = {k: nn.Parameter(v.detach().clone()) for k, v in model.named_parameters()}
        opt, sched = self._opt_sched(list(params.values()))
        opt = acc.prepare(opt)
        inputs = {self.input_name: batch[self.input_name]}
        labels = batch["labels"]

        def step(i: int) -> float:
            n, t = self.draw(i)
            views = layout.views(anchors[n].to(device, non_blocking=True))
            with acc.autocast():
                interp = {k: torch.lerp(p, views[k], t) for k, p in params.items()}
                logits = functional_call(model, interp, args=(), kwargs=inputs).logits
                loss = nn.functional.cross_entropy(logits.float(), labels)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return step, lambda: layout.flatten(params).detach()

    def copy_model(self):
        """The research code's way: copy the interpolated weights into a second model; grad × (1-t) to θ."""
        import torch
        from torch import nn

        acc, batch, layout, device, anchors = self.acc, self.batch, self.layout, self.device, self.anchors
        star = self._model()
        work = self._model()
        star_params = list(star.parameters())
        work_params = list(work.parameters())
        opt, sched = self._opt_sched(star_params)
        opt = acc.prepare(opt)
        names = [k for k, _ in star.named_parameters()]
        inputs = {self.input_name: batch[self.input_name]}
        labels = batch["labels"]

        def step(i: int) -> float:
            n, t = self.draw(i)
            views = layout.views(anchors[n].to(device, non_blocking=True))
            with torch.no_grad():
                for k, p, w in zip(names, star_params, work_params):
                    torch.lerp(p, views[k], t, out=w)
            with acc.autocast():
                logits = work(**inputs).logits
                loss = nn.functional.cross_entropy(logits.float(), labels)
            acc.backward(loss)
            for p, w in zip(star_params, work_params):
                p.grad = w.grad.mul_(1 - t)
                w.grad = None
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return step, lambda: layout.flatten(dict(star.named_parameters())).detach()


def check_same_update(bench: Bench) -> tuple[float, float]:
    """(largest θ difference between the trainer's step and the alternatives, largest |θ - θ0|) after 3 steps."""
    ref_step, ref_theta = bench.starlight()
    theta0 = ref_theta()
    thetas = []
    for make in (bench.dict_lerp, bench.copy_model):
        step, theta = make()
        for i in range(3):
            step(i)
        thetas.append(theta())
    for i in range(3):
        ref_step(i)
    ref = ref_theta()
    return max(float((t - ref).abs().max()) for t in thetas), float((ref - theta0).abs().max())


def time_variants(steps: dict, rounds: int, steps_per_round: int, device, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per step of every variant, ``rounds`` interleaved measurements (order rotated each round)."""
    names = list(steps)
    for name in names:
        for i in range(warmup):
            steps[name](i)
    sync(device)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            for i in range(steps_per_round):
                steps[name](r * steps_per_round + i)
            sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_round)
    return times


def paired_ratio(times: dict[str, list[float]], name: str, base: str = "plain") -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def benchmark_model(name: str, args) -> list[dict]:
    bench = Bench(name, args.anchors, args.device, args.batch_size, anchor_device=args.anchor_device)
    diff, moved = check_same_update(bench)
    steps = {"plain": bench.plain()[0], "starlight": bench.starlight()[0]}
    if args.mu > 0:
        steps[f"starlight mu={args.mu:g}"] = bench.starlight(mu=args.mu)[0]
    if not args.no_alternatives:
        steps["dict-lerp"] = bench.dict_lerp()[0]
        steps["copy-model"] = bench.copy_model()[0]
    steps_per_round = args.steps or max(1, min(20, int(0.25 / max(_probe(steps["plain"], bench.device), 1e-6))))
    times = time_variants(steps, args.rounds, steps_per_round, bench.device)
    rows = []
    for v in steps:
        rows.append({
            "model": name, "params": bench.num_params, "batch": bench.batch_size, "variant": v,
            "ms": 1e3 * statistics.median(times[v]), "ratio": paired_ratio(times, v),
            "lo": min(a / b for a, b in zip(times[v], times["plain"])),
            "hi": max(a / b for a, b in zip(times[v], times["plain"])),
        })
    rows[0]["check"], rows[0]["moved"] = diff, moved
    return rows


def _probe(step, device) -> float:
    sync(device)
    start = time.perf_counter()
    step(10_000)
    sync(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_CHOICES, default=None,
                        help="default: mlp cnn1d resnet on cpu, plus resnet18 on cuda")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: each model's own (see model_setup)")
    parser.add_argument("--anchors", type=int, default=5, help="anchor models (random inits) to draw from")
    parser.add_argument("--anchor-device", default="cpu", choices=["cpu", "accelerator"],
                        help="StarlightConfig.anchor_device (only matters on cuda)")
    parser.add_argument("--mu", type=float, default=1.0, help="also time 'star + CE' with this μ (0: skip)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved measurement rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: ~0.25 s of plain steps)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier on a shared machine; 0 = torch's default)")
    parser.add_argument("--no-alternatives", action="store_true", help="skip dict-lerp and copy-model")
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 5)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["mlp", "cnn1d", "resnet"] + (["resnet18"] if args.device == "cuda" else []))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {where}; {args.rounds} interleaved rounds, {args.anchors} anchors, "
          f"anchor_device={args.anchor_device}")
    rows = []
    for name in models:
        print(f"[{name}] building model, anchors and batch ...", flush=True)
        rows += benchmark_model(name, args)
    print()
    print(f"{'model':<9} {'params':>10} {'batch':>5}  {'variant':<18} {'ms/step':>9} {'x plain':>8}  {'(min-max)':>13}")
    for r in rows:
        print(f"{r['model']:<9} {r['params']:>10,} {r['batch']:>5}  {r['variant']:<18} {r['ms']:>9.3f} "
              f"{r['ratio']:>8.3f}  ({r['lo']:.2f}-{r['hi']:.2f})")
    for r in rows:
        if "check" in r:
            ok = "ok" if r["check"] <= 1e-3 * r["moved"] else "MISMATCH"
            print(f"{r['model']}: after 3 steps dict-lerp / copy-model differ from the trainer's step by "
                  f"max {r['check']:.1e} (θ itself moved by max {r['moved']:.1e}): {ok}")


if __name__ == "__main__":
    main()
