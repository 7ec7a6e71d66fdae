"""SQL files: every statement under a ``-- name:`` header, loaded once per slice.

Each slice of the database layer (``queue``, ``outbox``, ``upkeep``,
``reads``, ``schema``) has its own file in ``sql/``, and a one-line
description above every named statement. Parameters are named
(``%(name)s``). The files ship in the package and are read once at import:
as trusted as a literal in the source.

Conventions that hold across the files: each state-changing statement bumps
``version`` and notifies ``kubetask_status`` in the same statement, and a
statement that makes work due notifies ``kubetask_queue`` with the queue's
name. PostgreSQL delivers notifications only at commit and folds identical
ones within a transaction, so a listener never sees work that is not yet
visible. A SELECT in WITH runs only when the main query reads it, hence the
``(SELECT count(*) FROM notified_…)`` columns.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from typing import LiteralString

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def trusted(text: str) -> LiteralString:
    """SQL read from a file shipped in this package: as trusted as a literal in the source.

    (mypy treats LiteralString as str; the annotation documents the intent.)
    """
    return text


def parse(text: str, where: str = "sql") -> dict[str, LiteralString]:
    """Split a file on its ``-- name:`` headers; a name defined twice is an error.

    Each statement is kept without its comment lines, indentation and blank lines (``compact``).
    """
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"{where}: query {name!r} is defined twice")
        queries[name] = trusted(compact(body))
    return queries


def compact(statement: str) -> str:
    """The statement as sent: its lines without comment lines, indentation or blank lines.

    psycopg caches the conversion of a query's text to PostgreSQL's (``%(name)s`` to ``$1``) only for
    texts of at most 4,096 characters (``psycopg._queries.MAX_CACHED_STATEMENT_LENGTH``): the claim,
    documented at length, was over it and re-parsed on every call. No statement here holds a string
    literal spanning lines, so a line's leading spaces and a line that is a comment are never data.
    """
    return "\n".join(line.strip() for line in statement.splitlines()
                     if line.strip() and not line.lstrip().startswith("--"))


def load(slice_name: str) -> Mapping[str, LiteralString]:
    """The statements of ``sql/<slice_name>.sql``."""
    text = importlib.resources.files("kubetask.db").joinpath("sql", f"{slice_name}.sql").read_text(encoding="utf-8")
    return parse(text, f"{slice_name}.sql")


def migrations() -> list[tuple[str, LiteralString]]:
    """(name, text) of every file in ``migrations/``, in order."""
    folder = importlib.resources.files("kubetask.db").joinpath("migrations")
    files = sorted((entry.name, entry) for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), trusted(entry.read_text(encoding="utf-8"))) for name, entry in files]
