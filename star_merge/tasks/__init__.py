"""Tasks: what the population's models do (loss, predictions, inputs, data preparation). See :mod:`.base`."""

from .base import (BATCH_CONTRACT, LABEL_KEYS, Task, TaskError, as_batch, available_tasks, pipeline_tag_for, register_pipeline_tag, register_task,
                   task_for, task_of)
from .labels import DatasetError, check_labels

__all__ = ["BATCH_CONTRACT", "LABEL_KEYS", "as_batch", "DatasetError", "Task", "TaskError", "available_tasks", "check_labels", "pipeline_tag_for",
           "register_pipeline_tag", "register_task", "task_for", "task_of"]
