"""Tasks: what the population's models do (loss, predictions, inputs, data preparation). See :mod:`.base`."""

from .base import (LABEL_KEYS, Task, TaskError, available_tasks, pipeline_tag_for, register_pipeline_tag, register_task,
                   task_for, task_of)
from .labels import DatasetError, check_labels

__all__ = ["LABEL_KEYS", "DatasetError", "Task", "TaskError", "available_tasks", "check_labels", "pipeline_tag_for",
           "register_pipeline_tag", "register_task", "task_for", "task_of"]
