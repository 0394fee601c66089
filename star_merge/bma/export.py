"""Build, save, export and load star-domain BMA wrappers; the ``star-merge export-bma`` command."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .. import models as _builtin_models  # registers star-mlp / star-cnn1d with the Auto classes
from .._faults import fault_point
from ..io import atomic_folder
from ..processing import copy_processor_files, timm_pretrained_cfg
from .configuration_star_bma import StarBMAConfig
from .modeling_star_bma import HEAD_AUTO_SUFFIX, HEAD_CLASSES, StarBMAPreTrainedModel, head_of
from ..errors import UserError

__all__ = ["BMA_CODE_FILES", "bma_predict_proba", "code_files", "build_bma", "export_bma", "load_bma", "save_bma"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_MODELS = os.path.dirname(os.path.abspath(_builtin_models.__file__))
#: Code saved beside the weights for trust_remote_code=True: the wrapper always; for star-merge's built-in members
#: also their model files and the entry module that registers them (named in auto_map): ``builtin_members.py``
#: for star-mlp / star-cnn1d, ``builtin_vision_members.py`` for the CIFAR image classifiers.
WRAPPER_CODE = (os.path.join(_HERE, "configuration_star_bma.py"), os.path.join(_HERE, "modeling_star_bma.py"))
_MEMBER_CODE = {
    entry: (os.path.join(_HERE, f"{entry}.py"), *(os.path.join(_MODELS, f) for f in files))
    for entry, files in (("builtin_members", ("common.py", "mlp.py", "cnn1d.py")),
                         ("builtin_vision_members", _builtin_models.VISION_CODE))
}
#: member model_type -> the entry module of its BMA (its code: ``_MEMBER_CODE[entry]``).
MEMBER_ENTRY = {**{t: "builtin_members" for t in _builtin_models.FEATURE_MODEL_TYPES},
                **{t: "builtin_vision_members" for t in _builtin_models.VISION_MODEL_TYPES}}
#: Every code file an exported BMA may hold (what publishing accepts in bma/).
BMA_CODE_FILES = tuple(dict.fromkeys(os.path.basename(p) for p in WRAPPER_CODE + sum(_MEMBER_CODE.values(), ())))


def code_files(member_model_type: str | None) -> tuple[str, ...]:
    """The code files (paths) a BMA of ``member_model_type`` members ships."""
    entry = MEMBER_ENTRY.get(member_model_type)
    return WRAPPER_CODE + (_MEMBER_CODE[entry] if entry else ())


def build_bma(
    star: nn.Module,
    anchors: Mapping[str, Mapping[str, torch.Tensor]],
    num_samples: int = 16,
    seed: int = 0,
    t_distribution: str = "uniform",
    bn_dataloader: Iterable | None = None,
    bn_max_batches: int | None = None,
    samples: list | None = None,
) -> StarBMAPreTrainedModel:
    """A BMA wrapper (in memory) over the star model ``star`` and ``anchors`` (name -> state dict aligned to it).

    BatchNorm members need ``bn_dataloader`` (training data): each sample's statistics are recomputed over it.
    ``samples``: an explicit ``[[anchor index n, t], ...]`` list of ``num_samples`` points instead of a draw
    from ``seed`` and ``t_distribution`` (kept in the config as given).
    """
    from ..batchnorm import reset_bn_stats

    if int(num_samples) < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    if not anchors:
        raise UserError("a BMA needs at least one aligned anchor; the run has none")
    member_config = star.config.to_dict()
    member_config["architectures"] = [type(star).__name__]
    head = head_of(type(star).__name__)
    config = StarBMAConfig(
        member_config=member_config,
        num_anchors=len(anchors),
        num_samples=num_samples,
        t_distribution=t_distribution,
        seed=seed,
        member_names=list(anchors),
        samples=samples,
        # from the live config: a timm_wrapper config's to_dict() keeps label_names, not id2label
        id2label=dict(star.config.id2label),
        label2id=dict(star.config.label2id or {}),
    )
    model = HEAD_CLASSES[head](config)
    model.star.fill(star.state_dict(), "the star")
    for i, (name, state_dict) in enumerate(anchors.items()):
        model.anchors[i].fill(state_dict, f"anchor {name!r}")
    if model.bn_buffer_names:
        if bn_dataloader is None:
            raise UserError(
                f"{type(star).__name__} has BatchNorm: pass bn_dataloader (training data) so the statistics of every "
                "sampled point are recomputed"
            )
        work = model.member_class(model.member_config)
        for s in range(config.num_samples):
            work.load_state_dict(model.sample_state_dict(s))
            reset_bn_stats(work, bn_dataloader, max_batches=bn_max_batches)
            state = work.state_dict()
            model.bn_stats[s].fill(
                {name: state[name] for name in model.bn_buffer_names}, f"BatchNorm statistics of sample {s}"
            )
    return model.eval()


def save_bma(
    model: StarBMAPreTrainedModel,
    output_dir: str,
    overwrite: bool = False,
    processor=None,
    processor_files_from: str | None = None,
) -> str:
    """Write ``model`` to ``output_dir`` atomically: config.json (with ``auto_map``), model.safetensors, the code
    for ``trust_remote_code=True``, and the tokenizer / image processor (``processor`` or files copied from
    ``processor_files_from``, e.g. the star checkpoint)."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_folder(output_dir) as tmp:
        member_type = model.config.member_config.get("model_type")
        entry = MEMBER_ENTRY.get(member_type, "modeling_star_bma")
        model.config.auto_map = {
            "AutoConfig": "configuration_star_bma.StarBMAConfig",
            f"AutoModelFor{HEAD_AUTO_SUFFIX[model.head]}": f"{entry}.{type(model).__name__}",
        }
        if processor is None and processor_files_from is not None:
            for key, value in (timm_pretrained_cfg(processor_files_from) or {}).items():
                setattr(model.config, key, value)  # TimmWrapperImageProcessor reads config.json (processing.py)
        model.save_pretrained(tmp, safe_serialization=True)
        fault_point("export")  # tests: a kill here leaves a half-written .bma.tmp-* folder
        for path in code_files(member_type):
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        if processor is not None:
            processor.save_pretrained(tmp)
        elif processor_files_from is not None:
            copy_processor_files(processor_files_from, tmp)  # pipelines find them in the BMA folder
        card = os.path.join(output_dir, "README.md")  # the model card is not ours to drop on --overwrite
        if os.path.isfile(card) and not os.path.exists(os.path.join(tmp, "README.md")):
            shutil.copyfile(card, os.path.join(tmp, "README.md"))
    return output_dir


