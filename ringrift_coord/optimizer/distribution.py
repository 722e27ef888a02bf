"""Config-weighted self-play distribution: the rate, or a node's self-play slots, split
across the board configurations by their ``selfplay_configs`` weights.

The split is the largest-remainder method (Hamilton's): each config gets the whole part of
its exact quota (``total × weight / sum of weights``), and the units left over go one each
to the configs with the largest fractional remainders, ties broken by the larger weight,
then by name. So the parts always sum exactly to the whole and each part is within one of
its exact quota. Arithmetic is exact (fractions), so the result is the same on every host.
A config of weight 0 gets nothing. Hamilton's method is not monotone in the total (the
Alabama paradox): one more slot can leave a config with one fewer.

A node's self-play slots (``node_slots``) are its optimizer target while one is in force
(``state.target_for``), else its per-node self-play limit bounded by the hardware cap from its
latest reading (of any age), else whichever of the two is known.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

from ringrift_coord import readings
from ringrift_coord.errors import ConfigError, StateError, UsageError
from ringrift_coord.optimizer import capacity, state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ringrift_coord.config import Settings
    from ringrift_coord.store.base import Tx

# what a node's self-play slots were taken from (``node_slots``'s basis)
OPTIMIZER_TARGET = "optimizer target"
PER_NODE_LIMIT = "per-node limit"
HARDWARE_CAP = "hardware cap"


def split(total: int, weights: dict[str, float], salt: str | None = None) -> dict[str, int]:
    """``total`` split across ``weights``' keys in proportion to the weights, by largest
    remainder: the parts sum exactly to ``total``; every key is in the result (weight 0: 0).
    Equal remainders of equal weights go by name, or with ``salt`` (a node's name) in an
    order of its own: a node's slots then favour no config the same way on every node.

    Raises ``ValueError`` for a negative total, a negative or non-finite weight, or weights
    that are all 0 (there is nothing to split by)."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"cannot split {total!r}: not a whole number of 0 or more")
    exact: dict[str, Fraction] = {}
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight of {name}: {weight!r} is not a number")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of {name}: {weight!r} is not a finite number of 0 or more")
        exact[name] = Fraction(weight)
    whole = sum(exact.values(), Fraction(0))
    if whole == 0:
        raise ValueError("every weight is 0: there is nothing to split by")
    quotas = {name: total * weight / whole for name, weight in exact.items()}
    shares = {name: math.floor(quota) for name, quota in quotas.items()}
    left = total - sum(shares.values())

    # the leftover units: largest remainder first, then larger weight, then name (salted)
    def tie(name: str) -> tuple[int, str]:
        return (0 if salt is None else zlib.crc32(f"{salt}\0{name}".encode()), name)

    order = sorted(
        (name for name in quotas if exact[name] > 0),
        key=lambda name: (-(quotas[name] - shares[name]), -exact[name], tie(name)),
    )
    for name in order[:left]:
        shares[name] += 1
    return shares


def weights(settings: Settings) -> dict[str, float]:
    """The configured ``selfplay_configs`` weights (a ``ConfigError`` when they are all 0)."""
    found = {str(k): float(v) for k, v in settings.get("selfplay_configs").items()}
    if not any(w > 0 for w in found.values()):
        raise ConfigError(
            "every weight is 0 (or there are none): give at least one config a positive weight",
            key="selfplay_configs",
        )
    return found


def parts(
    total: int, configured: dict[str, float], salt: str | None = None
) -> list[dict[str, Any]]:
    """``[{config, weight, share}]`` in the configured order (``salt``: see ``split``)."""
    try:
        shares = split(total, configured, salt)
    except ValueError as exc:
        raise ConfigError(str(exc), key="selfplay_configs") from None
    return [
        {"config": name, "weight": weight, "share": shares[name]}
        for name, weight in configured.items()
    ]


def node_slots(tx: Tx, settings: Settings, node: str, now: float) -> tuple[int | None, str]:
    """(the node's self-play slots, what they were taken from); (None, why) when neither an
    optimizer target, nor a per-node limit, nor a hardware cap is known."""
    target = state.target_for(tx, node, settings, now)
    if target is not None:
        return int(target["target"]), OPTIMIZER_TARGET
    limit = settings.task_limit("selfplay", "per_node")
    cap = capacity.node_cap(readings.latest(tx, node), settings)
    if cap is not None and (limit is None or cap < limit):
        return cap, HARDWARE_CAP
    if limit is not None:
        return limit, PER_NODE_LIMIT
    return None, "no optimizer target, per-node self-play limit or reported hardware"


def rate_total(rate: float) -> int:
    """A rate (games per hour) as the whole number of games the split shares out."""
    return max(0, math.floor(rate + 0.5))


def distribution(
    tx: Tx | None,
    settings: Settings,
    now: float,
    *,
    rate: float | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """``distribution``: the rate (``rate``, else the current one) or ``node``'s self-play
    slots, split across ``selfplay_configs``. ``tx`` may be None only with ``rate``.

    Returns ``total``, ``unit`` (``games_per_hour`` or ``slots``), ``basis`` (where the
    total came from), ``node`` and ``parts``."""
    settings.require("optimizer")  # a bad section stops the commands that use it
    settings.require("selfplay_configs")
    configured = weights(settings)
    if node is not None:
        if rate is not None:
            raise UsageError("give a rate or a node, not both")
        assert tx is not None
        slots, basis = node_slots(tx, settings, node, now)
        if slots is None:
            raise StateError(f"node {node} has no self-play slots known: {basis}")
        return {
            "total": slots,
            "unit": "slots",
            "basis": basis,
            "node": node,
            "parts": parts(slots, configured, node),  # the split the node's rule uses
        }
    if rate is None:
        assert tx is not None
        current = state.load(tx, settings)
        rate, basis = (
            float(current["rate"]),
            ("current rate" if current["stored"] else "initial rate"),
        )
    else:
        if isinstance(rate, bool) or not (0 < rate < math.inf):
            raise UsageError(f"{rate!r} is not a finite positive rate", field="rate")
        basis = "given rate"
    total = rate_total(rate)
    return {
        "total": total,
        "unit": "games_per_hour",
        "basis": basis,
        "node": None,
        "parts": parts(total, configured),
    }
