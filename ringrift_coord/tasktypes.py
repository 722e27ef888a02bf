"""Task types and the resource class each one uses (cpu, gpu, hybrid, io): a reservation on
a node holds its slots against the other types of the same class."""

from __future__ import annotations

from enum import StrEnum


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
        return RESOURCE_TYPES[self]

    @classmethod
    def parse(cls, name: str | TaskType) -> TaskType:
        """The task type called ``name``; accepts ``cma-es``/``CMAES`` spellings too."""
        if isinstance(name, TaskType):
            return name
        found = _BY_VALUE.get(name)  # the exact name: no normalising, no Enum lookup
        if found is not None:
            return found
        key = str(name).strip().lower().replace("-", "_")
        key = {"cma_es": "cmaes"}.get(key, key)
        try:
            return cls(key)
        except ValueError:
            from ringrift_coord.errors import UsageError
            from ringrift_coord.inputs import did_you_mean

            valid = ", ".join(t.value for t in cls)
            hint = did_you_mean(key, (t.value for t in cls))
            raise UsageError(f"unknown task type {name!r}{hint}; valid types: {valid}") from None


RESOURCE_TYPES: dict[TaskType, ResourceType] = {
    TaskType.SELFPLAY: ResourceType.CPU,
    TaskType.TOURNAMENT: ResourceType.CPU,
    TaskType.EVALUATION: ResourceType.CPU,
    TaskType.GAUNTLET: ResourceType.CPU,
    TaskType.TRAINING: ResourceType.GPU,
    TaskType.CMAES: ResourceType.GPU,
    TaskType.HYBRID_SELFPLAY: ResourceType.HYBRID,
    TaskType.PIPELINE: ResourceType.HYBRID,
    TaskType.IMPROVEMENT_LOOP: ResourceType.HYBRID,
    TaskType.SYNC: ResourceType.IO,
    TaskType.EXPORT: ResourceType.IO,
}

TASK_TYPE_NAMES: tuple[str, ...] = tuple(t.value for t in TaskType)
_BY_VALUE: dict[object, TaskType] = {t.value: t for t in TaskType}
