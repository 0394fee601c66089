"""Datasets: the built-in tasks made offline (MNIST-1D, scikit-learn digits) and user datasets.

Every dataset handed to the rest of star-merge is a ``datasets.DatasetDict`` with ``train`` and ``test``
splits whose columns are the model's input name (``input_values`` or ``pixel_values``) and ``labels``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = [
    "DataArguments",
    "DatasetError",
    "load_mnist1d",
    "load_digits_dataset",
    "load_task_dataset",
    "make_dataloader",
    "check_labels",
    "BUILTIN_DATASETS",
]

BUILTIN_DATASETS = ("mnist1d", "digits")


class DatasetError(UserError):
    """A dataset cannot be used as asked (missing column, bad labels, empty split)."""


@dataclass
class DataArguments:
    """Which data to train and evaluate on: a built-in task or any ``datasets`` name/path."""

    dataset_name: str = field(
        default="mnist1d",
        metadata={"aliases": ["--dataset"], "help": "A built-in task (mnist1d, digits) or a `datasets` Hub name / local path."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The `datasets` config name."})
    num_samples: int = field(default=5000, metadata={"help": "mnist1d: total samples generated (80% train)."})
    dataset_seed: int = field(default=42, metadata={"help": "mnist1d: generator seed (the package default)."})
    input_column: str | None = field(
        default=None, metadata={"help": "Column holding the model input (renamed to the model's input name)."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding integer class labels."})
    train_split: str = field(default="train", metadata={"help": "Split used for training / BN statistics."})
    test_split: str = field(default="test", metadata={"help": "Split used for evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the train split."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the test split."})
    task: str | None = field(
        default=None,
        metadata={"help": "The task (causal-lm, masked-lm, sequence-classification, ...); default: from the "
                          "anchors' architecture."},
    )
    text_column: str = field(default="text", metadata={"help": "Language models: the column holding raw text."})
    block_size: int = field(default=128, metadata={"help": "Language models: tokens per training/eval block."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Masked LMs: fraction of tokens masked."})

    def __post_init__(self):
        if self.num_samples < 20:
            raise DatasetError(f"num_samples={self.num_samples} is too small; use at least 20")
        if self.block_size < 2:
            raise DatasetError(f"block_size={self.block_size} is too small; use at least 2")
        if not 0 < self.mlm_probability < 1:
            raise DatasetError(f"mlm_probability={self.mlm_probability} must lie in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_mnist1d(num_samples: int = 5000, seed: int = 42):
    """MNIST-1D (Greydanus 2020) generated locally by the ``mnist1d`` package with its default arguments.

    Columns: ``input_values`` (float32, length 40), ``labels`` (int, 10 classes). The generator's global
    RNG side effects are undone, so callers' random streams are unaffected.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)  # never the package's download path
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    features = Features(
        {"input_values": Sequence(Value("float32"), length=40), "labels": ClassLabel(names=[str(i) for i in range(10)])}
    )
    make = lambda x, y: Dataset.from_dict(  # noqa: E731
        {"input_values": x.astype(np.float32), "labels": y.astype(np.int64)}, features=features
    )
    return DatasetDict(train=make(raw["x"], raw["y"]), test=make(raw["x_test"], raw["y_test"]))


def load_digits_dataset(seed: int = 42, test_fraction: float = 0.2):
    """scikit-learn's 8x8 handwritten digits as ``pixel_values`` [1, 8, 8] (scaled to [0, 1]) + ``labels``."""
    from datasets import ClassLabel, Array3D, Dataset, DatasetDict, Features
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    features = Features(
        {"pixel_values": Array3D(shape=(1, 8, 8), dtype="float32"), "labels": ClassLabel(names=[str(i) for i in range(10)])}
    )
    make = lambda idx: Dataset.from_dict({"pixel_values": x[idx], "labels": y[idx]}, features=features)  # noqa: E731
    return DatasetDict(train=make(order[n_test:]), test=make(order[:n_test]))


def _model_input_name(model_input_name: str | None, columns) -> str:
    if model_input_name:
        return model_input_name
    for c in ("input_values", "pixel_values", "input_ids"):
        if c in columns:
            return c
    raise DatasetError(f"cannot tell the model input column among {list(columns)}; pass --input_column")


