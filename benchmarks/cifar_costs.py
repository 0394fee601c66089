"""Expected cost of the paper's CIFAR-10 configs (recipes/configs/cifar10_*.yaml) on one GPU and on 8.

Estimated, not timed: the FLOPs of one training step per sample are measured here on the CPU
(``torch.utils.flop_counter`` over forward + backward at 32x32), and turned into time with the one H200 figure
docs/performance.md documents: the ResNet-18-sized transformers ResNet at batch 512 took 11.571 ms per plain step
(fp32, ``benchmarks/starlight_step.py --device cuda --models resnet18``); its FLOPs, measured the same way, give the
H200's effective rate on such a step. Work counted: every member's epochs, Starlight's epochs (a Starlight step
measured 0.97-1.02x a plain step on the H200) and the evaluation's interpolation paths (forward passes: BatchNorm
statistics over the train split + the test split at every point, a forward pass counted as 1/3 of a step). On 8
GPUs the members are split over the processes and Starlight and the evaluation are data parallel, taken as ideal.

    python benchmarks/cifar_costs.py
"""

from __future__ import annotations

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200_STEP_S, H200_BATCH = 11.571e-3, 512  # docs/performance.md, "GPU (ResNet-18 sized, batch 512)"
TRAIN, TEST = 50_000, 10_000  # CIFAR-10


def step_flops(model) -> float:
    """FLOPs of one training step (forward + backward) per sample at 32x32."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, labels=y).loss.backward()
    return counter.get_total_flops() / 2


def h200_rate() -> float:
    import transformers as T

    cfg = T.ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic", downsample_in_first_stage=False, num_labels=10)
    return step_flops(T.ResNetForImageClassification(cfg)) * H200_BATCH / H200_STEP_S


def main() -> int:
    sys.path.insert(0, ROOT)
    from transformers import AutoModelForImageClassification

    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.pipeline import RunArguments
    from star_merge.population import PopulationArguments
    from star_merge.starlight import StarlightConfig

    torch.manual_seed(0)
    rate = h200_rate()
    print(f"H200 effective rate (fp32, from docs/performance.md): {rate / 1e12:.2f} TFLOP/s")
    print("config                     params  GFLOP/sample  member-epochs  star-epochs  eval-paths  1 GPU h  8 GPU h")
    for name in ("cifar10_resnet18", "cifar10_vgg11", "cifar10_wrn22", "cifar10_densenet40"):
        parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments])
        config, _, pop, run = parser.parse(["--config", os.path.join(ROOT, "recipes", "configs", f"{name}.yaml")])[0]
        model = AutoModelForImageClassification.from_config(pop.build_config(num_labels=10))
        flops = step_flops(model)
        members = (pop.num_anchors + pop.num_held_out) * pop.population_epochs
        pairs = pop.num_held_out + (pop.num_anchors * pop.num_held_out if run.eval_pairs == "all"
                                    else min(int(run.eval_pairs), pop.num_anchors * pop.num_held_out))
        eval_epochs = pairs * run.eval_num_points * (TRAIN + TEST) / TRAIN / 3
        hours = (members + config.num_train_epochs + eval_epochs) * TRAIN * flops / rate / 3600
        print(f"{name:24s} {sum(p.numel() for p in model.parameters()):>9,}  {flops / 1e9:12.3f}  {members:13,}"
              f"  {config.num_train_epochs:11,}  {pairs:10,}  {hours:7.1f}  {hours / 8:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
