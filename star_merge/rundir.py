"""The run directory written by ``recipes/star.py`` and read by evaluation, BMA export and publishing.

Layout (see docs/run_directory.md)::

    starlight.json                    manifest: settings, dataset arguments, members with sources
    population/anchor-XX, held-out-XX HF checkpoints trained by the recipe (when not given as Hub ids)
    star/                             HF checkpoint of the star model
    anchor_permutations.safetensors   "<member>::<perm name>" -> permutation aligning that anchor to the star
    checkpoints/                      Accelerate state for --resume_from_checkpoint
    report.json, report.md, *.png     evaluation
    bma/                              BMA wrapper
    README.md                         model card
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .io import atomic_file
from .modeling import load_checkpoint
from .errors import UserError

__all__ = [
    "RunDirectory", "RunPaths", "NotARunDirectoryError", "Member", "MANIFEST_NAME", "load_checkpoint",
    "load_permutations", "path_in_run", "save_permutations",
]

MANIFEST_NAME = "starlight.json"
PERMUTATIONS_NAME = "anchor_permutations.safetensors"
PLOT_NAMES = {
    "curves": "interpolation_curves.png",
    "distribution": "barrier_distribution.png",
    "reliability": "reliability.png",
}


@dataclass
class Member:
    """One population member: ``name`` (anchor-00, held-out-03), ``role`` (anchor | held-out), where it came from."""

    name: str
    role: str
    path: str
    source: str
    repo_id: str | None = None
    revision: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def path_in_run(path: str, run_dir: str) -> str | None:
    """``path`` relative to ``run_dir`` when it lies inside it (``run_dir`` itself is ``"."``), else None.

    Compared by whole path components: ``/runs/out2/x`` does not lie inside ``/runs/out``.
    """
    path, run_dir = os.path.abspath(path), os.path.abspath(run_dir)
    if os.path.commonpath([path, run_dir]) != run_dir:
        return None
    return os.path.relpath(path, run_dir)


class NotARunDirectoryError(FileNotFoundError):
    """A folder given as a run directory has no manifest."""


class RunPaths:
    """Every path of a run directory — the only place they are spelled out. Nothing is read here.

    ``RunPaths(out)`` is what a run writes into; :class:`RunDirectory` reads an existing one.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def relative(self, path: str) -> str:
        """``path`` relative to the run when it lies inside it (as written in the manifest and report), else as given."""
        inside = path_in_run(path, self.path)
        return path if inside is None else inside

    @property
    def manifest_path(self) -> str:
        return self.join(MANIFEST_NAME)

    @property
    def star_path(self) -> str:
        return self.join("star")

    @property
    def bma_path(self) -> str:
        return self.join("bma")

    @property
    def bma_card_path(self) -> str:
        return self.join("bma", "README.md")

    @property
    def card_path(self) -> str:
        return self.join("README.md")

    @property
    def report_json(self) -> str:
        return self.join("report.json")

    @property
    def report_md(self) -> str:
        return self.join("report.md")

    @property
    def permutations_path(self) -> str:
        return self.join(PERMUTATIONS_NAME)

    @property
    def checkpoints_path(self) -> str:
        return self.join("checkpoints")

    @property
    def logs_path(self) -> str:
        return self.join("logs")

    @property
    def population_path(self) -> str:
        return self.join("population")

    def plot(self, kind: str) -> str:
        """``curves`` | ``distribution`` | ``reliability`` -> the PNG's path."""
        return self.join(PLOT_NAMES[kind])

    def report_files(self) -> list[tuple[str, str]]:
        """(name, path) of report.json, report.md and every top-level PNG present (what is published)."""
        names = sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []
        return [(f, self.join(f)) for f in names
                if (f in ("report.json", "report.md") or f.lower().endswith(".png")) and not f.startswith(".")
                and os.path.isfile(self.join(f)) and not os.path.islink(self.join(f))]  # never a linked file

    # Everything a run writes except population/ (which is reusable across runs: members are seeded).
    RESULT_ENTRIES = ("star", "bma", "checkpoints", "logs", MANIFEST_NAME, PERMUTATIONS_NAME, "report.json",
                      "report.md", "README.md", *PLOT_NAMES.values())

    def existing_results(self) -> list[str]:
        return [e for e in self.RESULT_ENTRIES if os.path.lexists(self.join(e))]

    def is_run(self) -> bool:
        return os.path.isfile(self.manifest_path)

    def require(self, error: type[Exception] = NotARunDirectoryError) -> "RunPaths":
        """Raise ``error`` (one message everywhere) unless this folder holds a run manifest."""
        if not self.is_run():
            raise error(
                f"{self.path} is not a star-merge run directory (no {MANIFEST_NAME}); "
                "create one with `accelerate launch recipes/star.py --output_dir ...`"
            )
        return self


