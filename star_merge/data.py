"""Datasets: the built-in tasks made offline (MNIST-1D, scikit-learn digits) and user datasets.

:func:`load_task_dataset` returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits whose columns
are either model inputs (``input_values``, ``pixel_values``, ``input_ids``, ...) and ``labels``, or raw
columns renamed to ``text`` (+ ``text_pair``) or ``image``. :func:`prepare_dataset` turns raw columns into
model inputs with the population's processor (through the task) and returns the batch collator.
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .columns import collate_columns, in_memory
from .tasks.labels import DatasetError

__all__ = [
    "DataArguments",
    "DatasetError",
    "load_mnist1d",
    "load_digits_dataset",
    "load_task_dataset",
    "make_dataloader",
    "prepare_dataset",
    "raw_kind",
    "set_data_epoch",
    "without_augmentation",
    "BUILTIN_DATASETS",
]

BUILTIN_DATASETS = ("mnist1d", "digits")


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
    text_column: str | None = field(
        default=None,
        metadata={"help": "Column holding raw text, tokenised with the population's tokenizer (classification: "
                          "one example per row; language models: grouped into blocks, default 'text')."},
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Optional second text column (sentence pairs), with --text_column."}
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Truncate tokenised text to this many tokens (default: the tokenizer's limit, at most 512)."}
    )
    processor_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer / image processor to use instead of the first anchor's (folder or Hub id)."},
    )
    augment: bool = field(
        default=False,
        metadata={"help": "Raw images: seeded train-time augmentation (random resized crop or padded crop, + flip)."},
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
    block_size: int = field(default=128, metadata={"help": "Language models: tokens per training/eval block."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Masked LMs: fraction of tokens masked."})

    def __post_init__(self):
        if self.num_samples < 20:
            raise DatasetError(f"num_samples={self.num_samples} is too small; use at least 20")
        if self.text_pair_column and not self.text_column:
            raise DatasetError("--text_pair_column needs --text_column (the first text of each pair)")
        if self.text_column and self.input_column:
            raise DatasetError("give either --text_column (raw text) or --input_column, not both")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise DatasetError(f"max_seq_length={self.max_seq_length} is too small; use at least 2")
        if self.block_size < 2:
            raise DatasetError(f"block_size={self.block_size} is too small; use at least 2")
        if not 0 < self.mlm_probability < 1:
            raise DatasetError(f"mlm_probability={self.mlm_probability} must lie in (0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> dict:
    """The generator's arrays, made once per process (a run loads its dataset several times; ~2 s each)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args)  # never the package's download path
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    for v in raw.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False  # shared by every later call
    return raw


def load_mnist1d(num_samples: int = 5000, seed: int = 42):
    """MNIST-1D (Greydanus 2020) generated locally by the ``mnist1d`` package with its default arguments.

    Columns: ``input_values`` (float32, length 40), ``labels`` (int, 10 classes). The generator's global
    RNG side effects are undone, so callers' random streams are unaffected.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    raw = _mnist1d_arrays(int(num_samples), int(seed))
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


def _input_columns(args: DataArguments, train, model_input_name: str | None) -> dict[str, str]:
    """source column -> name handed on: raw ``text`` / ``text_pair`` / ``image``, or the model input name."""
    from datasets import Image, Value

    cols, name = train.column_names, args.dataset_name

    def need(col: str, flag: str) -> str:
        if col not in cols:
            raise DatasetError(f"dataset {name!r} has no column {col!r} (columns: {cols}); set {flag}")
        return col

    if args.text_column:
        out = {need(args.text_column, "--text_column"): "text"}
        if args.text_pair_column:
            out[need(args.text_pair_column, "--text_pair_column")] = "text_pair"
        return out
    feature = lambda c: train.features.get(c)  # noqa: E731
    if args.input_column:
        src = need(args.input_column, "--input_column")
    else:
        known = ((model_input_name,) if model_input_name else ()) + ("input_values", "pixel_values", "input_ids")
        src = next((c for c in known if c in cols), None)
        src = src or next((c for c in cols if isinstance(feature(c), Image)), None)
        if src is None:
            text = next((c for c in cols if isinstance(feature(c), Value) and feature(c).dtype in ("string", "large_string")
                         and c != args.label_column), None)
            if text:
                raise DatasetError(f"dataset {name!r} has no model input column but text in {text!r}; "
                                   f"pass --text_column {text}")
            if model_input_name:
                raise DatasetError(f"dataset {name!r} has no input column {model_input_name!r} (columns: {cols}); "
                                   "set --input_column")
            raise DatasetError(f"cannot tell the model input column among {cols}; pass --input_column")
    if isinstance(feature(src), Image):
        return {src: "image"}
    if isinstance(feature(src), Value) and feature(src).dtype in ("string", "large_string"):
        raise DatasetError(f"column {src!r} of dataset {name!r} holds text; pass --text_column {src}")
    if src == "input_ids":  # pre-tokenised: keep what the tokenizer produced
        return {c: c for c in cols if c in ("input_ids", "attention_mask", "token_type_ids")}
    return {src: model_input_name or src}


def raw_kind(dataset) -> str | None:
    """``"text"`` / ``"image"`` when a split holds raw columns that need the population's processor."""
    cols = (dataset["train"] if "train" in dataset else dataset).column_names
    return "text" if "text" in cols else "image" if "image" in cols else None


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
    from .processing import ProcessorError, is_tokenizer, load_processor

    source = args.processor_name_or_path or model_path
    try:
        tokenizer = load_processor(source)
    except ProcessorError as e:
        raise DatasetError(f"{source} has no usable tokenizer ({e}); save the population's tokenizer with each model "
                           "(tokenizer.save_pretrained) or pass --processor_name_or_path") from None
    if tokenizer is None or not is_tokenizer(tokenizer):
        raise DatasetError(f"{source} has no usable tokenizer; save the population's tokenizer with each model "
                           "(tokenizer.save_pretrained) or pass --processor_name_or_path")
    return task, tokenizer


