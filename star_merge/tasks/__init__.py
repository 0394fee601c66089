"""Tasks: what the population's models do (loss, predictions, inputs, data preparation). See :mod:`.base`."""

from .base import LABEL_KEYS, Task, TaskError, available_tasks, register_task, task_for

__all__ = ["LABEL_KEYS", "Task", "TaskError", "available_tasks", "register_task", "task_for"]
