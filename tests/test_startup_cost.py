"""What one PostgreSQL ``can-spawn`` sends to the server: the round trips cut from start-up
stay cut.

A one-shot command pays every round trip to the server (on a cluster's network each costs a
fraction of a millisecond or more): the session's settings go in one query, the migration
check is one statement, and a write transaction's BEGIN, its advisory lock and the database's
clock are one query. Counted on a real server by wrapping psycopg's ``Cursor.execute``: every
statement still runs as it would, the wrapper only notes its text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

OVERRIDES = [
    "rate_limits.selfplay.per_minute=null",
    "resources.live_host=false",  # this shared machine's load must not decide the test
]


def test_a_postgres_can_spawn_sends_three_round_trips_before_its_rules(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from ringrift_coord.context import Context
    from ringrift_coord.task_coordinator import TaskCoordinator

    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def noting(self, query, params=None, **kw):  # noqa: ANN001, ANN202
        sent.append(" ".join(str(query).split()))
        return execute(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", noting)

    def one_shot() -> bool:
        ctx = Context.open(
            db=pg_url,
            state_dir=str(tmp_path / "state"),
            config=None,
            env={"USER": "test"},
            overrides=OVERRIDES,
        )
        try:
            return TaskCoordinator(ctx).check("selfplay", "n1").allowed
        finally:
            ctx.close()

    assert one_shot()  # the first one migrates the fresh database
    sent.clear()
    assert one_shot()  # what every later call sends
    probe = next(i for i, sql in enumerate(sent) if "COUNT(*) FROM halts" in sql)
    setup = sent[:probe]
    assert len(setup) == 3, setup
    settings, migrations, begin = setup
    assert settings.startswith("SET lock_timeout = ")
    assert "; SET idle_in_transaction_session_timeout = 60000" in settings
    assert migrations == "SELECT name FROM schema_migrations"
    assert begin.startswith("BEGIN; SELECT pg_advisory_xact_lock(")
    assert begin.endswith("SELECT extract(epoch FROM clock_timestamp())::float8")
    assert sent[-1] == "COMMIT"
    assert not any(sql == "BEGIN" or sql.startswith("ROLLBACK") for sql in sent), sent
    # the decision was logged on the database's clock, read once the lock was held
    with psycopg.connect(pg_url) as conn:
        at, now = conn.execute(
            "SELECT max(at), extract(epoch FROM clock_timestamp())::float8 FROM decisions"
        ).fetchone()
    assert 0 <= now - at < 60