def saved_to_disk(path: str) -> bool:
    """Whether ``path`` is a folder written by ``Dataset(Dict).save_to_disk`` (read with ``load_from_disk``)."""
    import os

    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def _load_raw(name: str, config_name: str | None):
    """A dataset by Hub name, data folder or ``save_to_disk`` folder. A ``save_to_disk`` folder is read with
    ``load_from_disk``: ``load_dataset`` would also read the ``cache-*.arrow`` files a ``.map()`` on the loaded
    copy leaves in it (the split silently doubled, or a ``CastError`` when they hold other columns)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    try:
        if saved_to_disk(name):
            raw = load_from_disk(name)
            return raw if isinstance(raw, DatasetDict) else DatasetDict(train=raw)
        return load_dataset(name, config_name)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; re-raise one line
        raise DatasetError(f"could not load dataset {name!r}: {str(e).splitlines()[0]}") from None


def load_task_dataset(args: DataArguments, model_input_name: str | None = None, task=None, processor=None):
    """Load ``args.dataset_name`` as a DatasetDict(train, test) with columns (model input, ``labels``).

    A ``task`` that reads raw text (language models) gets the raw splits and ``processor`` (the tokenizer) and
    returns them tokenised (:meth:`~star_merge.tasks.Task.prepare`); ``max_*_samples`` then count its blocks."""
    from datasets import DatasetDict

    text = getattr(task, "data_kind", None) == "text"
    if text and args.dataset_name in BUILTIN_DATASETS:
        raise DatasetError(f"task {task.name!r} needs a text dataset, not the built-in {args.dataset_name!r}; "
                           "set --dataset_name")
    if args.dataset_name == "mnist1d":
        ds = load_mnist1d(args.num_samples, args.dataset_seed)
    elif args.dataset_name == "digits":
        ds = load_digits_dataset(args.dataset_seed)
    else:
        raw = _load_raw(args.dataset_name, args.dataset_config_name)
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
        keep = _input_columns(args, ds["train"], model_input_name)
        keep[args.label_column] = "labels"
        ds = ds.select_columns(list(keep)).rename_columns({k: v for k, v in keep.items() if k != v})
    if args.max_train_samples is not None:
        ds["train"] = ds["train"].select(range(min(args.max_train_samples, len(ds["train"]))))
    if args.max_eval_samples is not None:
        ds["test"] = ds["test"].select(range(min(args.max_eval_samples, len(ds["test"]))))
    for split in ("train", "test"):
        if len(ds[split]) == 0:
            raise DatasetError(f"split {split!r} of dataset {args.dataset_name!r} is empty")
    return ds


def prepare_dataset(dataset, task, processor=None, data_args: DataArguments | None = None, seed: int = 0):
    """``(dataset, collate_fn)``: raw columns turned into model inputs by ``task.prepare`` with ``processor``
    (text tokenised once, images processed on the fly; ``data_args.augment`` augments the train split), and
    the task's collator for them (dynamic padding for token sequences)."""
    if getattr(task, "data_kind", None) == "text":  # language models: tokenised into blocks by load_task_dataset
        return dataset, task.collator_for(processor, dataset)
    kind = raw_kind(dataset)
    if kind is not None and processor is None:
        from .processing import ProcessorError

        raise ProcessorError(
            f"the dataset holds raw {kind} but no tokenizer / image processor was found; "
            "save one with the first anchor or pass --processor_name_or_path"
        )
    dataset = task.prepare(dataset, processor, data_args, seed=seed)
    return dataset, task.collator_for(processor, dataset)


def _transform(dataset):
    fmt = getattr(dataset, "format", None) or {}
    return (fmt.get("format_kwargs") or {}).get("transform") if fmt.get("type") == "custom" else None


def set_data_epoch(dataset, epoch: int, collator=None) -> None:
    """Tell an on-the-fly transform (seeded augmentation) and the collator (masked-LM masking) which epoch runs."""
    for user in (_transform(dataset), collator):
        if hasattr(user, "set_epoch"):
            user.set_epoch(epoch)


def without_augmentation(dataset):
    """``dataset`` with its augmenting transform replaced by the plain processing one (BN / evaluation passes)."""
    transform = _transform(dataset)
    if getattr(transform, "augment", False):
        dataset = dataset.with_transform(transform.plain())
    return dataset


def make_dataloader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                    collate_fn=None):
    """A torch DataLoader yielding dicts of tensors; shuffling is reproducible from ``seed``.

    ``collate_fn``: the task's collator (``None``: torch's default collate). A dataset with an on-the-fly
    transform (raw images) keeps it. A small all-numeric dataset without a collator is held as column tensors
    (:class:`TensorColumns`: the same batches, sliced instead of formatted row by row)."""
    ds = dataset if _transform(dataset) is not None else dataset.with_format("torch")
    if collate_fn is None and _transform(dataset) is None:
        columns = in_memory(dataset)
        if columns is not None:
            ds, collate_fn = columns, collate_columns
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, collate_fn=collate_fn
    )
