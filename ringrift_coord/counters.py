"""The exported Prometheus counters: running totals kept in the store's ``counters`` table.

A counter is a family ("denials", "transfer_bytes") and a set of labels; ``add`` raises it in
the caller's write transaction, so it moves with the change it counts. They never go down:
the decision log and the transfer history are pruned, these totals are not.
"""

from __future__ import annotations

from ringrift_coord import jsontext

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ringrift_coord.store.base import Tx


def _key(labels: dict[str, str]) -> str:
    return jsontext.dumps(labels, sort_keys=True, compact=True)


def add(tx: Tx, family: str, labels: dict[str, str], amount: float = 1.0) -> None:
    """Raise the counter ``family{labels}`` by ``amount`` (>= 0) in this transaction."""
    if amount < 0:
        raise ValueError(f"a counter only goes up: {family} {amount}")
    tx.execute(
        "INSERT INTO counters (family, labels, value) VALUES (?, ?, ?) "
        "ON CONFLICT (family, labels) DO UPDATE SET value = counters.value + excluded.value",
        (family, _key(labels), float(amount)),
    )


def read(tx: Tx, family: str) -> list[tuple[dict[str, str], float]]:
    """Every counter of ``family``: (labels, value), in a stable order."""
    import json

    rows = tx.query(
        "SELECT labels, value FROM counters WHERE family = ? ORDER BY labels", (family,)
    )
    return [(json.loads(row["labels"]), float(row["value"])) for row in rows]
