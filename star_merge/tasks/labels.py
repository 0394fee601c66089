"""Labels: which batch keys are targets, and the check that a dataset's labels fit the model's head."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["DatasetError", "LABEL_KEYS", "check_labels"]

#: Batch keys that are targets, never model inputs (the loss is computed by the task, not the model).
LABEL_KEYS = ("labels", "label", "label_ids")


class DatasetError(UserError):
    """A dataset cannot be used as asked (missing column, bad labels, empty split)."""


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