def export_bma(
    run_dir: str,
    output_dir: str | None = None,
    num_samples: int = 16,
    seed: int = 0,
    t_distribution: str = "uniform",
    overwrite: bool = False,
    bn_max_batches: int | None = None,
    batch_size: int = 256,
) -> str:
    """Export the BMA of a Starlight run (star + aligned anchors) to ``output_dir`` (default RUN_DIR/bma).

    BatchNorm statistics are recomputed per sample over the run's train split. Returns the output folder.
    """
    from ..batchnorm import has_batchnorm
    from ..data import make_dataloader
    from ..rundir import RunDirectory
    from .configuration_star_bma import parse_t_distribution

    if int(num_samples) < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}; use --samples 16 or more")
    try:  # fail before loading anything; the self-contained configuration file raises plain ValueErrors
        parse_t_distribution(t_distribution)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir_ = RunDirectory(run_dir)
    output_dir = os.path.abspath(output_dir or run_dir_.bma_path)
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    perms_path = run_dir_.permutations_path
    if not os.path.isfile(perms_path):
        raise FileNotFoundError(
            f"{perms_path} is missing; the BMA needs the anchors aligned to the star (rerun recipes/star.py)"
        )
    unaligned = [m.name for m in run_dir_.anchors if m.name not in run_dir_.anchor_permutations()]
    if unaligned:
        raise UserError(
            f"{perms_path} has no permutation for anchor {unaligned[0]!r}; rerun recipes/star.py"
        )
    star = run_dir_.load_star()
    anchors = run_dir_.aligned_anchor_state_dicts()
    bn_loader = None
    if has_batchnorm(star):
        dataset, collate_fn = run_dir_.load_data()
        bn_loader = make_dataloader(dataset["train"], batch_size, collate_fn=collate_fn)
    model = build_bma(star, anchors, num_samples, seed, t_distribution, bn_loader, bn_max_batches)
    return save_bma(model, output_dir, overwrite=overwrite, processor_files_from=run_dir_.star_path)


def load_bma(path: str, device="cpu") -> StarBMAPreTrainedModel:
    """Load an exported BMA folder with the head class named in its config (no remote code)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{path} is not a BMA folder (no config.json); create one with `star-merge export-bma RUN_DIR`"
        )
    config = StarBMAConfig.from_pretrained(path)
    arch = (config.architectures or [None])[0]
    classes = {cls.__name__: cls for cls in HEAD_CLASSES.values()}
    if arch not in classes:
        raise UserError(f"{path}: architecture {arch!r} is not a star-merge BMA class ({sorted(classes)})")
    return classes[arch].from_pretrained(path, config=config, use_safetensors=True).to(device).eval()


def bma_predict_proba(model: nn.Module, dataloader: Iterable, device=None) -> torch.Tensor:
    """BMA class probabilities [num_examples, num_labels] (float32) over ``dataloader`` (batches of dicts;
    ``labels`` are ignored): the evaluation engine's loop with the task's logits."""
    from ..evaluation.engine import forward_loader
    from ..tasks import task_for

    task = task_for(model)
    probs = [p.cpu() for p in forward_loader(model, dataloader, lambda m, b: task.logits(m, b).softmax(-1),
                                             device=device)]
    if not probs:
        raise UserError("cannot predict: the dataloader yielded no batches")
    return torch.cat(probs)
