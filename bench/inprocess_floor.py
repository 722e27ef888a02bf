#!/usr/bin/env python3
"""What bounds bench/inprocess.py: the library pair beside its own SQL without the library.

Three rows, alternated round by round on temp files (the shared VM's load hits all alike):

  library   bench/inprocess.py's library pair (TaskCoordinator acquire + unregister_task)
  replay    the very statements one library pair sends through the store (captured from the
            store's transaction object: same SQL text, bound parameters, the same two
            BEGIN IMMEDIATE ... COMMIT), replayed by bare sqlite3 on the library's own store
            (its schema, indexes, triggers, page size): the pair's SQLite cost, no Python of
            this package
  raw       bench/inprocess.py's raw pair (one table, one index)
  lean      (--lean) the library pair on a second store rebuilt with fewer pages written per
            pair: ``tasks`` WITHOUT ROWID, no AUTOINCREMENT on ``decisions`` and
            ``task_history`` (no ``sqlite_sequence`` row to rewrite), no ``tasks_type_node``
            index: a what-if of the schema change, not a schema the package uses (it would
            lose the fencing tokens' never-reused ids and the by-node counts' index)

It also counts the WAL frames (pages written) per pair of library and raw, with the
automatic checkpoint off for that count. library / replay is the share of the package's
Python; replay / raw, what the schema's pages per pair leave of the goal.

    /path/to/venv/bin/python bench/inprocess_floor.py [--seconds 1.5] [--rounds 3] [--lean] [--json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess  # noqa: E402

from ringrift_coord.store import sqlite as store_sqlite  # noqa: E402


def capture(pair: Callable[[], bool]) -> list[tuple[str, str, tuple]]:
    """(kind, sql, params) of every statement one pair sends through the store."""
    sent: list[tuple[str, str, tuple]] = []
    query, execute = store_sqlite.SQLiteTx.query, store_sqlite.SQLiteTx.execute

    def noting_query(self, sql, params=()):  # noqa: ANN001, ANN202
        sent.append(("q", sql, tuple(params)))
        return query(self, sql, params)

    def noting_execute(self, sql, params=()):  # noqa: ANN001, ANN202
        sent.append(("e", sql, tuple(params)))
        return execute(self, sql, params)

    store_sqlite.SQLiteTx.query, store_sqlite.SQLiteTx.execute = noting_query, noting_execute
    try:
        pair()
    finally:
        store_sqlite.SQLiteTx.query, store_sqlite.SQLiteTx.execute = query, execute
    return sent


def replay_pairs(db: str, sent: list[tuple[str, str, tuple]]) -> Callable[[], bool]:
    """Replay ``sent`` (one acquire transaction, one release transaction) with a fresh task id
    and the fencing token its decision-log entry returns."""
    release_at = next(i for i, s in enumerate(sent) if s[1].startswith("DELETE FROM tasks"))
    acquire, release = sent[:release_at], sent[release_at:]
    old_id = next(s[2][-1] for s in acquire if s[1].startswith("INSERT INTO decisions"))
    conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=4000")

    def pair() -> bool:
        task_id, token = f"selfplay-{os.urandom(6).hex()}", None
        conn.execute("BEGIN IMMEDIATE")
        for _kind, sql, params in acquire:
            args = tuple(task_id if v == old_id else v for v in params)
            if sql.startswith("INSERT INTO tasks"):
                args = (*args[:15], token, *args[16:])
            rows = conn.execute(sql, args).fetchall()
            if sql.startswith("INSERT INTO decisions"):
                token = rows[0][0]
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        for _kind, sql, params in release:
            args = tuple(task_id if v == old_id else v for v in params)
            if sql.startswith("DELETE FROM tasks"):
                args = (task_id, token)
            conn.execute(sql, args).fetchall()
        conn.execute("COMMIT")
        return True

    return pair


def lean_schema(db: str) -> None:
    """Rebuild ``db``'s tables as the ``lean`` row says, in place, data and all."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    conn.execute("BEGIN IMMEDIATE")
    schema = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
    ).fetchall()
    for table in ("tasks", "decisions", "task_history"):
        sql = next(s for kind, name, _, s in schema if kind == "table" and name == table)
        sql = sql.replace("AUTOINCREMENT", "") + (" WITHOUT ROWID" if table == "tasks" else "")
        conn.execute(f"ALTER TABLE {table} RENAME TO lean_old")
        conn.execute(sql)
        conn.execute(f"INSERT INTO {table} SELECT * FROM lean_old")  # noqa: S608 (fixed names)
        conn.execute("DROP TABLE lean_old")
        for kind, name, of, made in schema:
            if of == table and kind in ("index", "trigger") and name != "tasks_type_node":
                conn.execute(made)
    conn.execute("COMMIT")
    conn.close()


def frames_per_pair(pair: Callable[[], bool], db: str, page: int, n: int = 200) -> float:
    conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = os.path.getsize(db + "-wal")
    for _ in range(n):
        pair()
    return round((os.path.getsize(db + "-wal") - before) / (page + 24) / n, 1)


def rate(pair: Callable[[], bool], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pair()
        n += 1
    return round(n / (time.perf_counter() - t0), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per row per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--lean", action="store_true", help="add the lean-schema what-if row")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rrc-inprocess-floor-"))
    library, raw = inprocess.library_pairs(work), inprocess.raw_pairs(work)
    for _ in range(20):
        library(), raw()
    sent = capture(library)
    db = glob.glob(str(work / "state" / "*.db"))[0]
    rows = {"library": library, "replay": replay_pairs(db, sent), "raw": raw}
    frames = {
        "library": frames_per_pair(library, db, store_sqlite.PAGE_SIZE),
        "raw": frames_per_pair(raw, str(work / "raw.db"), 4096),
    }
    if a.lean:
        (work / "lean").mkdir()
        lean = inprocess.library_pairs(work / "lean")
        lean()  # (the store made and migrated, then rebuilt under the open context)
        lean_db = glob.glob(str(work / "lean" / "state" / "*.db"))[0]
        lean_schema(lean_db)
        for _ in range(20):
            lean()
        rows["lean"] = lean
        frames["lean"] = frames_per_pair(lean, lean_db, store_sqlite.PAGE_SIZE)
    runs: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(a.rounds):
        for name, pair in rows.items():
            runs[name].append(rate(pair, a.seconds))
    best = {name: max(r) for name, r in runs.items()}
    doc = {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "statements_per_pair": len(sent),
        "wal_frames_per_pair": frames,
        "runs": runs,
        "best": best,
        "library_over_raw": round(best["library"] / best["raw"], 3),
        "replay_over_raw": round(best["replay"] / best["raw"], 3),
        "library_over_replay": round(best["library"] / best["replay"], 3),
    }
    if a.lean:
        doc["lean_over_raw"] = round(best["lean"] / best["raw"], 3)
        doc["lean_over_library"] = round(best["lean"] / best["library"], 3)
    print(json.dumps(doc, indent=2) if a.json else "\n".join(f"{k}: {v}" for k, v in doc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
