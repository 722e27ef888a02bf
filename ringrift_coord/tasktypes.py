"""Task types and the resource class each one uses (cpu, gpu, hybrid, io): a reservation on
a node holds its slots against the other types of the same class.

The core works with the plain names (``"selfplay"``), the form the store keeps. The Python
API's ``TaskType`` and ``ResourceType`` (the reference's StrEnums, equal to those names) live
in ``tasktype_enums``, imported on first use (``task_coordinator.TaskType``): importing
``enum`` and building the enums costs every command ~2 ms of start-up, and a ``can-spawn``
or ``run`` needs only the names.
"""

from __future__ import annotations

# Every task type and its resource class, in the reference's order: the one table.
RESOURCE_CLASSES: dict[str, str] = {
    "selfplay": "cpu",
    "training": "gpu",
    "cmaes": "gpu",
    "tournament": "cpu",
    "pipeline": "hybrid",
    "improvement_loop": "hybrid",
    "gauntlet": "cpu",
    "evaluation": "cpu",
    "hybrid_selfplay": "hybrid",
    "sync": "io",
    "export": "io",
}
TASK_TYPE_NAMES: tuple[str, ...] = tuple(RESOURCE_CLASSES)
SELFPLAY = "selfplay"

# a name as given -> the plain name (a TaskType member is found too: it equals its name)
_CANONICAL: dict[object, str] = {name: name for name in TASK_TYPE_NAMES}


def parse(name: object) -> str:
    """The plain name of task type ``name`` (a name, or a ``TaskType``); accepts the
    ``cma-es``/``CMAES`` spellings too. An unknown one is a ``UsageError``."""
    found = _CANONICAL.get(name)  # the exact name: no normalising
    if found is not None:
        return found
    key = str(name).strip().lower().replace("-", "_")
    key = {"cma_es": "cmaes"}.get(key, key)
    found = _CANONICAL.get(key)
    if found is not None:
        return found
    from ringrift_coord.errors import UsageError
    from ringrift_coord.inputs import did_you_mean

    valid = ", ".join(TASK_TYPE_NAMES)
    hint = did_you_mean(key, TASK_TYPE_NAMES)
    raise UsageError(f"unknown task type {name!r}{hint}; valid types: {valid}")


def resource_class(name: object) -> str:
    """The resource class (cpu, gpu, hybrid, io) of task type ``name``."""
    return RESOURCE_CLASSES[parse(name)]