class RunDirectory(RunPaths):
    """Read access to a Starlight run directory."""

    def __init__(self, path: str):
        super().__init__(path)
        self.require()
        try:
            with open(self.manifest_path) as f:
                self.manifest: dict[str, Any] = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{self.manifest_path} is not valid JSON ({e}); the run directory is damaged, rerun "
                             "recipes/star.py with --overwrite_output_dir") from None

    # ---------------------------------------------------------------- members
    @cached_property
    def members(self) -> list[Member]:
        out = []
        for m in self.manifest["members"]:
            m = dict(m)
            if not os.path.isabs(m["path"]):
                m["path"] = os.path.join(self.path, m["path"])
            out.append(Member(**m))
        return out

    @property
    def anchors(self) -> list[Member]:
        return [m for m in self.members if m.role == "anchor"]

    @property
    def held_out(self) -> list[Member]:
        return [m for m in self.members if m.role == "held-out"]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise UserError(f"run {self.path} has no member {name!r}")

    # ---------------------------------------------------------------- models
    def load_star(self, device="cpu"):
        return load_checkpoint(self.star_path, device)

    def load_member(self, name: str, device="cpu"):
        return load_checkpoint(self.member(name).path, device)

    @cached_property
    def spec(self):
        from transformers import AutoConfig

        from .adapters import spec_for

        return spec_for(AutoConfig.from_pretrained(self.star_path), symmetry=self.symmetry)

    @cached_property
    def symmetry(self) -> str:
        """``orthogonal`` when the run's stored maps hold an orthogonal one (the star was trained in folded form
        with ``StarlightConfig.symmetry="orthogonal"``), else ``permutation``."""
        if not self.has_permutations():
            return "permutation"
        maps = self.anchor_permutations()
        return "orthogonal" if any(v.is_floating_point() for perm in maps.values() for v in perm.values()) else "permutation"

    def has_permutations(self) -> bool:
        return os.path.isfile(self.permutations_path)

    def anchor_permutations(self) -> dict[str, dict[str, torch.Tensor]]:
        """member name -> the permutation aligning that anchor to the final star."""
        return load_permutations(self.permutations_path)

    def aligned_anchor_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Anchor state dicts permuted into the star's frame, in manifest order (folded first in a run of
        symmetry ``orthogonal``, whose star is in folded form)."""
        from .adapters.folding import fold_state_dict
        from .spec import apply_permutation

        perms = self.anchor_permutations()
        out = {}
        for m in self.anchors:
            model = load_checkpoint(m.path)
            sd = model.state_dict()
            if self.symmetry == "orthogonal":
                sd = fold_state_dict(model.config, sd)[0]
            out[m.name] = apply_permutation(self.spec.subset(sd), perms[m.name], sd)
        return out

    # ---------------------------------------------------------------- data
    @property
    def data_args(self):
        from .data import DataArguments

        return DataArguments(**self.manifest["data"])

    @cached_property
    def processor(self):
        """The run's tokenizer / image processor: the one saved in star/, else the manifest's source (or None)."""
        from .processing import has_processor_files, load_processor

        source = self.manifest.get("processor")
        if source and not os.path.isabs(source) and os.path.exists(self.join(source)):
            source = self.join(source)
        for folder in (self.star_path, source):
            if folder and has_processor_files(folder):
                return load_processor(folder)
        return load_processor(source) if source and not os.path.isdir(source) else None

    def load_data(self):
        """``(dataset, collate_fn)``: the run's data made model-ready with its processor, without augmentation
        (what evaluation, BatchNorm resets and the BMA export see)."""
        from .population_data import load_population_data

        data = load_population_data(self.data_args, [self._model_path()], processor=self.processor,
                                    model_input_name=self.manifest.get("model_input_name"),
                                    seed=int(self.config.get("seed", 0)), evaluation=True)
        return data.dataset, data.collate_fn

    def load_dataset(self):
        """The run's model-ready dataset (see :meth:`load_data`, which also returns the batch collator)."""
        return self.load_data()[0]

    def task(self):
        """The run's task (``--task`` if it was given, else from the star's architecture)."""
        from .modeling import load_config
        from .tasks import task_for

        return task_for(load_config(self._model_path()), name=self.data_args.task)

    def _model_path(self) -> str:
        """The checkpoint that decides the run's task and config: the star, else (not trained yet) the first member."""
        return self.star_path if os.path.isdir(self.star_path) else self.members[0].path

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]


def load_permutations(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """Read a file written by :func:`save_permutations`: member -> permutation name -> LongTensor."""
    from safetensors.torch import load_file

    out: dict[str, dict[str, torch.Tensor]] = {}
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error type for a truncated file)
        raise UserError(f"{path} is truncated or not a safetensors file ({str(e).strip().splitlines()[0]}); "
                         "rerun recipes/star.py with --resume_from_checkpoint latest to rewrite it") from None
    for k, v in tensors.items():
        member, perm = k.split("::", 1)
        out.setdefault(member, {})[perm] = v
    return out


def save_permutations(path: str, perms: dict[str, dict[str, torch.Tensor]]) -> None:
    """Atomically write member -> permutation dicts as one safetensors file."""
    from safetensors.torch import save_file

    flat = {f"{member}::{p}": v.contiguous().to(torch.float64 if v.is_floating_point() else torch.int64).cpu()
            for member, perm in perms.items() for p, v in perm.items()}
    with atomic_file(path, suffix=".safetensors") as tmp:
        save_file(flat, tmp, metadata={"format": "star-merge-permutations"})
