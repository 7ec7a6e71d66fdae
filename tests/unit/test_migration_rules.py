"""Rules every new migration keeps, checked over the migrations directory (no database).

An index built inside a transaction blocks every write to its table (the
workers' heartbeats among them) until it commits, so after the shipped ones
every ``CREATE INDEX`` is ``CONCURRENTLY IF NOT EXISTS`` in a migration marked
``-- kubetask: no-transaction``.
"""

from __future__ import annotations

import pytest

from kubetask import db

SHIPPED_WITH_PLAIN_INDEXES = {"0001_initial", "0002_history_retention"}
"""Installed databases have these recorded: their text is history and is not rewritten."""


def test_every_create_index_after_the_shipped_migrations_is_concurrent_and_outside_a_transaction() -> None:
    names = [name for name, _ in db.sql.migrations()]
    assert SHIPPED_WITH_PLAIN_INDEXES <= set(names)
    problems = {name: db.schema.index_problems(text) for name, text in db.sql.migrations()
                if name not in SHIPPED_WITH_PLAIN_INDEXES}
    assert {name: found for name, found in problems.items() if found} == {}


@pytest.mark.parametrize(("text", "problem"), [
    ("CREATE INDEX a ON t (x);", "not CONCURRENTLY IF NOT EXISTS"),
    ("create unique index a on t (x);", "not CONCURRENTLY IF NOT EXISTS"),
    ("-- kubetask: no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);", "not CONCURRENTLY IF NOT EXISTS"),
    ("CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x);", "needs the '-- kubetask: no-transaction'"),
    ("-- header\n-- kubetask: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x);",
     "needs the '-- kubetask: no-transaction'"),
])
def test_the_index_rule_flags_an_index_that_would_block_writes_or_not_rerun(text: str, problem: str) -> None:
    [found] = db.schema.index_problems(text)
    assert problem in found


def test_the_index_rule_accepts_a_concurrent_rerunnable_index_outside_a_transaction() -> None:
    text = ("-- kubetask: no-transaction\n-- why this index\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x);\n"
            "create unique index concurrently if not exists b on t (y) where y is not null;\n")
    assert db.schema.index_problems(text) == []
    assert db.schema.outside_transaction(text)
    assert db.schema.statements(text) == [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x)",
        "create unique index concurrently if not exists b on t (y) where y is not null"]


def test_the_shipped_migrations_run_in_a_transaction() -> None:
    assert not any(db.schema.outside_transaction(text) for name, text in db.sql.migrations()
                   if name in SHIPPED_WITH_PLAIN_INDEXES)
