"""Small all-numeric datasets held as one tensor per column, for :func:`star_merge.data.make_dataloader`."""

from __future__ import annotations

import torch

__all__ = ["IN_MEMORY_MAX_BYTES", "TensorColumns", "collate_columns", "in_memory"]

IN_MEMORY_MAX_BYTES = 256 * 2**20  # datasets up to this size whose columns are all fixed-shape numbers


class _ColumnBatch(dict):
    """A batch already stacked by :class:`TensorColumns` (collated by passing it through)."""


class TensorColumns(torch.utils.data.Dataset):
    """A dataset held as one tensor per column: a batch is one index per column, not rows formatted one by one.

    Built by :func:`make_dataloader` from ``dataset.with_format("torch")[:]``, so its batches hold the same rows
    in the same order with the same dtypes (MNIST-1D's evaluation loaders spent as long formatting rows as
    running the CNN)."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns
        self.num_rows = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return _ColumnBatch({k: v[index] for k, v in self.columns.items()})


def collate_columns(batch):
    from torch.utils.data import default_collate

    return dict(batch) if isinstance(batch, _ColumnBatch) else default_collate(batch)


def in_memory(dataset) -> TensorColumns | None:
    """:class:`TensorColumns` of a small dataset whose columns are all fixed-shape numbers, else None."""
    nbytes = getattr(getattr(dataset, "data", None), "nbytes", None)
    if nbytes is None or nbytes > IN_MEMORY_MAX_BYTES or len(dataset) == 0 or not dataset.column_names:
        return None
    columns = dataset.with_format("torch")[:]
    if not all(isinstance(v, torch.Tensor) and v.ndim >= 1 and len(v) == len(dataset) for v in columns.values()):
        return None  # strings, ragged sequences: formatted per row
    return TensorColumns(columns)
