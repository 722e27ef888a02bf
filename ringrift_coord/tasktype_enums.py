"""The Python API's enums of the task types and resource classes (the reference's names):
StrEnums equal to the plain names of ``tasktypes``, whose table they follow.

Imported on first use only (``task_coordinator.TaskType``): the command line's hot path
works with the plain names and never loads ``enum``.
"""

from __future__ import annotations

from enum import StrEnum

from ringrift_coord import tasktypes


class ResourceType(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    HYBRID = "hybrid"
    IO = "io"


class TaskType(StrEnum):
    SELFPLAY = "selfplay"
    TRAINING = "training"
    CMAES = "cmaes"
    TOURNAMENT = "tournament"
    PIPELINE = "pipeline"
    IMPROVEMENT_LOOP = "improvement_loop"
    GAUNTLET = "gauntlet"
    EVALUATION = "evaluation"
    HYBRID_SELFPLAY = "hybrid_selfplay"
    SYNC = "sync"
    EXPORT = "export"

    @property
    def resource_type(self) -> ResourceType:
        return ResourceType(tasktypes.RESOURCE_CLASSES[self])

    @classmethod
    def parse(cls, name: str | TaskType) -> TaskType:
        """The task type called ``name``; accepts ``cma-es``/``CMAES`` spellings too."""
        return cls(tasktypes.parse(name))


# The members are spelt out for type checkers; the table in tasktypes stays the one source.
if tuple(TaskType) != tasktypes.TASK_TYPE_NAMES or set(ResourceType) != set(
    tasktypes.RESOURCE_CLASSES.values()
):
    raise ImportError("TaskType/ResourceType differ from tasktypes.RESOURCE_CLASSES")

RESOURCE_TYPES: dict[TaskType, ResourceType] = {t: t.resource_type for t in TaskType}
