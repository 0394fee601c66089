"""Starlight checkpoint state: progress, anchor permutations, θ and the LR schedule, beside Accelerate's state.

Written as JSON + safetensors (no pickle of star-merge's own; Accelerate's files beside it are read back by
``load_state`` with ``torch.load(weights_only=True)``). Checkpoints live in ``RUN/checkpoints/checkpoint_N``;
numbering, atomic saves, rotation and resume with fallback are in :mod:`.rotation`.
"""

from __future__ import annotations

import json
import os

import torch

from .rotation import STATE_FILE, CheckpointMismatch, find_latest_checkpoint
from ..errors import UserError

__all__ = ["StarlightState", "find_latest_checkpoint"]


class StarlightState:
    """Progress and anchor alignments of a run, saved beside Accelerate's state in every checkpoint.

    JSON + safetensors (θ, the anchors' permutations, the position in training and the LR scheduler).
    """

    JSON_NAME = STATE_FILE  # written last: marks a complete checkpoint
    PERMS_NAME = "starlight_permutations.safetensors"
    THETA_NAME = "starlight_theta.safetensors"

    def __init__(self):
        self.epoch = 0  # epochs completed
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.global_step = 0  # optimizer steps
        self.aligned_epoch = -1  # the epoch whose start alignment is in ``perms``
        self.perms: dict[str, dict[str, torch.Tensor]] = {}
        self.history: list[dict] = []
        self.schedule: dict | None = None  # the re-alignment schedule's state (schedule.py)

    def save(self, folder: str, scheduler, theta: torch.Tensor, num_processes: int = 1,
             schedule: dict | None = None) -> None:
        from safetensors.torch import save_file

        from ..io import atomic_write_json
        from ..rundir import save_permutations

        save_file({"theta": theta.detach().contiguous().cpu()}, os.path.join(folder, self.THETA_NAME))
        save_permutations(os.path.join(folder, self.PERMS_NAME), self.perms)
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(os.path.join(folder, self.JSON_NAME), {
            "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "global_step": self.global_step,
            "aligned_epoch": self.aligned_epoch, "history": self.history, "scheduler": sched,
            "num_processes": num_processes, "schedule": schedule,
        })

    @classmethod
    def check_processes(cls, folder: str, num_processes: int) -> None:
        """A checkpoint resumes at the number of processes that wrote it (each holds its own anchors, data
        position and RNG state): another number is a one-line error, not a fallback to an older checkpoint."""
        path = os.path.join(folder, cls.JSON_NAME)
        if not os.path.isfile(path):
            return
        with open(path) as f:
            saved = json.load(f).get("num_processes", num_processes)
        if saved != num_processes:
            raise CheckpointMismatch(f"{folder} was written by {saved} process(es), this run has {num_processes}; "
                                     f"resume with the same number (accelerate launch --num_processes {saved})")

    def load(self, folder: str, scheduler, theta: torch.Tensor) -> None:
        from safetensors.torch import load_file

        from ..rundir import load_permutations

        path = os.path.join(folder, self.JSON_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} is not a complete Starlight checkpoint (no {self.JSON_NAME})")
        with open(path) as f:
            d = json.load(f)
        self.epoch, self.batches_in_epoch = int(d["epoch"]), int(d["batches_in_epoch"])
        self.global_step, self.aligned_epoch = int(d["global_step"]), int(d["aligned_epoch"])
        self.history = list(d["history"])
        self.schedule = d.get("schedule")
        perms_path = os.path.join(folder, self.PERMS_NAME)
        self.perms = load_permutations(perms_path) if os.path.isfile(perms_path) else {}
        scheduler.load_state_dict({**scheduler.state_dict(), **d["scheduler"]})
        saved = load_file(os.path.join(folder, self.THETA_NAME))["theta"]
        if saved.shape != theta.shape:
            raise UserError(f"{folder} holds a star of {saved.numel()} parameters, this model has {theta.numel()}")
        with torch.no_grad():
            theta.copy_(saved)