def task_and_processor(args: DataArguments, model_path: str | None):
    """The population's task (``args.task`` or from the checkpoint's architecture) and, for a task that reads raw
    text (language models), the tokenizer saved with the checkpoint at ``model_path``."""
    from .modeling import load_config
    from .tasks import task_for

    if model_path is None:
        return (task_for(name=args.task) if args.task else None), None
    task = task_for(load_config(model_path), name=args.task)
    if getattr(task, "data_kind", None) != "text":
        return task, None
    from transformers import AutoTokenizer

    try:
        return task, AutoTokenizer.from_pretrained(model_path)
    except Exception as e:  # noqa: BLE001 - one line for a missing / unreadable tokenizer
        raise DatasetError(f"{model_path} has no usable tokenizer ({str(e).splitlines()[0]}); save the population's "
                           "tokenizer with each model (tokenizer.save_pretrained)") from None


def load_task_dataset(args: DataArguments, model_input_name: str | None = None, task=None, processor=None):
    """Load ``args.dataset_name`` as a DatasetDict(train, test) with columns (model input, ``labels``).

    A ``task`` that reads raw text (language models) gets the raw splits and ``processor`` (the tokenizer) and
    returns them tokenised (:meth:`~star_merge.tasks.Task.prepare`); ``max_*_samples`` then count its blocks."""
    from datasets import DatasetDict, load_dataset

    text = getattr(task, "data_kind", None) == "text"
    if text and args.dataset_name in BUILTIN_DATASETS:
        raise DatasetError(f"task {task.name!r} needs a text dataset, not the built-in {args.dataset_name!r}; "
                           "set --dataset_name")
    if args.dataset_name == "mnist1d":
        ds = load_mnist1d(args.num_samples, args.dataset_seed)
    elif args.dataset_name == "digits":
        ds = load_digits_dataset(args.dataset_seed)
    else:
        try:
            raw = load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as e:  # noqa: BLE001 - datasets raises many types; re-raise one line
            raise DatasetError(f"could not load dataset {args.dataset_name!r}: {str(e).splitlines()[0]}") from None
        for split in (args.train_split, args.test_split):
            if split not in raw:
                raise DatasetError(
                    f"dataset {args.dataset_name!r} has no split {split!r} (has {sorted(raw)}); "
                    "set --train_split/--test_split"
                )
        ds = DatasetDict(train=raw[args.train_split], test=raw[args.test_split])
    if text:
        ds = task.prepare(ds, processor, args)
    elif args.dataset_name not in BUILTIN_DATASETS:
        cols = ds["train"].column_names
        if args.label_column not in cols:
            raise DatasetError(
                f"dataset {args.dataset_name!r} has no label column {args.label_column!r} (columns: {cols}); "
                "set --label_column"
            )
        src = args.input_column or _model_input_name(model_input_name, cols)
        if src not in cols:
            raise DatasetError(
                f"dataset {args.dataset_name!r} has no input column {src!r} (columns: {cols}); set --input_column"
            )
        dst = model_input_name or src
        keep = {src: dst, args.label_column: "labels"}
        ds = ds.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    if args.max_train_samples is not None:
        ds["train"] = ds["train"].select(range(min(args.max_train_samples, len(ds["train"]))))
    if args.max_eval_samples is not None:
        ds["test"] = ds["test"].select(range(min(args.max_eval_samples, len(ds["test"]))))
    for split in ("train", "test"):
        if len(ds[split]) == 0:
            raise DatasetError(f"split {split!r} of dataset {args.dataset_name!r} is empty")
    return ds


def check_labels(ds, num_labels: int) -> None:
    """Raise DatasetError unless every split's labels are integers in [0, num_labels)."""
    for split, d in ds.items():
        labels = np.asarray(d["labels"])
        if labels.size == 0:
            raise DatasetError(f"split {split!r} is empty")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"split {split!r}: labels must be integers, got {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_labels:
            raise DatasetError(
                f"split {split!r}: labels span [{lo}, {hi}] but the model has num_labels={num_labels}; "
                "use models whose head fits the dataset"
            )


def make_dataloader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                    collate_fn=None):
    """A torch DataLoader yielding dicts of tensors; shuffling is reproducible from ``seed``.

    ``collate_fn``: the task's collator (``None``: torch's default collate)."""
    ds = dataset.with_format("torch")
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, collate_fn=collate_fn
    )
