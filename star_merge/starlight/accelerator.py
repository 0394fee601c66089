"""The Accelerator a Starlight run uses (checkpoint naming, trackers, seedable sampler, CPU process groups)."""

from __future__ import annotations


import torch

from ..rundir import RunPaths

__all__ = ["make_accelerator"]


def make_accelerator(config):
    """An ``Accelerator`` set up from a :class:`~star_merge.starlight.StarlightConfig`."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    project = ProjectConfiguration(
        project_dir=config.output_dir,
        logging_dir=RunPaths(config.output_dir).logs_path if config.output_dir else None,
        automatic_checkpoint_naming=False,  # numbering and rotation: rotation.py (never drops the last good one)
    )
    log_with = config.trackers()  # any trackers Accelerate supports (report_to: comma-separated)
    # On a machine without an accelerator, cpu=True lets torchrun / `accelerate launch --multi_gpu`
    # processes form one gloo group (MULTI_CPU); without it each process would train alone.
    return Accelerator(
        cpu=not _has_accelerator(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_config=project,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu is not None and xpu.is_available()) or (mps is not None and mps.is_available()))
