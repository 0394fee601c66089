"""Ordinary (non-Starlight) training of one population member, saved as an HF checkpoint."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..data import make_dataloader
from ..batchnorm import reset_bn_stats
from ..evaluation.engine import evaluate_loss_accuracy
from ..modeling import build_model
from ..seeding import set_seed
from ..errors import UserError

__all__ = ["TrainArguments", "train_classifier", "build_model", "save_checkpoint", "set_seed", "make_optimizer"]


@dataclass
class TrainArguments:
    """Recipe for training one ordinary model (the anchors' and held-out models' recipe)."""

    num_train_epochs: int = field(default=20, metadata={"help": "Epochs per population member."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Training batch size."})
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay."})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd (Nesterov, momentum 0.9)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine | constant."})

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.lr_scheduler_type not in ("cosine", "constant"):
            raise UserError(f"lr_scheduler_type must be 'cosine' or 'constant', got {self.lr_scheduler_type!r}")


def make_optimizer(params, name: str, lr: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(optimizer, kind: str, total_steps: int):
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def train_classifier(model, dataset, args: TrainArguments, seed: int, device=None, progress: bool = True, desc=None,
                     task=None, on_epoch_end=None, collate_fn=None):
    """Train ``model`` on ``dataset['train']`` with the task's loss (default: from its architecture); returns
    (model, metrics dict). ``collate_fn``: the batch collator of prepared data (default: the task's). An
    on-the-fly transform (seeded augmentation) is told each epoch. ``on_epoch_end(epoch, model)``, if given, is
    called after every epoch (e.g. to record learning curves); the model is put back in train mode afterwards."""
    from ..data import set_data_epoch, without_augmentation
    from ..tasks import task_for

    task = task if task is not None else task_for(model)
    device = torch.device(device or "cpu")
    model.to(device).train()
    collator = collate_fn if collate_fn is not None else task.collator
    loader = make_dataloader(dataset["train"], args.per_device_train_batch_size, shuffle=True, seed=seed,
                             collate_fn=collator)
    opt = make_optimizer(model.parameters(), args.optimizer, args.learning_rate, args.weight_decay)
    sched = make_scheduler(opt, args.lr_scheduler_type, args.num_train_epochs * len(loader))
    bar = tqdm(total=args.num_train_epochs * len(loader), desc=desc or f"training seed {seed}", disable=not progress, leave=False)
    for epoch in range(args.num_train_epochs):
        model.train()
        set_data_epoch(dataset["train"], epoch, collator)  # augmentation / masked-LM masking per epoch
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    bar.close()
    plain = without_augmentation(dataset["train"])
    test_loader = make_dataloader(dataset["test"], 512, collate_fn=collator)
    reset_bn_stats(model, make_dataloader(plain, 512, collate_fn=collator), device=device, task=task)  # exact stats
    test_loss, test_acc = evaluate_loss_accuracy(model, test_loader, device, task=task)
    return model.eval(), {"test_loss": test_loss, "test_accuracy": test_acc, "seed": seed}


def save_checkpoint(model, output_dir: str, extra_json: dict | None = None, overwrite: bool = False,
                    processor=None) -> str:
    """``save_pretrained`` into a temp folder beside ``output_dir``, then rename it into place (atomic);
    ``processor`` (a tokenizer) is saved with the weights."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir):
        if not overwrite:
            raise FileExistsError(f"{output_dir} already exists; pass overwrite=True to replace it")
    from ..io import atomic_folder

    with atomic_folder(output_dir) as tmp:
        _save_on_any_rank(model, tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if extra_json:
            with open(os.path.join(tmp, "training_info.json"), "w") as f:
                json.dump(extra_json, f, indent=2)
    return output_dir


def _save_on_any_rank(model, folder: str) -> None:
    """``model.save_pretrained(folder)`` from whichever process calls it: once torch.distributed is initialised,
    transformers writes only on rank 0 (``should_save_on_this_rank``), but a population member trained across
    processes is trained and saved by one process alone, whatever its rank."""
    if hasattr(model, "should_save_on_this_rank"):
        model.should_save_on_this_rank = lambda is_main_process: bool(is_main_process)
    try:
        model.save_pretrained(folder)
    finally:
        model.__dict__.pop("should_save_on_this_rank", None)
    if getattr(getattr(model, "config", None), "model_type", None) == "timm_wrapper":
        _timm_tensor_names(os.path.join(folder, "model.safetensors"))


def _timm_tensor_names(path: str) -> None:
    """A TimmWrapper built from its config saves its tensors as ``timm_model.*``; timm's own loader
    (``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))``) needs timm's names, which transformers
    reads too: strip the prefix."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    if any(k.startswith("timm_model.") for k in tensors):
        save_file({k.removeprefix("timm_model."): v for k, v in tensors.items()}, path, metadata={"format": "pt"})
